"""``chisep train-cache``: build (or extend) the training cache that ``chisep train --cache`` reads.

Simulated heads and random-shape volumes run through the inference chain (preprocessing with
LBV-QSM, the closed-form QSM channel), cropped and stored as ``<cache>/<name>.npz``
(:mod:`chisep.training.data`). Resumable: volumes already in the cache are skipped, so the same
command continues an interrupted build. Seeds: training heads 1000+, shapes 5000+, validation heads
900-999. ``python -m chisep.training.data ...`` runs the same command.

For example:
    chisep train-cache --out runs/cache --heads 1000-1011 --val 900-903 --shapes 5000-5011 --workers 2
    chisep train-cache --out runs/cache --add-lesions --predict-r2prime builtin
"""
from __future__ import annotations

import argparse


def add_parser(sub):
    p = sub.add_parser("train-cache", help="build the training cache of chisep train (resumable)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR", help="cache folder (created; existing volumes are kept)")
    p.add_argument("--heads", default="", metavar="SEEDS", help="training head seeds, e.g. 1000-1011 (>= 1000)")
    p.add_argument("--val", default="", metavar="SEEDS", help="validation head seeds, e.g. 900-903")
    p.add_argument("--shapes", default="", metavar="SEEDS", help="random-shape volume seeds, e.g. 5000-5011")
    p.add_argument("--size", default="full", choices=("small", "full"), help="simulated head size (default full)")
    p.add_argument("--wide", default="", metavar="SEEDS",
                   help="widened volumes of our simulator (random acquisition, fibre white matter; "
                        "training/widen.py), e.g. 2000-2039")
    p.add_argument("--val-wide", default="", metavar="SEEDS", help="widened validation volumes, e.g. 950-953")
    p.add_argument("--qsmf", default="", metavar="SEEDS",
                   help="qsm-forward-model volumes (never loaded for training)")
    p.add_argument("--wide-size", default="small", choices=("small", "full"),
                   help="head size of the widened volumes (default small)")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    p.add_argument("--lesions", type=int, default=None,
                   help="lesions per training head (default: 10-30, drawn per seed)")
    p.add_argument("--add-lesions", action="store_true",
                   help="add the truth lesion mask to cached volumes that lack it (re-simulates them)")
    p.add_argument("--predict-r2prime", metavar="WEIGHTS",
                   help="add r2p_pred (R2' predicted from R2*) to every volume: 'builtin' or a weights file")
    return p


def seeds(spec: str, name: str) -> list:
    """Seed list of ``--name``: comma-separated seeds and inclusive ranges (``1000-1011,1020``)."""
    from ..io import InputError

    out = []
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                a, b = part.split("-")
                out += list(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise InputError(f"--{name} {spec!r}: give seeds as numbers and ranges, e.g. 1000-1011,1020") from None
    return out


def run(args) -> int:
    from ..training import data as D

    log = lambda m: print(m, flush=True)  # noqa: E731
    D.build_cache(args.out, seeds(args.heads, "heads"), seeds(args.val, "val"), seeds(args.shapes, "shapes"),
                  args.workers, args.size, log=log, n_lesions=args.lesions, wide=seeds(args.wide, "wide"),
                  val_wide=seeds(args.val_wide, "val-wide"), qsmf=seeds(args.qsmf, "qsmf"),
                  wide_size=args.wide_size)
    if args.add_lesions:
        D.add_lesion_masks(args.out, log=log)
    if args.predict_r2prime:
        D.add_predicted_r2prime(args.out, args.predict_r2prime, log=log)
    return 0
