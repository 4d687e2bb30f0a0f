"""``chisep preprocess``: raw multi-echo GRE (+ SE) -> local field, R2*, R2, R2', mask.

Reads 4-D NIfTI files (or one 3-D file per echo, or DICOM folders) with dcm2niix-style JSON
sidecars, runs :func:`chisep.preprocess.preprocess_gre` and writes every map on the input grid
(same affine) into ``--out``, atomically: on any error nothing is written.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..io import InputError, atomic_output_dir, load_nifti, save_nifti, write_json
from ..preprocess.pipeline import BG_METHODS
from ..progress import make_progress

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
                   help="GRE phase (radians or integer scanner units), same echoes and grid")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--se-mag", nargs="+", metavar="F", help="multi-echo spin-echo magnitudes (for R2)")
    src.add_argument("--r2", metavar="F", help="R2 map (Hz) instead of --se-mag")
    p.add_argument("--mask", metavar="F", help="brain mask (overrides the automatic one)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--te", nargs="+", type=float, metavar="S", help="GRE echo times (s); default from the sidecar")
    p.add_argument("--se-te", nargs="+", type=float, metavar="S", help="SE echo times (s); default from the sidecar")
    p.add_argument("--b0", type=float, metavar="T", help="field strength (T); default MagneticFieldStrength or 3")
    p.add_argument("--phase-sign", type=int, choices=(1, -1),
                   help="+1: phase grows with frequency (default, or sidecar PhaseSign); -1: the other vendor sense")
    p.add_argument("--unwrap", choices=("laplacian", "region-growing"), default="region-growing")
    p.add_argument("--bg-method", choices=BG_METHODS, default="vsharp",
                   help="background field removal (lbv-qsm: LBV plus the local field's boundary values from a first QSM)")
    p.add_argument("--vsharp-radius", type=float, default=12.0, metavar="MM", help="largest V-SHARP radius (mm)")
    p.add_argument("--bipolar", action="store_true", help="remove odd/even echo phase offsets (bipolar readout)")
    p.add_argument("--progress", choices=("text", "json", "none"), default="text")
    return p


def _one_or_list(paths):
    return paths[0] if len(paths) == 1 else list(paths)


def load_inputs(args) -> dict:
    """Read and validate every input named on the command line (raises InputError; writes nothing)."""
    from ..preprocess import load_echoes, load_gre

    if len(args.gre_mag) == 1 and Path(args.gre_mag[0]).is_dir():
        from .run import _load_dicom_gre
        acq = _load_dicom_gre(args)
    else:
        acq = load_gre(_one_or_list(args.gre_mag), _one_or_list(args.gre_phase), te_s=args.te, b0_t=args.b0)
    grid = acq["mag"].shape[:3]
    extra = {}
    if args.se_mag:
        if len(args.se_mag) == 1 and Path(args.se_mag[0]).is_dir():
            from ..dicom import load_dicom_echoes
            se = load_dicom_echoes(args.se_mag[0], kind="magnitude")
            se_te = list(args.se_te or se["te_s"])
        else:
            se = load_echoes(_one_or_list(args.se_mag), te_s=args.se_te, what="SE magnitude")
            se_te = se["te_s"]
        if se["data"].shape[:3] != grid:
            raise InputError(f"{args.se_mag[0]}: SE grid {se['data'].shape[:3]} differs from the GRE grid "
                             f"{grid}; register/resample the SE onto the GRE first")
        if len(se_te) != se["data"].shape[-1]:
            raise InputError(f"{args.se_mag[0]}: {len(se_te)} SE echo times for {se['data'].shape[-1]} echoes; "
                             f"fix --se-te or the sidecar EchoTime")
        extra["se_mag"], extra["se_te_s"] = se["data"], se_te
    for name in ("r2", "mask"):
        path = getattr(args, name)
        if path:
            arr, aff = load_nifti(path, ndim=3)
            if arr.shape != grid or not np.allclose(aff, acq["affine"], atol=1e-3):
                raise InputError(f"{path}: grid {arr.shape} / affine differ from the GRE {args.gre_mag[0]} "
                                 f"{grid}; resample it onto the GRE grid")
            extra[name] = arr
    phase_sign = args.phase_sign if args.phase_sign is not None else int(acq.get("phase_sign", 1) or 1)
    return {"acq": acq, "extra": extra, "phase_sign": phase_sign}


def run(args) -> int:
    from ..preprocess import preprocess_gre

    progress = make_progress(args.progress)
    t0 = time.perf_counter()
    inp = load_inputs(args)
    acq = inp["acq"]
    out = preprocess_gre(acq["mag"], acq["phase"], acq["te_s"], acq["affine"], b0_t=acq["b0_t"],
                         phase_sign=inp["phase_sign"], unwrap=args.unwrap, bg_method=args.bg_method,
                         vsharp_radius_mm=args.vsharp_radius, b0_dir=acq.get("b0_dir"),
                         bipolar=args.bipolar, progress=progress, **inp["extra"])
    elapsed = time.perf_counter() - t0
    with atomic_output_dir(args.out) as stage:
        written = []
        for name in OUTPUTS:
            if out.get(name) is not None:
                dtype = np.uint8 if name.startswith("mask") else np.float32
                save_nifti(stage / f"{name}.nii.gz", out[name], acq["affine"], dtype=dtype)
                written.append(f"{name}.nii.gz")
        write_json(stage / "report.json", {
            "command": "chisep preprocess",
            "inputs": {"gre_mag": args.gre_mag, "gre_phase": args.gre_phase, "se_mag": args.se_mag,
                       "r2": args.r2, "mask": args.mask},
            "te_s": list(acq["te_s"]), "se_te_s": inp["extra"].get("se_te_s"), "b0_t": acq["b0_t"],
            "b0_dir": np.asarray(acq["b0_dir"], float).tolist(), "phase_sign": inp["phase_sign"],
            "options": {"unwrap": args.unwrap, "bg_method": args.bg_method,
                        "vsharp_radius_mm": args.vsharp_radius, "bipolar": args.bipolar},
            "outputs": written, "units": {k: OUTPUTS[k] for k in OUTPUTS},
            "timings_s": {"preprocess": round(elapsed, 2)}})
    return 0


__all__ = ["add_parser", "run", "load_inputs", "OUTPUTS"]
