"""``chisep run``: chi-separation of one subject, from raw scans or from processed maps."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..io import InputError, load_nifti
from ..pipeline import METHODS, Maps, preprocess_raw, separate, write_maps
from ..preprocess.pipeline import BG_METHODS
from ..progress import make_progress, scaled

HELP = """Chi-separation of one subject.

Raw inputs: --gre-mag and --gre-phase (a 4-D NIfTI, one 3-D NIfTI per echo, or a DICOM folder)
with dcm2niix-style JSON sidecars (EchoTime in s, MagneticFieldStrength in T) or --te/--b0;
optionally --se-mag (multi-echo spin echo, for R2) or --r2 (an R2 map in Hz).
Processed inputs: --local-field (with --field-unit), --r2star, and --r2 or --r2prime, --mask.

Outputs in --out: chi_para.nii.gz, chi_dia.nii.gz (positive magnitude |chi_dia|) and
chi_total.nii.gz in ppm; local_field.nii.gz (ppm); r2star/r2/r2prime.nii.gz (Hz); mask.nii.gz;
qsm.nii.gz (the QSM channel, ppm, network methods); report.json (inputs, options, versions,
weights, timings). All outputs keep the input grid and affine."""


def add_parser(sub):
    p = sub.add_parser("run", help="chi-separation of one subject (raw scans or processed maps)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    raw = p.add_argument_group("raw inputs")
    raw.add_argument("--gre-mag", nargs="+", metavar="F", help="multi-echo GRE magnitude: 4-D NIfTI, one file per echo, or a DICOM folder")
    raw.add_argument("--gre-phase", nargs="+", metavar="F", help="multi-echo GRE phase (radians or scanner integers)")
    raw.add_argument("--se-mag", nargs="+", metavar="F", help="multi-echo spin-echo magnitude (for R2)")
    raw.add_argument("--te", nargs="+", type=float, metavar="S", help="GRE echo times in seconds (overrides sidecars)")
    raw.add_argument("--se-te", nargs="+", type=float, metavar="S", help="SE echo times in seconds (overrides sidecars)")
    raw.add_argument("--phase-sign", type=int, choices=(1, -1), default=None,
                     help="+1 if phase increases with frequency (default, or the sidecar's PhaseSign), -1 for the other vendor sense")
    raw.add_argument("--unwrap", choices=("laplacian", "region-growing"), default="region-growing",
                     help="spatial unwrapping of the first echo difference (default region-growing)")
    raw.add_argument("--bg-method", choices=BG_METHODS, default="vsharp",
                     help="background field removal: vsharp (default; what the shipped weights were trained on), lbv, lbv-qsm or pdf")
    proc = p.add_argument_group("processed inputs")
    proc.add_argument("--local-field", metavar="F", help="local (tissue) field map")
    proc.add_argument("--field-unit", choices=("hz", "ppm", "rad"), default=None, help="unit of --local-field")
    proc.add_argument("--field-te", type=float, metavar="S", help="echo time (s) of a field given in rad")
    proc.add_argument("--r2star", metavar="F", help="R2* map in Hz")
    proc.add_argument("--r2prime", metavar="F", help="R2' map in Hz")
    proc.add_argument("--qsm", metavar="F", help="a QSM map (ppm) to use as chi-sepnet's QSM channel")
    proc.add_argument("--field-weight", metavar="F", help="reliability weight of the local field (0..1; regularized method)")
    proc.add_argument("--magnitude", metavar="F", help="combined GRE magnitude (edge weights of the regularized method)")
    both = p.add_argument_group("either")
    both.add_argument("--r2", metavar="F", help="R2 map in Hz (instead of --se-mag)")
    both.add_argument("--mask", metavar="F", help="brain mask (overrides the automatic mask)")
    both.add_argument("--b0", type=float, metavar="T", help="field strength in tesla (default: sidecar, else 3)")
    out = p.add_argument_group("method and output")
    out.add_argument("--out", required=True, metavar="DIR")
    out.add_argument("--method", choices=METHODS, default="chisepnet-r2prime")
    out.add_argument("--weights", metavar="PATH", help="chi-sepnet weights: ours (.safetensors) or a published checkpoint (.pth/.pth.tar/.onnx); default built-in")
    out.add_argument("--r2prime-weights", metavar="PATH", help="R2'-prediction net for chisepnet-r2star (default built-in)")
    out.add_argument("--qsm-weights", metavar="PATH", help="a QSM net for the QSM channel (default: closed-form QSM)")
    out.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    out.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    out.add_argument("--tile-size", type=int, metavar="N", help="run the network on overlapping N^3 tiles (less memory)")
    out.add_argument("--dr", type=float, metavar="HZ_PER_PPM", help="relaxometric constant for --method regularized (default 114)")
    out.add_argument("--progress", choices=("text", "json", "none"), default="text")
    return p


def _nifti_or_none(path, what):
    if path is None:
        return None, None
    return load_nifti(path, ndim=3)


def load_processed(args) -> Maps:
    from .. import physics

    if not args.mask:
        raise InputError("--local-field needs --mask (the brain mask of the processed maps)")
    if not args.field_unit:
        raise InputError("--local-field needs --field-unit hz|ppm|rad (the unit of the field map)")
    field, affine = load_nifti(args.local_field, ndim=3)
    mask, maff = load_nifti(args.mask, ndim=3)
    b0_t = args.b0 or 3.0
    maps = {"mask": mask}
    for name in ("r2star", "r2", "r2prime", "qsm", "field_weight", "magnitude"):
        path = getattr(args, name, None)
        if path:
            arr, aff = load_nifti(path, ndim=3)
            if arr.shape != field.shape or not np.allclose(aff, affine, atol=1e-3):
                raise InputError(f"{path}: grid {arr.shape} / affine differ from --local-field "
                                 f"{args.local_field} {field.shape}; resample it onto the field's grid")
            maps[name] = arr
    if mask.shape != field.shape or not np.allclose(maff, affine, atol=1e-3):
        raise InputError(f"{args.mask}: grid differs from --local-field {args.local_field}")
    field_ppm = physics.convert_field(field, args.field_unit, "ppm", b0_t, te_s=args.field_te)
    return Maps(affine=affine, local_field=field_ppm, b0_t=b0_t, **maps)


def load_raw(args, progress=None) -> Maps:
    from ..preprocess import load_gre

    if not args.gre_phase:
        raise InputError("--gre-mag needs --gre-phase (the GRE phase of the same echoes)")
    if len(args.gre_mag) == 1 and Path(args.gre_mag[0]).is_dir():
        acq = _load_dicom_gre(args)
    else:
        acq = load_gre(_one_or_list(args.gre_mag), _one_or_list(args.gre_phase), te_s=args.te, b0_t=args.b0)
    se_mag = se_te = r2 = mask = None
    if args.se_mag and len(args.se_mag) == 1 and Path(args.se_mag[0]).is_dir():
        from ..dicom import load_dicom_echoes
        se = load_dicom_echoes(args.se_mag[0], kind="magnitude")
        se_mag, se_te = se["data"], list(args.se_te or se["te_s"])
    elif args.se_mag:
        from ..preprocess import load_echoes
        se = load_echoes(_one_or_list(args.se_mag), te_s=args.se_te, what="SE magnitude")
        se_mag, se_te = se["data"], se["te_s"]
        if se_mag.shape[:3] != acq["mag"].shape[:3]:
            raise InputError(f"{args.se_mag[0]}: SE grid {se_mag.shape[:3]} differs from the GRE grid "
                             f"{acq['mag'].shape[:3]}; register/resample the SE onto the GRE first")
    if args.r2:
        r2, _ = load_nifti(args.r2, ndim=3)
        if r2.shape != acq["mag"].shape[:3]:
            raise InputError(f"{args.r2}: R2 grid {r2.shape} differs from the GRE grid {acq['mag'].shape[:3]}")
    if args.mask:
        mask, _ = load_nifti(args.mask, ndim=3)
        if mask.shape != acq["mag"].shape[:3]:
            raise InputError(f"{args.mask}: mask grid {mask.shape} differs from the GRE grid {acq['mag'].shape[:3]}")
    phase_sign = args.phase_sign if args.phase_sign is not None else int(acq.get("phase_sign", 1) or 1)
    return preprocess_raw(acq["mag"], acq["phase"], acq["te_s"], acq["affine"], b0_t=acq["b0_t"],
                          se_mag=se_mag, se_te_s=se_te, r2=r2, mask=mask, progress=progress,
                          phase_sign=phase_sign, unwrap=args.unwrap, bg_method=args.bg_method,
                          b0_dir=acq.get("b0_dir"))


def _load_dicom_gre(args) -> dict:
    """GRE magnitude/phase from DICOM folders (converted with dcm2niix; headers give TE and B0)."""
    from .. import physics
    from ..dicom import load_dicom_echoes

    if len(args.gre_phase) != 1 or not Path(args.gre_phase[0]).is_dir():
        raise InputError("--gre-mag is a DICOM folder, so --gre-phase must be a DICOM folder too "
                         "(it may be the same folder)")
    mag = load_dicom_echoes(args.gre_mag[0], kind="magnitude")
    ph = load_dicom_echoes(args.gre_phase[0], kind="phase")
    if mag["data"].shape != ph["data"].shape or not np.allclose(mag["affine"], ph["affine"], atol=1e-3):
        raise InputError(f"{args.gre_phase[0]}: phase series {ph['data'].shape} does not match the "
                         f"magnitude series {mag['data'].shape} of {args.gre_mag[0]}")
    te = list(args.te) if args.te else mag["te_s"]
    if len(te) != mag["data"].shape[-1]:
        raise InputError(f"--te gives {len(te)} echo times for {mag['data'].shape[-1]} echoes")
    b0 = args.b0 or mag.get("b0_t") or 3.0
    return {"mag": mag["data"], "phase": ph["data"], "te_s": te, "b0_t": float(b0),
            "affine": mag["affine"], "b0_dir": physics.b0_direction_from_affine(mag["affine"]),
            "phase_sign": 1}


def _one_or_list(paths):
    return paths[0] if len(paths) == 1 else list(paths)


def resolve_weights(args):
    """The weights argument for :func:`chisep.pipeline.separate` from the CLI options."""
    if not (args.weights or args.r2prime_weights or args.qsm_weights):
        return None
    return {"chisepnet": args.weights, "r2prime": args.r2prime_weights, "qsm": args.qsm_weights}


def run(args) -> int:
    progress = make_progress(args.progress)
    t0 = time.perf_counter()
    if args.local_field and args.gre_mag:
        raise InputError("give either raw scans (--gre-mag/--gre-phase) or processed maps (--local-field), not both")
    if not (args.local_field or args.gre_mag):
        raise InputError("no input: give --gre-mag and --gre-phase (raw scans) or --local-field, --field-unit, "
                         "--r2star/--r2prime and --mask (processed maps); see chisep run --help")
    inputs = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("progress",)}
    if args.gre_mag:
        maps = load_raw(args, progress=scaled(progress, 0.0, 0.5))
    else:
        maps = load_processed(args)
    t_pre = time.perf_counter() - t0
    res = separate(maps, args.method, weights=resolve_weights(args), device=args.device,
                   precision=args.precision, tile_size=args.tile_size, dr=args.dr,
                   progress=scaled(progress, 0.5 if args.gre_mag else 0.0, 0.98))
    res.report.setdefault("timings_s", {})["preprocess"] = round(t_pre, 3)
    res.report["timings_s"]["total"] = round(time.perf_counter() - t0, 3)
    write_maps(res, args.out, extra_report={"inputs": inputs, "command": "chisep run"})
    if progress:
        progress(1.0, f"done: maps written to {args.out}")
    return 0
