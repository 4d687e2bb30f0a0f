"""From inputs (raw multi-echo GRE [+ SE] or processed maps) to chi-separation maps.

This is the single orchestration layer that ``chisep run``, ``chisep demo`` and the Slicer
background process call. It does no science of its own: it validates inputs, calls
:mod:`chisep.preprocess`, :mod:`chisep.qsm`, :mod:`chisep.network.inference` or
:mod:`chisep.regularized`, and records what it did (options, versions, weights, timings).

Methods
-------
``chisepnet-r2prime``
    chi-sepnet with the R2' channel (needs R2: a multi-echo SE or an R2 map, or R2' itself).
``chisepnet-r2star``
    chi-sepnet-R2*: R2' predicted from R2* by a second network (GRE only).
``regularized``
    the conventional regularized chi-separation (needs R2'; with GRE only it falls back to the
    R2*-based variant with an assumed R2 and says so in the report).
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import __version__, physics
from .io import InputError
from .options import METHODS, NETWORK_METHODS, PreprocessOptions
from .progress import scaled

#: maps written by a run, with their units (documented in the README)
OUTPUT_UNITS = {
    "chi_para": "ppm", "chi_dia": "ppm (positive magnitude)", "chi_total": "ppm",
    "local_field": "ppm", "r2star": "Hz", "r2": "Hz", "r2prime": "Hz", "mask": "binary",
    "qsm": "ppm", "field_weight": "0..1 (reliability of the local field)",
    "magnitude": "a.u. (combined GRE magnitude, edges for the regularized method)",
}

ProgressFn = Optional[Callable[[float, str], None]]


@dataclass
class Maps:
    """Processed maps on one grid (all 3-D, input grid, ``affine`` voxel->RAS).

    local_field in ppm; r2star/r2/r2prime in Hz; mask binary; qsm (optional, ppm) replaces the
    closed-form QSM channel; field_weight/magnitude are optional reliability/edge inputs for
    the regularized method.
    """
    affine: np.ndarray
    mask: np.ndarray
    local_field: np.ndarray
    b0_t: float = 3.0
    b0_dir: Optional[np.ndarray] = None
    r2star: Optional[np.ndarray] = None
    r2: Optional[np.ndarray] = None
    r2prime: Optional[np.ndarray] = None
    qsm: Optional[np.ndarray] = None
    field_weight: Optional[np.ndarray] = None
    magnitude: Optional[np.ndarray] = None

    def __post_init__(self):
        self.affine = np.asarray(self.affine, dtype=float)
        if self.b0_dir is None:
            self.b0_dir = physics.b0_direction_from_affine(self.affine)
        shape = np.shape(self.mask)
        if len(shape) != 3:
            raise InputError(f"mask must be 3-D, got shape {shape}")
        for name in ("local_field", "r2star", "r2", "r2prime", "qsm", "field_weight", "magnitude"):
            v = getattr(self, name)
            if v is None:
                continue
            v = np.asarray(v, dtype=np.float32)
            if v.shape != shape:
                raise InputError(f"{name} has shape {v.shape} but the mask has {shape}: all maps "
                                 f"must be on one grid (resample them first)")
            if not np.all(np.isfinite(v)):
                raise InputError(f"{name} contains NaN/inf values")
            setattr(self, name, v)
        self.mask = (np.asarray(self.mask) > 0).astype(np.uint8)
        if not self.mask.any():
            raise InputError("the brain mask is empty")
        if self.r2prime is None and self.r2star is not None and self.r2 is not None:
            self.r2prime = physics.r2prime_from_r2star_r2(self.r2star, self.r2).astype(np.float32)

    @property
    def voxel_size(self) -> np.ndarray:
        return physics.voxel_size_from_affine(self.affine)


@dataclass
class RunResult:
    maps: dict
    affine: np.ndarray
    report: dict = field(default_factory=dict)


class _Timer:
    def __init__(self):
        self.timings = {}

    def __call__(self, name):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                timer.timings[name] = round(time.perf_counter() - self.t, 3)
        return _Ctx()





def versions() -> dict:
    out = {"chisep": __version__, "python": platform.python_version(), "numpy": np.__version__}
    import scipy
    out["scipy"] = scipy.__version__
    try:
        import torch
        out["torch"] = torch.__version__
    except ImportError:
        pass
    return out


def preprocess_raw(mag, phase, te_s, affine, b0_t=3.0, se_mag=None, se_te_s=None, r2=None,
                   mask=None, phase_sign: int = 1, b0_dir=None,
                   options: Optional[PreprocessOptions] = None, progress: ProgressFn = None) -> Maps:
    """Run the preprocessing chain (:func:`chisep.preprocess.preprocess_gre`) into :class:`Maps`.

    ``phase_sign`` and ``b0_dir`` come with the acquisition (``Acquisition.preprocess_kwargs``);
    ``options`` (:class:`chisep.options.PreprocessOptions`, default its defaults) chooses
    unwrapping, background removal, the V-SHARP radius and bipolar correction."""
    from .preprocess import preprocess_gre

    opts = PreprocessOptions() if options is None else options
    out = preprocess_gre(mag, phase, te_s, affine, b0_t=b0_t, se_mag=se_mag, se_te_s=se_te_s,
                         r2=r2, mask=mask, phase_sign=phase_sign, b0_dir=b0_dir, progress=progress,
                         **opts.preprocess_kwargs())
    return Maps(affine=affine, mask=out["mask"], local_field=out["local_field"], b0_t=b0_t,
                b0_dir=b0_dir, r2star=out.get("r2star"), r2=out.get("r2"),
                r2prime=out.get("r2prime"), field_weight=out.get("field_weight"),
                magnitude=out.get("magnitude"))


def separate(maps: Maps, method: str = "chisepnet-r2prime", weights=None, device: str = "auto",
             precision: str = "auto", tile_size=None, dr: Optional[float] = None,
             max_memory_gb: Optional[float] = None, regularized_options: Optional[dict] = None, progress: ProgressFn = None) -> RunResult:
    """Chi-separation of processed maps with one method.

    Parameters
    ----------
    maps : :class:`Maps` on the input grid.
    method : one of :data:`METHODS`.
    weights : for the network methods, a path (ours: .safetensors; published: .pth/.pth.tar/.onnx)
        or a loaded weight set or a dict ``{"chisepnet": ..., "r2prime": ..., "qsm": ...}``;
        ``None`` uses the built-in weights (an error says so plainly if none are installed).
    device, precision, tile_size, max_memory_gb : how the network runs (see
        :class:`chisep.options.RunOptions`).
    dr : relaxometric constant (Hz/ppm) for the regularized method; default 114 (chi-sepnet's
        constant, which is what our simulated heads use) — pass ``physics.dr_conventional(b0)``
        for the conventional literature value.

    Returns
    -------
    RunResult with maps chi_para, chi_dia (positive), chi_total (ppm), r2prime (Hz, used or
    predicted), plus the input local_field, mask, r2star/r2 where known; and a report.
    """
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    timer = _Timer()
    report = {"method": method, "b0_t": maps.b0_t, "b0_dir": maps.b0_dir.tolist(),
              "voxel_size_mm": maps.voxel_size.tolist(), "shape": list(maps.mask.shape)}
    notes = []
    out = {}
    if method == "chisepnet-r2prime" and maps.r2prime is None:
        raise InputError("chi-sepnet-R2' needs R2' (or R2* and R2): give a multi-echo spin echo "
                         "(--se-mag), an R2 map (--r2) or an R2' map (--r2prime), or use "
                         "--method chisepnet-r2star for GRE-only data")
    if method == "chisepnet-r2star" and maps.r2star is None:
        raise InputError("chi-sepnet-R2* needs an R2* map (--r2star) or the multi-echo GRE magnitude")

    if method in NETWORK_METHODS:
        from .network.inference import run_chisepnet
        # the QSM channel (the user's map, a QSM net or the closed-form QSM) is decided inside
        # run_chisepnet, which reports the source it used
        with timer("network"):
            res = run_chisepnet(method, maps.local_field, maps.mask, maps.affine,
                                r2prime_hz=maps.r2prime, r2star_hz=maps.r2star, qsm_ppm=maps.qsm,
                                weights=weights, device=device, precision=precision,
                                tile_size=tile_size, b0_dir=maps.b0_dir, max_memory_gb=max_memory_gb,
                                progress=scaled(progress, 0.1, 1.0))
        out.update({k: res[k] for k in ("chi_para", "chi_dia", "chi_total")})
        out["r2prime"] = res.get("r2prime", maps.r2prime)
        out["qsm"] = res["qsm"]
        report["weights"] = res.get("weights_info")
        report["device"] = res.get("device")
        report["precision"] = res.get("precision")
        report["engine"] = res.get("engine")  # engine chosen for this machine, with the CPU's features
    else:
        from . import regularized as R
        opts = dict(regularized_options or {})
        dr_used = float(dr) if dr is not None else physics.DR_CHISEPNET
        with timer("regularized"):
            if maps.r2prime is not None:
                res = R.chi_separation_regularized(
                    maps.local_field, maps.r2prime, maps.mask, maps.voxel_size, b0_dir=maps.b0_dir,
                    field_weight=maps.field_weight, magnitude=maps.magnitude, dr_pos=dr_used,
                    b0_t=maps.b0_t, progress=progress, **opts)
                out["r2prime"] = maps.r2prime
            elif maps.r2star is not None:
                notes.append("no R2 available: used the GRE-only regularized variant (R2* minus an "
                             "assumed R2), which is less accurate than using R2'")
                res = R.chi_separation_regularized_r2star(
                    maps.local_field, maps.r2star, maps.mask, maps.voxel_size, b0_dir=maps.b0_dir,
                    field_weight=maps.field_weight, magnitude=maps.magnitude, dr_pos=dr_used,
                    b0_t=maps.b0_t, progress=progress, **opts)
            else:
                raise InputError("the regularized method needs R2' (or R2* and R2, or at least R2*)")
        out.update({k: res[k] for k in ("chi_para", "chi_dia", "chi_total")})
        report["dr_hz_per_ppm"] = dr_used
        report["iterations"] = int(res.get("n_iter", 0))
        report["converged"] = bool(res.get("converged", False))
    out["local_field"] = maps.local_field
    out["mask"] = maps.mask
    if maps.r2star is not None:
        out["r2star"] = maps.r2star
    if maps.r2 is not None:
        out["r2"] = maps.r2
    if method == "regularized":
        # the regularized result depends on these; writing them lets a re-run on processed maps
        # (--field-weight, --magnitude) reproduce it exactly
        out["field_weight"] = maps.field_weight
        out["magnitude"] = maps.magnitude
    for k in ("chi_para", "chi_dia", "chi_total", "r2prime", "qsm"):
        if out.get(k) is not None:
            out[k] = np.asarray(out[k], dtype=np.float32)
    report["timings_s"] = timer.timings
    report["notes"] = notes
    return RunResult(maps={k: v for k, v in out.items() if v is not None}, affine=maps.affine,
                     report=report)


def stage_maps(result: RunResult, folder, extra_report: Optional[dict] = None) -> Path:
    """Write every map of a run as ``<name>.nii.gz`` plus ``report.json`` into ``folder`` (a staging
    folder of :class:`chisep.io.OutputFolder`, or any folder)."""
    from .io import save_nifti, write_json

    folder = Path(folder)
    for name, arr in result.maps.items():
        dtype = np.uint8 if name == "mask" else np.float32
        save_nifti(folder / f"{name}.nii.gz", arr, result.affine, dtype=dtype)
    rep = dict(result.report)
    rep["units"] = {k: OUTPUT_UNITS.get(k, "") for k in result.maps}
    rep["versions"] = versions()
    if extra_report:
        rep.update(extra_report)
    rep["outputs"] = sorted([f"{k}.nii.gz" for k in result.maps] + ["report.json"])
    write_json(folder / "report.json", rep)
    return folder


def write_maps(result: RunResult, out_dir, extra_report: Optional[dict] = None, overwrite: bool = False) -> Path:
    """Write every map of a run as ``<name>.nii.gz`` plus ``report.json`` into ``out_dir`` through
    :class:`chisep.io.OutputFolder`: all or nothing, one run's files (``overwrite`` replaces an
    earlier run's files), refused when another run writes there."""
    from .io import OutputFolder

    with OutputFolder(out_dir, overwrite=overwrite) as out:
        stage_maps(result, out.stage, extra_report)
    return Path(out_dir)
