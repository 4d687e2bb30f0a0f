"""``chisep preprocess``: raw multi-echo GRE (+ SE) -> local field, R2*, R2, R2', mask.

Reads 4-D NIfTI files (or one 3-D file per echo, or DICOM folders) with dcm2niix-style JSON
sidecars, runs :func:`chisep.preprocess.preprocess_gre` and writes every map on the input grid
(same affine) into ``--out``: one run's files per folder (--overwrite replaces an earlier run's),
nothing written on any error or interruption, user errors exit 2 before any computation.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from .. import options as O
from ..io import InputError, OutputFolder, check_output_dir, save_nifti, write_json
from ..progress import make_progress
from .run import add_out_options

#: output file (without .nii.gz) -> unit
OUTPUTS = {"local_field": "ppm", "total_field_hz": "Hz", "field_weight": "0..1 (inverse field noise std)",
           "r2star": "Hz", "r2": "Hz", "r2prime": "Hz", "mask": "binary", "mask_eroded": "binary",
           "magnitude": "a.u. (sqrt of the sum of squared echo magnitudes)"}


def add_parser(sub):
    p = sub.add_parser("preprocess", help="raw GRE (+ SE) -> local field (ppm), R2*, R2, R2' (Hz), mask",
                       description=__doc__ + "\nOutputs: " + ", ".join(f"{k}.nii.gz ({u})" for k, u in OUTPUTS.items()),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gre-mag", nargs="+", required=True, metavar="F",
                   help="GRE magnitude: a 4-D NIfTI, one 3-D NIfTI per echo, or a DICOM folder")
    p.add_argument("--gre-phase", nargs="+", required=True, metavar="F",
                   help="GRE phase (radians, degrees or scanner integers: see --phase-unit), same echoes and grid")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--se-mag", nargs="+", metavar="F", help="multi-echo spin-echo magnitudes (for R2)")
    src.add_argument("--r2", metavar="F", help="R2 map (Hz) instead of --se-mag")
    p.add_argument("--mask", metavar="F", help="brain mask (overrides the automatic one)")
    add_out_options(p)
    p.add_argument("--te", nargs="+", type=float, metavar="S", help="GRE echo times (s); default from the sidecar")
    p.add_argument("--se-te", nargs="+", type=float, metavar="S", help="SE echo times (s); default from the sidecar")
    O.add_arguments(p, O.AcquisitionOptions, exclude=("field_unit",))
    O.add_arguments(p, O.PreprocessOptions)
    return p


def load_inputs(args):
    """Read and validate every input named on the command line (raises InputError; writes nothing).

    Returns the checked :class:`chisep.acquisition.Acquisition`."""
    from ..acquisition import check_b0, load_acquisition
    from .run import _one_or_list

    if args.b0_t is not None:
        check_b0(args.b0_t, "--b0")
    if not args.vsharp_radius_mm > 0:
        raise InputError(f"--vsharp-radius {args.vsharp_radius_mm}: must be > 0 mm")
    return load_acquisition(_one_or_list(args.gre_mag), _one_or_list(args.gre_phase),
                            se=_one_or_list(args.se_mag), r2=args.r2, mask=args.mask, te_s=args.te,
                            se_te_s=args.se_te, b0_t=args.b0_t, phase_unit=args.phase_unit,
                            phase_sign=args.phase_sign)


def run(args) -> int:
    from ..preprocess import preprocess_gre
    from .run import warn

    progress = make_progress(args.progress)
    t0 = time.perf_counter()
    check_output_dir(args.out, args.overwrite)
    acq = load_inputs(args)
    warn("preprocess", acq.warnings)
    with OutputFolder(args.out, overwrite=args.overwrite) as folder:
        opts = O.from_args(O.PreprocessOptions, args)
        out = preprocess_gre(**acq.preprocess_kwargs(), **opts.preprocess_kwargs(), progress=progress)
        elapsed = time.perf_counter() - t0
        stage = folder.stage
        written = []
        for name in OUTPUTS:
            if out.get(name) is not None:
                dtype = np.uint8 if name.startswith("mask") else np.float32
                save_nifti(stage / f"{name}.nii.gz", out[name], acq.affine, dtype=dtype)
                written.append(f"{name}.nii.gz")
        write_json(stage / "report.json", {
            "command": "chisep preprocess",
            "inputs": {"gre_mag": args.gre_mag, "gre_phase": args.gre_phase, "se_mag": args.se_mag,
                       "r2": args.r2, "mask": args.mask},
            "te_s": list(acq.te_s), "se_te_s": acq.se_te_s, "b0_t": acq.b0_t,
            "b0_dir": np.asarray(acq.b0_dir, float).tolist(), "phase_sign": acq.phase_sign,
            "acquisition": acq.report(), "warnings": list(acq.warnings),
            "options": {**O.from_args(O.AcquisitionOptions, args).used(raw=True), **opts.preprocess_kwargs()},
            "outputs": written + ["report.json"], "units": {k: OUTPUTS[k] for k in OUTPUTS},
            "timings_s": {"preprocess": round(elapsed, 2)}})
    print(f"chisep preprocess: {folder.message}", file=sys.stderr)
    return 0


__all__ = ["add_parser", "run", "load_inputs", "OUTPUTS"]
