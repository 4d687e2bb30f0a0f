"""``chisep train``: train chi-sepnet (our weights) on the simulated-data cache.

Kinds: ``chisepnet-r2prime`` (3 -> 2: QSM, local field, R2'/Dr -> chi_para, |chi_dia|) and
``r2prime-from-r2star`` (1 -> 1: R2*/Dr -> R2'/Dr, for the GRE-only pipeline). The loss is the
published one (docs/DESIGN.md, "Network"): L1 on z-scored maps + 0.1 gradient-difference + physics terms
in ppm; optimiser RMSprop, lr 3e-4. Resumable (``--resume`` continues from OUT/ckpt_last.pt),
seeded (batches are a function of seed and step), logs JSON lines in OUT/metrics.jsonl.

Build the cache first (simulated heads + random-shape volumes through the inference chain):
    python -m chisep.training.data --out runs/cache --heads 1000-1011 --val 900-903 --shapes 5000-5011

Then for example:
    chisep train --out runs/r2p --kind chisepnet-r2prime --cache runs/cache --width 16 --steps 20000 \\
        --bf16 --channels-last --resume
    chisep train --out runs/r2p --export ChiSeparation/chisep/weights/chisepnet_r2prime.safetensors
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser("train", help="train chi-sepnet weights on simulated data (resumable)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (checkpoints, metrics.jsonl)")
    p.add_argument("--kind", default="chisepnet-r2prime", choices=("chisepnet-r2prime", "r2prime-from-r2star"))
    p.add_argument("--cache", metavar="DIR", help="training cache (python -m chisep.training.data); "
                   "without it, random-shape patches are generated on the fly (a smoke test only)")
    p.add_argument("--width", type=int, default=16, help="U-Net base width (published 32; default 16)")
    p.add_argument("--steps", type=int, default=1000, help="total optimiser steps (default 1000)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--patch", type=int, default=64, help="patch edge in voxels, multiple of 16 (default 64)")
    p.add_argument("--lr", type=float, default=3e-4, help="RMSprop learning rate (default 3e-4)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt_last.pt if present")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPU or GPU)")
    p.add_argument("--channels-last", action="store_true", help="channels_last_3d memory format")
    p.add_argument("--device", default="auto", help="auto (GPU if present) | cpu | cuda[:N]")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--val-every", type=int, default=200)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop (and checkpoint) after this long")
    p.add_argument("--stop-at", type=float, default=0.0, metavar="UNIX_TIME",
                   help="stop (and checkpoint) at this wall-clock time; ends the cosine schedule there")
    p.add_argument("--p-shapes", type=float, default=0.25, help="fraction of random-shape patches")
    p.add_argument("--scale", type=float, nargs=2, default=(0.6, 1.6), metavar=("MIN", "MAX"),
                   help="range of the common chi/field/QSM/R2' scale augmentation")
    p.add_argument("--no-flips", action="store_true")
    p.add_argument("--refresh-every", type=int, default=0, help="re-scan the cache every N steps")
    p.add_argument("--min-volumes", type=int, default=1)
    for k, d in (("l1", 1.0), ("gdl", 0.1), ("field", 1.0), ("qsm", 1.0), ("r2p", 1.0)):
        p.add_argument(f"--w-{k}", type=float, default=d, help=f"loss weight of the {k} term (default {d:g})")
    p.add_argument("--p-lesion", type=float, default=0.0,
                   help="fraction of head patches centred on a lesion (cache needs lesion masks; default 0)")
    p.add_argument("--lesion-weight", type=float, default=1.0,
                   help="weight of lesion voxels in the L1 term (default 1 = the published loss)")
    p.add_argument("--r2prime-input", default="r2p", choices=("r2p", "r2p_pred"),
                   help="chi-sepnet's R2' input: measured (r2p, default) or predicted from R2* "
                        "(r2p_pred: the chi-sepnet of the R2* pipeline; cache needs --predict-r2prime)")
    p.add_argument("--snapshot-every", type=int, default=0, help="keep ckpt_step<N>.pt every N steps")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate ramp over N steps")
    p.add_argument("--init-weights", metavar="PATH",
                   help="fine-tune: start from these weights (.safetensors, or 'builtin') and their "
                        "normalisation; implies --resume after the first start")
    p.add_argument("--export", metavar="PATH", help="write OUT/ckpt_best.pt as fp16 safetensors and exit")
    p.add_argument("--export-from", default="best", choices=("best", "last"))
    p.add_argument("--evaluate", action="store_true",
                   help="whole-volume metrics of OUT/ckpt_best.pt on the cache's validation heads")
    return p


def run(args) -> int:
    from ..io import InputError
    from ..training.loop import TrainConfig, evaluate_checkpoint, export_weights, train

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
    cfg = TrainConfig(out=str(out), kind=args.kind, cache=args.cache, width=args.width, steps=args.steps,
                      batch=args.batch, patch=args.patch, lr=args.lr, lr_schedule=args.lr_schedule,
                      seed=args.seed, resume=args.resume, bf16=args.bf16, channels_last=args.channels_last,
                      device=args.device, threads=args.threads, val_every=args.val_every,
                      ckpt_every=args.ckpt_every, log_every=args.log_every, max_minutes=args.max_minutes,
                      stop_at=args.stop_at,
                      p_shapes=args.p_shapes, scale_min=args.scale[0], scale_max=args.scale[1],
                      flips=not args.no_flips, refresh_every=args.refresh_every,
                      min_volumes=args.min_volumes, w_l1=args.w_l1, w_gdl=args.w_gdl,
                      w_field=args.w_field, w_qsm=args.w_qsm, w_r2p=args.w_r2p,
                      p_lesion=args.p_lesion, lesion_weight=args.lesion_weight,
                      r2prime_key=args.r2prime_input, snapshot_every=args.snapshot_every, warmup_steps=args.warmup_steps,
                      shapes_only=not args.cache)
    if args.cache and not Path(args.cache).is_dir():
        raise InputError(f"--cache {args.cache}: no such folder; build it with "
                         f"python -m chisep.training.data --out {args.cache} ...")
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
