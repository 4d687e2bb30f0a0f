"""``chisep train``: train chi-sepnet (our weights) on the simulated-data cache.

Kinds: ``chisepnet-r2prime`` (3 -> 2: QSM, local field, R2'/Dr -> chi_para, |chi_dia|) and
``r2prime-from-r2star`` (1 -> 1: R2*/Dr -> R2'/Dr, for the GRE-only pipeline). The loss is the
published one (docs/DESIGN.md, "Network"): L1 on z-scored maps + 0.1 gradient-difference + physics terms
in ppm; optimiser RMSprop, lr 3e-4. Resumable (``--resume`` continues from OUT/ckpt_last.pt),
seeded (batches are a function of seed and step), logs JSON lines in OUT/metrics.jsonl.

Build the cache first with ``chisep train-cache`` (simulated heads + random-shape volumes through
the inference chain; resumable; ``python -m chisep.training.data`` runs the same command):
    chisep train-cache --out runs/cache --heads 1000-1011 --val 900-903 --shapes 5000-5011

Every training setting is a field of :class:`chisep.training.config.TrainConfig`, declared once
with its help and default; this command's options are built from those fields (``--no-flips``,
``--r2prime-input`` and ``--scale-min``/``--scale-max`` included).

Then for example:
    chisep train --out runs/r2p --kind chisepnet-r2prime --cache runs/cache --width 16 --steps 20000 \\
        --bf16 --channels-last --resume
    chisep train --out runs/r2p --export ChiSeparation/chisep/weights/chisepnet_r2prime.safetensors
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


#: TrainConfig fields the command sets itself: ``out`` from --out; ``init_norm`` (a dict, for Python
#: callers) has its command-line counterpart in --init-weights (weights with their normalisation)
NOT_OPTIONS = ("out", "init_norm")


def add_parser(sub):
    from ..options import add_arguments
    from ..training.config import TrainConfig

    p = sub.add_parser("train", help="train chi-sepnet weights on simulated data (resumable)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (checkpoints, metrics.jsonl)")
    add_arguments(p, TrainConfig, exclude=NOT_OPTIONS)
    p.add_argument("--init-weights", metavar="PATH",
                   help="fine-tune: start from these weights (.safetensors, or 'builtin') and their "
                        "normalisation; implies --resume after the first start")
    p.add_argument("--export", metavar="PATH", help="write OUT/ckpt_best.pt as fp16 safetensors and exit")
    p.add_argument("--export-from", default="best", choices=("best", "last"))
    p.add_argument("--evaluate", action="store_true",
                   help="whole-volume metrics of OUT/ckpt_best.pt on the cache's validation heads")
    return p


def config_from_args(args):
    """The TrainConfig of the parsed arguments (every field the parser defines)."""
    import dataclasses

    from ..options import from_args
    from ..training.config import TrainConfig

    return dataclasses.replace(from_args(TrainConfig, args), out=str(Path(args.out)))


def run(args) -> int:
    from ..io import InputError
    from ..training.loop import evaluate_checkpoint, export_weights, train

    out = Path(args.out)
    if args.export or args.evaluate:
        ck = out / f"ckpt_{args.export_from}.pt"
        if not ck.exists():
            raise InputError(f"no checkpoint {ck}: train first (chisep train --out {out} ...)")
        if args.evaluate:
            if not args.cache:
                raise InputError("--evaluate needs --cache (with val_*.npz volumes)")
            res = evaluate_checkpoint(ck, args.cache, args.device, args.bf16)
            print(json.dumps(res, indent=1))
            (out / "evaluation.json").write_text(json.dumps(res, indent=1))
        if args.export:
            p = export_weights(ck, args.export)
            print(f"wrote {p}")
        return 0
    if args.patch % 16:
        raise InputError(f"--patch must be a multiple of 16 (the U-Net pools 4 times), got {args.patch}")
    cfg = config_from_args(args)
    if args.cache and not Path(args.cache).is_dir():
        raise InputError(f"--cache {args.cache}: no such folder; build it with "
                         f"chisep train-cache --out {args.cache} ...")
    if args.init_weights and not (out / "ckpt_last.pt").exists():
        from ..training.loop import init_checkpoint_from_weights
        w = args.init_weights
        if w == "builtin":
            from ..network.weights import builtin_path
            w = str(builtin_path(args.kind))
        print(f"fine-tuning from {init_checkpoint_from_weights(w, out, cfg)} ({w})", flush=True)
    if args.init_weights:
        cfg.resume = True
    summary = train(cfg, log=lambda m: print(m, flush=True))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("last_losses",)}), flush=True)
    return 0
