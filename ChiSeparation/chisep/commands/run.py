"""``chisep run``: chi-separation of one subject, from raw scans or from processed maps."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .. import options as O
from ..io import InputError, OutputFolder, check_output_dir
from ..pipeline import preprocess_raw, separate, stage_maps
from ..progress import make_progress, scaled

HELP = """Chi-separation of one subject.

Raw inputs: --gre-mag and --gre-phase (a 4-D NIfTI, one 3-D NIfTI per echo, or a DICOM folder)
with dcm2niix-style JSON sidecars (EchoTime in s, MagneticFieldStrength in T) or --te/--b0;
optionally --se-mag (multi-echo spin echo, for R2) or --r2 (an R2 map in Hz).
Processed inputs: --local-field (with --field-unit), --r2star, and --r2 or --r2prime, --mask.

Outputs in --out: chi_para.nii.gz, chi_dia.nii.gz (positive magnitude |chi_dia|) and
chi_total.nii.gz in ppm; local_field.nii.gz (ppm); r2star/r2/r2prime.nii.gz (Hz); mask.nii.gz;
qsm.nii.gz (the QSM channel, ppm, network methods); report.json (inputs, options, versions,
weights, timings, warnings). All outputs keep the input grid and affine.

The output folder holds exactly one run's files: a folder with files is refused unless
--overwrite (which replaces an earlier chisep run's files when the new run succeeds; other files
are never removed). Nothing is written until the run succeeds; an interrupted run (Ctrl-C,
SIGTERM) leaves the folder as it was. User errors exit with code 2 before any computation."""


def add_out_options(p):
    """``--out``, ``--overwrite`` and ``--progress`` (shared by ``run`` and ``preprocess``; the last two
    from :class:`chisep.options.OutputOptions`)."""
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty; see --overwrite)")
    O.add_arguments(p, O.OutputOptions)


def add_parser(sub):
    p = sub.add_parser("run", help="chi-separation of one subject (raw scans or processed maps)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    raw = p.add_argument_group("raw inputs")
    raw.add_argument("--gre-mag", nargs="+", metavar="F", help="multi-echo GRE magnitude: 4-D NIfTI, one file per echo, or a DICOM folder")
    raw.add_argument("--gre-phase", nargs="+", metavar="F", help="multi-echo GRE phase (radians, degrees or scanner integers: see --phase-unit)")
    raw.add_argument("--se-mag", nargs="+", metavar="F", help="multi-echo spin-echo magnitude (for R2)")
    raw.add_argument("--te", nargs="+", type=float, metavar="S", help="GRE echo times in seconds (overrides sidecars)")
    raw.add_argument("--se-te", nargs="+", type=float, metavar="S", help="SE echo times in seconds (overrides sidecars)")
    proc = p.add_argument_group("processed inputs")
    proc.add_argument("--local-field", metavar="F", help="local (tissue) field map")
    proc.add_argument("--field-te", type=float, metavar="S", help="echo time (s) of a field given in rad")
    proc.add_argument("--r2star", metavar="F", help="R2* map in Hz")
    proc.add_argument("--r2prime", metavar="F", help="R2' map in Hz")
    proc.add_argument("--qsm", metavar="F", help="a QSM map (ppm) to use as chi-sepnet's QSM channel")
    proc.add_argument("--field-weight", metavar="F", help="reliability weight of the local field (0..1; regularized method)")
    proc.add_argument("--magnitude", metavar="F", help="combined GRE magnitude (edges of the regularized method)")
    both = p.add_argument_group("either")
    both.add_argument("--r2", metavar="F", help="R2 map in Hz (instead of --se-mag)")
    both.add_argument("--mask", metavar="F", help="brain mask (overrides the automatic mask)")
    out = p.add_argument_group("method and output")
    groups = {"raw": raw, "processed": proc, "either": both}
    O.add_arguments(p, O.AcquisitionOptions, groups)
    # --vsharp-radius and --bipolar are chisep preprocess's (their defaults are what run uses)
    O.add_arguments(p, O.PreprocessOptions, groups, only=("unwrap", "bg_method"))
    add_out_options(out)
    O.add_arguments(out, O.RunOptions)
    return p


RAW_ONLY = ("gre_phase", "se_mag", "te", "se_te", "phase_sign")
PROCESSED_ONLY = ("field_unit", "field_te", "r2star", "r2prime", "qsm", "field_weight", "magnitude")


def _opt(name):
    return "--" + name.replace("_", "-")


def _one_or_list(paths):
    if paths is None:
        return None
    return paths[0] if len(paths) == 1 else list(paths)


def check_arguments(args):
    """Cheap checks of the command line itself (no file read): raises InputError."""
    if args.local_field and args.gre_mag:
        raise InputError("give either raw scans (--gre-mag/--gre-phase) or processed maps (--local-field), not both")
    if not (args.local_field or args.gre_mag):
        raise InputError("no input: give --gre-mag and --gre-phase (raw scans) or --local-field, --field-unit, "
                         "--r2star/--r2prime and --mask (processed maps); see chisep run --help")
    if args.gre_mag:
        extra = [_opt(k) for k in PROCESSED_ONLY if getattr(args, k, None) is not None]
        if extra:
            raise InputError(f"{', '.join(extra)}: for processed inputs (--local-field), not with --gre-mag")
        if not args.gre_phase:
            raise InputError("--gre-mag needs --gre-phase (the GRE phase of the same echoes)")
        if args.se_mag and args.r2:
            raise InputError("give either --se-mag (spin echo, for R2) or --r2 (an R2 map), not both")
    else:
        extra = [_opt(k) for k in RAW_ONLY if getattr(args, k, None) is not None]
        if getattr(args, "phase_unit", "auto") not in (None, "auto"):
            extra.append("--phase-unit")
        if extra:
            raise InputError(f"{', '.join(extra)}: for raw inputs (--gre-mag/--gre-phase), not with --local-field")
        changed = [O.flag(O.get_field(O.PreprocessOptions, k)) for k in ("unwrap", "bg_method")
                   if getattr(args, k, None) not in (None, O.get_field(O.PreprocessOptions, k).default)]
        if changed:
            raise InputError(f"{', '.join(changed)}: preprocessing of raw inputs (--gre-mag/--gre-phase); "
                             f"processed maps (--local-field) are used as given")
        if args.field_unit == "rad" and args.field_te is None:
            raise InputError("--field-unit rad needs --field-te (the echo time in seconds of the phase)")
    if args.b0_t is not None:
        from ..acquisition import check_b0
        check_b0(args.b0_t, "--b0")
    if args.tile_size is not None and args.tile_size < 16:
        raise InputError(f"--tile-size {args.tile_size}: use 16 or more voxels (or leave it out)")
    if args.max_memory_gb is not None and not args.max_memory_gb > 0:
        raise InputError(f"--max-memory {args.max_memory_gb}: give the memory in GiB (> 0), or leave it out")
    if args.dr is not None and not args.dr > 0:
        raise InputError(f"--dr {args.dr}: the relaxometric constant must be > 0 Hz/ppm")


def _weights_error(path, exc) -> InputError:
    first = (str(exc).splitlines() or [""])[0]
    if "weights only load failed" in first.lower() or "weights_only" in first.lower():
        first = "the file holds pickled Python objects, which chisep never runs"
    return InputError(f"{path}: not readable as chi-sepnet weights ({type(exc).__name__}: {first[:160]}); "
                      f"give an intact .safetensors file written by chisep or the published .pth/.onnx file")


def _check_weight_file(path):
    """A clean message for an unreadable, truncated or pickled weight file (before any computation)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: weights file not found")
    if p.is_dir():
        raise InputError(f"{p}: is a folder; give the weights file (.safetensors, .pth, .pth.tar or .onnx)")
    name = p.name.lower()
    try:
        if name.endswith(".safetensors"):
            from safetensors import safe_open
            with safe_open(str(p), framework="pt") as f:
                list(f.keys())
        elif name.endswith((".pth", ".pth.tar", ".pt", ".tar", ".ckpt")):
            import torch
            torch.load(str(p), map_location="cpu", weights_only=True)
    except InputError:
        raise
    except Exception as exc:  # corrupt/truncated/pickled: never loaded unsafely
        raise _weights_error(p, exc) from None


