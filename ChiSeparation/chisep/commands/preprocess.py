"""``chisep preprocess``: raw multi-echo GRE (+ SE) -> local field, R2*, R2, R2', mask."""
from __future__ import annotations

import argparse

from ..io import InputError, atomic_output_dir, load_nifti, save_nifti, write_json
from ..progress import make_progress

OUTPUTS = {"local_field": "ppm", "total_field_hz": "Hz", "field_weight": "0..1", "r2star": "Hz",
           "r2": "Hz", "r2prime": "Hz", "mask": "binary", "mask_eroded": "binary"}


def add_parser(sub):
    p = sub.add_parser("preprocess", help="raw GRE (+ SE) -> local field (ppm), R2*, R2, R2' (Hz), mask",
                       description=__doc__ + "\n\nOutputs: " + ", ".join(f"{k}.nii.gz ({u})" for k, u in OUTPUTS.items()),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gre-mag", nargs="+", required=True, metavar="F")
    p.add_argument("--gre-phase", nargs="+", required=True, metavar="F")
    p.add_argument("--se-mag", nargs="+", metavar="F")
    p.add_argument("--r2", metavar="F", help="R2 map (Hz) instead of --se-mag")
    p.add_argument("--mask", metavar="F")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--te", nargs="+", type=float, metavar="S", help="GRE echo times (s)")
    p.add_argument("--se-te", nargs="+", type=float, metavar="S", help="SE echo times (s)")
    p.add_argument("--b0", type=float, metavar="T")
    p.add_argument("--phase-sign", type=int, choices=(1, -1))
    p.add_argument("--unwrap", choices=("laplacian", "region-growing"), default="region-growing")
    p.add_argument("--bg-method", choices=("vsharp", "pdf"), default="vsharp")
    p.add_argument("--progress", choices=("text", "json", "none"), default="text")
    return p


def run(args) -> int:
    from .run import load_raw

    progress = make_progress(args.progress)
    args.local_field = None
    maps = load_raw(args, progress=progress)
    with atomic_output_dir(args.out) as stage:
        for name in ("local_field", "r2star", "r2", "r2prime", "mask", "field_weight"):
            v = getattr(maps, name)
            if v is not None:
                save_nifti(stage / f"{name}.nii.gz", v, maps.affine)
        write_json(stage / "report.json", {"command": "chisep preprocess", "b0_t": maps.b0_t,
                                            "b0_dir": maps.b0_dir.tolist(),
                                            "units": {k: OUTPUTS[k] for k in OUTPUTS}})
    return 0


__all__ = ["add_parser", "run", "InputError", "load_nifti"]
