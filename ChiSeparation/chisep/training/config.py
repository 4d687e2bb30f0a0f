"""The training settings (:class:`TrainConfig`), declared once: the fields carry their help, type and
flag (:func:`chisep.options.option`), and ``chisep train`` builds its parser and the config from
them. Standard library only, so that building the ``chisep`` parser does not import torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..options import option

KINDS = ("chisepnet-r2prime", "r2prime-from-r2star")


@dataclass
class TrainConfig:
    """Every training setting, declared once: ``chisep train`` builds its options from these fields
    (:func:`chisep.options.add_arguments`; flag = ``--`` + name with dashes unless given) and the
    config from the parsed arguments (:func:`chisep.options.from_args`)."""
    out: str                             # run folder (the command's required --out)
    kind: str = option("chisepnet-r2prime", choices=KINDS, help="which network to train")
    cache: Optional[str] = option(
        None, metavar="DIR", help="training cache (chisep train-cache); without it, random-shape patches "
                                  "are generated on the fly (a smoke test only)")
    width: int = option(16, type=int, help="U-Net base width (published 32; default 16)")
    steps: int = option(1000, type=int, help="total optimiser steps (default 1000)")
    batch: int = option(2, type=int, help="patches per optimiser step (default 2)")
    patch: int = option(64, type=int, unit="voxels", help="patch edge in voxels, multiple of 16 (default 64)")
    lr: float = option(3e-4, help="RMSprop learning rate (default 3e-4)")
    lr_schedule: str = option("constant", choices=("constant", "cosine"),
                              help="constant, or cosine down to --lr-min at --steps (or --stop-at)")
    lr_min: float = option(1e-5, help="end learning rate of the cosine schedule (default 1e-5)")
    seed: int = option(0, type=int, help="seed of the initialisation and of the batches (default 0)")
    resume: bool = option(False, help="continue from OUT/ckpt_last.pt if present")
    bf16: bool = option(False, help="bfloat16 autocast (CPU or GPU)")
    channels_last: bool = option(False, help="channels_last_3d memory format")
    device: str = option("auto", help="auto (GPU if present) | cpu | cuda[:N]")
    threads: int = option(2, type=int, help="torch CPU threads (default 2)")
    val_every: int = option(200, type=int, help="validate every N steps (default 200)")
    ckpt_every: int = option(200, type=int, help="checkpoint every N steps (default 200)")
    log_every: int = option(20, type=int, help="log the training losses every N steps (default 20)")
    max_minutes: float = option(0.0, unit="min", help="stop (and checkpoint) after this long (0 = no limit)")
    stop_at: float = option(0.0, metavar="UNIX_TIME",
                            help="stop (and checkpoint) at this wall-clock time (0 = none); ends the cosine "
                                 "schedule there")
    p_shapes: float = option(0.25, help="fraction of random-shape patches (default 0.25)")
    scale_min: float = option(0.6, help="lower end of the common chi/field/QSM/R2' scale augmentation (default 0.6)")
    scale_max: float = option(1.6, help="upper end of the common chi/field/QSM/R2' scale augmentation (default 1.6)")
    flips: bool = option(True, flag="--no-flips", help="no flip/swap augmentation")
    val_patches: int = option(4, type=int, help="fixed validation patches per held-out volume (default 4)")
    refresh_every: int = option(0, type=int, help="re-scan the cache for new volumes every N steps (0 = never)")
    min_volumes: int = option(1, type=int, help="wait for this many training volumes before starting (default 1)")
    w_l1: float = option(1.0, help="loss weight of the l1 term (default 1)")
    w_gdl: float = option(0.1, help="loss weight of the gdl (gradient-difference) term (default 0.1)")
    w_field: float = option(1.0, help="loss weight of the field term (default 1)")
    w_qsm: float = option(1.0, help="loss weight of the qsm term (default 1)")
    w_r2p: float = option(1.0, help="loss weight of the r2p term (default 1)")
    shapes_only: bool = option(False, help="train on freshly generated random-shape patches only (also the "
                                           "case without --cache)")
    shapes_pool: int = option(0, type=int, help="with --shapes-only: draw from this many fixed patches "
                                                "(0 = fresh ones every step)")
    init_norm: Optional[dict] = None     # Python callers: normalisation to use instead of computing it
    grad_clip: float = option(0.0, help="clip the gradient norm to this (0 = no clipping)")
    p_lesion: float = option(0.0, help="fraction of head patches centred on a lesion (cache needs lesion "
                                       "masks; default 0)")
    lesion_weight: float = option(1.0, help="weight of lesion voxels in the L1 term (default 1 = the "
                                            "published loss)")
    r2prime_key: str = option(
        "r2p", choices=("r2p", "r2p_pred"), flag="--r2prime-input",
        help="chi-sepnet's R2' input: measured (r2p, default) or predicted from R2* (r2p_pred: the "
             "chi-sepnet of the R2* pipeline; cache needs chisep train-cache --predict-r2prime)")
    snapshot_every: int = option(0, type=int, help="keep a model-only copy ckpt_step<N>.pt every N steps "
                                                   "(0 = never)")
    # fine-tuning: RMSprop's empty square-average makes its first steps ~10x too large
    warmup_steps: int = option(0, type=int, help="linear learning-rate ramp over the first N steps")

    @property
    def loss_weights(self):
        from .losses import LossWeights

        return LossWeights(self.w_l1, self.w_gdl, self.w_field, self.w_qsm, self.w_r2p)