def check_compute(args):
    """Weights readable and of the right kind, device available, precision usable: before computing.

    Returns the weights argument for :func:`chisep.pipeline.separate` (loaded weight sets) and a list
    of warnings."""
    warnings = []
    given = {"chisepnet": args.weights, "r2prime": args.r2prime_weights, "qsm": args.qsm_weights}
    if args.method == "regularized":
        if args.device not in ("auto", "cpu"):
            raise InputError(f"--device {args.device}: the regularized method runs on the CPU only; use "
                             f"--device cpu (or auto), or a chisepnet method on {args.device}")
        for k, v in given.items():
            if v:
                warnings.append(f"{_opt(k + '_weights') if k != 'chisepnet' else '--weights'} {v} ignored: "
                                f"--method regularized uses no network")
        return None, warnings
    from ..network.inference import resolve_device, resolve_precision, resolve_weights
    dev = resolve_device(args.device)
    resolve_precision(args.precision, dev)
    for v in given.values():
        if v:
            _check_weight_file(v)
    try:
        ws = resolve_weights(args.method, given)
    except InputError as exc:
        msg = str(exc)
        named = [v for v in given.values() if v and str(v) in msg]
        if not named and any(given.values()):
            msg = f"{', '.join(str(v) for v in given.values() if v)}: {msg}"
        raise InputError(msg) from None
    except Exception as exc:
        src = ", ".join(str(v) for v in given.values() if v) or "the built-in weights"
        raise _weights_error(src, exc) from None
    return ws, warnings


def load_raw(args):
    """The checked acquisition of the raw inputs (:func:`chisep.acquisition.load_acquisition`)."""
    from ..acquisition import load_acquisition
    return load_acquisition(_one_or_list(args.gre_mag), _one_or_list(args.gre_phase),
                            se=_one_or_list(args.se_mag), r2=args.r2, mask=args.mask, te_s=args.te,
                            se_te_s=args.se_te, b0_t=args.b0_t, phase_unit=args.phase_unit,
                            phase_sign=args.phase_sign)


def load_processed(args):
    """Processed maps (:func:`chisep.acquisition.load_processed_maps`): ``(Maps, info)``."""
    from ..acquisition import load_processed_maps
    return load_processed_maps(args.local_field, args.field_unit, args.mask, r2star=args.r2star, r2=args.r2,
                               r2prime=args.r2prime, qsm=args.qsm, field_weight=args.field_weight,
                               magnitude=args.magnitude, b0_t=args.b0_t, field_te_s=args.field_te)


def _check_method_inputs(args, have_r2prime: bool, have_r2star: bool):
    if args.method == "chisepnet-r2prime" and not have_r2prime:
        raise InputError("chi-sepnet-R2' needs R2' (or R2* and R2): give a multi-echo spin echo "
                         "(--se-mag), an R2 map (--r2) or an R2' map (--r2prime), or use "
                         "--method chisepnet-r2star for GRE-only data")
    if args.method == "chisepnet-r2star" and not have_r2star:
        raise InputError("chi-sepnet-R2* needs an R2* map (--r2star) or the multi-echo GRE magnitude")


def warn(command, warnings):
    for w in warnings:
        print(f"chisep {command}: warning: {w}", file=sys.stderr)


def options_of(args):
    """The options contract's objects for a parsed ``chisep run`` command line, and the options the
    run uses (what report.json records: preprocessing only for raw inputs, network options only for
    the chi-sepnet methods)."""
    raw = bool(args.gre_mag)
    acq = O.from_args(O.AcquisitionOptions, args)
    pre = O.from_args(O.PreprocessOptions, args)
    run_opts = O.from_args(O.RunOptions, args)
    used = dict(acq.used(raw))
    if raw:
        used.update(pre.preprocess_kwargs())
    used.update(run_opts.used())
    return acq, pre, run_opts, used


#: argparse destinations that are options of the contract (recorded under "options", not "inputs")
OPTION_NAMES = {f.name for cls in (O.AcquisitionOptions, O.PreprocessOptions, O.RunOptions, O.OutputOptions)
                for f in O.fields(cls)}


def run(args) -> int:
    progress = make_progress(args.progress)
    t0 = time.perf_counter()
    check_arguments(args)
    check_output_dir(args.out, args.overwrite)
    _, pre_opts, run_opts, used = options_of(args)
    inputs = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in OPTION_NAMES}
    if args.gre_mag:
        acq = load_raw(args)
        warnings = list(acq.warnings)
        _check_method_inputs(args, acq.se_mag is not None or acq.r2 is not None, True)
        input_report = acq.report()
    else:
        maps, info = load_processed(args)
        warnings = list(info["warnings"])
        _check_method_inputs(args, maps.r2prime is not None, maps.r2star is not None)
        input_report = {"sources": info["sources"], "provenance": info["provenance"], "b0_t": maps.b0_t}
    weights, wwarn = check_compute(args)
    warnings += wwarn
    warn("run", warnings)
    with OutputFolder(args.out, overwrite=args.overwrite) as out:
        if args.gre_mag:
            maps = preprocess_raw(**acq.preprocess_kwargs(), options=pre_opts,
                                  progress=scaled(progress, 0.0, 0.5))
        t_pre = time.perf_counter() - t0
        res = separate(maps, run_opts.method, weights=weights, device=run_opts.device,
                       precision=run_opts.precision, tile_size=run_opts.tile_size, dr=run_opts.dr,
                       max_memory_gb=run_opts.max_memory_gb,
                       progress=scaled(progress, 0.5 if args.gre_mag else 0.0, 0.98))
        res.report.setdefault("timings_s", {})["preprocess"] = round(t_pre, 3)
        res.report["timings_s"]["total"] = round(time.perf_counter() - t0, 3)
        stage_maps(res, out.stage, extra_report={"inputs": inputs, "options": used, "command": "chisep run",
                                                 "acquisition": input_report, "warnings": warnings})
    print(f"chisep run: {out.message}", file=sys.stderr)
    if progress:
        progress(1.0, f"done: maps written to {args.out}")
    return 0
