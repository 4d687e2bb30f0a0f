"""One acquisition loader for every entry point: files in, one checked :class:`Acquisition` out.

``chisep run``, ``chisep preprocess``, the evaluation code, the BIDS app and the Slicer runner all
read their raw inputs with :func:`load_acquisition` (and processed maps with
:func:`load_processed_maps`), so that one set of rules decides what is trusted. Anything that
cannot be trusted raises :class:`chisep.io.InputError` with a message naming the file and the fix;
nothing is guessed silently. Defaults that matter (field strength assumed 3 T) are kept in
``Acquisition.warnings`` for the caller to print and to write to report.json.

Rules
-----
Files
    a 4-D NIfTI, a list of 3-D NIfTI files (one per echo) or a DICOM folder (converted with
    dcm2niix, :mod:`chisep.dicom`); dcm2niix-style JSON sidecars next to NIfTI files.
Echo times
    ``te_s`` (seconds) else the sidecars' ``EchoTime`` (numbers, seconds; the magnitude's and the
    phase's must agree); positive, increasing, below 1 s (larger values are milliseconds: refused);
    the GRE needs at least 2 echoes.
Field strength
    ``b0_t`` else the sidecar's ``MagneticFieldStrength`` (a number of tesla in (0, 30]) else 3 T
    **with a warning**. ``b0_t <= 0`` is refused.
B0 direction
    sidecar ``B0Direction`` (3 finite numbers, not all 0; normalised) else from the affine.
Phase sign
    ``phase_sign`` else sidecar ``PhaseSign``; must be -1 or +1.
Phase unit (:func:`decide_phase_unit`)
    from the data and the sidecar together; ``phase_unit`` overrides (``rad``, ``deg``, ``mrad``,
    ``int`` = scanner integers with the bit depth from the values, ``int<N>`` = N-bit scanner
    integers). Automatic: radians when every value lies in [-pi, pi] or [0, 2 pi]; degrees when
    the values span 270..360 within [-180, 360] and are not N-bit integers; scanner integers when the
    values are integers filling at least 3/4 of a power-of-two range 2**N (signed or unsigned, any
    N, e.g. Siemens -4096..4094); a DICOM header's representable range when it holds the values; GE
    milliradians (manufacturer GE, within +-1000 pi). Anything else is refused with the choices.
    Phase is returned in radians wrapped to [-pi, pi) (radians within [-pi, pi] are kept as given).
Magnitude vs phase
    a magnitude whose sidecar ``ImageType`` says P/PHASE, that has negative values (below -0.1 %
    of its maximum) or that does not decay over the echoes (when the echo times span 5 ms or more:
    mean of the last echo / first >= 0.98, or the last echo below the first in fewer than 85 % of
    the brighter voxels -- a magnitude passes even at SNR 5, a wrapped phase mostly reaches 50-70 %
    but more where the field has mostly one sign) is refused; so is a phase whose sidecar says
    M/MAGNITUDE or which is non-negative, decays like a magnitude (last/first < 0.9 and over 90 % of
    the brighter voxels decaying) and never wraps (fewer than 0.1 % of the echo-to-echo steps exceed
    pi, where a GRE phase has several %). A swap is thus caught by one check or the other; the
    sidecar's ImageType is the surer sign: keep the sidecars with the images.
Grids
    every volume (phase, SE, R2, mask) must have the GRE magnitude's shape and an affine whose voxel
    centres, at the corners of the grid, lie within :data:`AFFINE_TOL_MM` (0.01 mm) of the GRE's.
Masks
    binary: 0 and one other value (1, 255, True); probabilistic or multi-label masks are refused.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from . import physics
from .io import InputError, load_nifti, read_sidecar, sidecar_path

#: largest distance (mm) between the corner voxel centres of two grids that count as the same grid
AFFINE_TOL_MM = 0.01
#: accepted ``phase_unit`` values (plus ``int<N>``, e.g. ``int12``)
PHASE_UNITS = ("auto", "rad", "deg", "mrad", "int")
#: field strength assumed when neither the user nor the sidecar gives one (with a warning)
DEFAULT_B0_T = 3.0
_TWO_PI = 2.0 * math.pi


@dataclass
class Acquisition:
    """A checked multi-echo GRE acquisition (+ optional SE, R2 map, mask) on one grid.

    mag : (X, Y, Z, E) float32, >= 0.     phase : (X, Y, Z, E) float32, radians in [-pi, pi].
    te_s : E echo times (s), increasing.  affine : 4x4 voxel -> RAS+ (mm).
    b0_t : field strength (T).            b0_dir : unit B0 direction in the array frame.
    phase_sign : +1 or -1.                se_mag/se_te_s, r2 (Hz), mask (uint8): optional.
    phase_unit : the unit the phase was read in (``rad``, ``deg``, ``int12``, ...) and
    phase_unit_reason : why.              sources : option -> files.
    provenance : where te_s / b0_t / b0_dir / phase_sign came from.
    warnings : defaults that matter, to print and to write to report.json.
    """
    mag: np.ndarray
    phase: np.ndarray
    te_s: list
    affine: np.ndarray
    b0_t: float
    b0_dir: np.ndarray
    phase_sign: int = 1
    se_mag: Optional[np.ndarray] = None
    se_te_s: Optional[list] = None
    r2: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None
    phase_unit: str = "rad"
    phase_unit_reason: str = ""
    sources: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    @property
    def shape(self):
        return self.mag.shape[:3]

    def preprocess_kwargs(self) -> dict:
        """Keyword arguments for :func:`chisep.preprocess.preprocess_gre` / ``pipeline.preprocess_raw``."""
        return dict(mag=self.mag, phase=self.phase, te_s=list(self.te_s), affine=self.affine,
                    b0_t=self.b0_t, se_mag=self.se_mag, se_te_s=self.se_te_s, r2=self.r2, mask=self.mask,
                    phase_sign=self.phase_sign, b0_dir=self.b0_dir)

    def report(self) -> dict:
        """What was read and decided, for report.json."""
        return {"sources": {k: [str(p) for p in v] for k, v in self.sources.items()},
                "shape": list(self.shape), "n_echoes": int(self.mag.shape[-1]),
                "te_s": [float(t) for t in self.te_s],
                "se_te_s": [float(t) for t in self.se_te_s] if self.se_te_s else None,
                "b0_t": float(self.b0_t), "b0_dir": np.asarray(self.b0_dir, float).tolist(),
                "phase_sign": int(self.phase_sign), "phase_unit": self.phase_unit,
                "phase_unit_reason": self.phase_unit_reason, "provenance": dict(self.provenance),
                "affine_tolerance_mm": AFFINE_TOL_MM, "warnings": list(self.warnings)}


# --------------------------------------------------------------------------- small checks
def _files(x) -> list:
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return [Path(p) for p in x]
    return [Path(x)]


def _label(files) -> str:
    return str(files[0]) if len(files) == 1 else f"{files[0]} (+{len(files) - 1} files)"


def _number(value, key, where, *, allow_list=False):
    """A sidecar value as float (or list of floats); InputError for anything non-numeric."""
    def one(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise InputError(f"{where}: {key} is {v!r}, not a number; fix the sidecar (or give the value "
                             f"on the command line)")
        return float(v)
    if allow_list and isinstance(value, (list, tuple)):
        if not value:
            raise InputError(f"{where}: {key} is an empty list; fix the sidecar")
        return [one(v) for v in value]
    return one(value)


def _side_of_either(mag, phase, key):
    """A sidecar/header value from the magnitude's sidecar, else the phase's: ``(value, where)``."""
    v, where = mag.side(key)
    if v is None:
        v, where = phase.side(key)
    return v, where


def _b0_from_sidecar(value, where, label, option, prov, warnings) -> float:
    """The field strength (T) from a sidecar/header value found at ``where``, or the 3 T default with a
    warning (recorded in ``prov`` and ``warnings``) when ``value`` is None."""
    if value is not None:
        prov["b0_t"] = where
        return check_b0(_number(value, "MagneticFieldStrength", where), where)
    prov["b0_t"] = "default (assumed)"
    warnings.append(f"field strength not given (no {option} and no MagneticFieldStrength in the sidecar "
                    f"of {label}): assumed {DEFAULT_B0_T:g} T; give {option} if it differs")
    return DEFAULT_B0_T


def check_b0(b0_t, where="--b0") -> float:
    """A field strength in tesla: a finite number in (0, 30]."""
    try:
        b = float(b0_t)
    except (TypeError, ValueError):
        raise InputError(f"{where}: field strength {b0_t!r} is not a number of tesla") from None
    if not math.isfinite(b) or b <= 0 or b > 30:
        raise InputError(f"{where}: field strength {b0_t!r} T is not a positive field strength up to 30 T; "
                         f"give the scanner's field in tesla (e.g. --b0 3)")
    return b


def check_phase_sign(value, where="--phase-sign") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) not in (-1.0, 1.0):
        raise InputError(f"{where}: PhaseSign is {value!r}; it must be +1 (phase grows with frequency) or -1 "
                         f"(the other vendor sense); fix the sidecar or give --phase-sign 1|-1")
    return int(value)


def check_b0_direction(value, where) -> np.ndarray:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise InputError(f"{where}: B0Direction is {value!r}; it must be 3 numbers (array frame); "
                         f"fix it or remove it (the affine then gives B0)")
    v = np.asarray([_number(x, "B0Direction", where) for x in value], float)
    n = float(np.linalg.norm(v))
    if n < 1e-6:
        raise InputError(f"{where}: B0Direction {value!r} has zero length; fix it or remove it "
                         f"(the affine then gives B0)")
    return v / n


def check_echo_times(tes, where, what) -> list:
    tes = [float(t) for t in tes]
    if any(not math.isfinite(t) for t in tes):
        raise InputError(f"{where}: echo times {tes} of the {what} are not all finite numbers")
    if max(tes) > 1.0:
        raise InputError(f"{where}: echo times {tes} of the {what} look like milliseconds; give them in seconds")
    if any(t <= 0 for t in tes) or any(b <= a for a, b in zip(tes, tes[1:])):
        raise InputError(f"{where}: echo times {tes} of the {what} must be positive and increasing (seconds)")
    return tes


def grid_mismatch(shape, affine, ref_shape, ref_affine) -> Optional[str]:
    """None when two grids are the same (shape, and corner voxel centres within AFFINE_TOL_MM)."""
    if tuple(shape)[:3] != tuple(ref_shape)[:3]:
        return f"shape {tuple(shape)[:3]} vs {tuple(ref_shape)[:3]}"
    n = np.asarray(ref_shape[:3], float) - 1
    corners = np.array([[i, j, k, 1.0] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])])
    d = np.linalg.norm((corners @ np.asarray(affine, float).T - corners @ np.asarray(ref_affine, float).T)[:, :3],
                       axis=1).max()
    if not np.isfinite(d) or d > AFFINE_TOL_MM:
        return f"voxel positions differ by up to {d:.3g} mm (tolerance {AFFINE_TOL_MM} mm)"
    return None


def check_same_grid(path, what, shape, affine, ref_path, ref_shape, ref_affine, ref_what="the GRE"):
    why = grid_mismatch(shape, affine, ref_shape, ref_affine)
    if why:
        raise InputError(f"{path}: {what} is not on the grid of {ref_what} {ref_path} ({why}); "
                         f"resample/register it onto that grid first")


def check_binary_mask(arr, path, what="mask") -> np.ndarray:
    """A mask with 0 and at most one other value -> uint8 0/1; probabilities or labels refused."""
    vals = np.unique(arr)
    nz = vals[vals != 0]
    if nz.size == 0:
        raise InputError(f"{path}: the {what} is empty (all zero); give the brain mask")
    if nz.size > 1:
        if np.all((vals >= 0) & (vals <= 1)):
            raise InputError(f"{path}: the {what} has {vals.size} values between 0 and 1 (a probability map); "
                             f"threshold it first (e.g. > 0.5) and give a binary mask")
        raise InputError(f"{path}: the {what} has {vals.size} distinct values (a label map?); give a binary "
                         f"mask (0 outside, one value inside)")
    if nz[0] < 0:
        raise InputError(f"{path}: the {what} is negative inside; give a binary mask (0 outside, 1 inside)")
    return (np.asarray(arr) != 0).astype(np.uint8)


# --------------------------------------------------------------------------- phase units
def _is_integer_valued(x: np.ndarray) -> bool:
    return bool(np.all(x == np.round(x)))


def decide_phase_unit(phase, where="phase", unit="auto", sidecar=None, header_range=None,
                      manufacturer: str = ""):
    """Decide the phase unit from the values and the sidecar/header.

    Returns ``(name, radians_per_unit, offset_rad, reason)``: radians = value * radians_per_unit +
    offset_rad, wrapped (scanner integers: the lowest representable value maps to -pi); raises :class:`InputError` when the unit cannot be
    told (the message lists the choices) or when an explicit ``unit`` contradicts the values.
    """
    x = np.asarray(phase)
    lo, hi = float(x.min()), float(x.max())
    amax, span = max(abs(lo), abs(hi)), hi - lo
    if amax == 0:
        raise InputError(f"{where}: the phase is zero everywhere; give the GRE phase images, not "
                         f"magnitude or an empty file")
    is_int = _is_integer_valued(x)
    rng = f"values {lo:g}..{hi:g}"
    how = ("give --phase-unit rad|deg|mrad|int|int<N> (e.g. int12 for 12-bit scanner values), "
           "or PhaseUnit in the JSON sidecar")
    unit = (unit or "auto").strip().lower()
    side = sidecar or {}
    if unit == "auto":
        su = side.get("PhaseUnit", side.get("PhaseUnits", side.get("Units")))
        if isinstance(su, str) and su.strip():
            alias = {"rad": "rad", "radian": "rad", "radians": "rad", "deg": "deg", "degree": "deg",
                     "degrees": "deg", "mrad": "mrad", "milliradians": "mrad"}
            s = su.strip().lower()
            if s in alias:
                unit = alias[s]
            elif re.fullmatch(r"int\d*", s):
                unit = s
            else:
                raise InputError(f"{where}: sidecar PhaseUnit {su!r} is not one of rad, deg, mrad, int, int<N>; "
                                 f"fix the sidecar or {how}")
            src = f"sidecar PhaseUnit {su!r}"
        else:
            src = None
    else:
        src = f"--phase-unit {unit}"
    if unit != "auto":
        m = re.fullmatch(r"int(\d*)", unit)
        if unit == "rad":
            if amax > _TWO_PI * (1 + 1e-3):
                raise InputError(f"{where}: {src} but the {rng} exceed 2 pi; these are not radians: {how}")
            return "rad", 1.0, 0.0, src
        if unit == "deg":
            if amax > 360 * (1 + 1e-3):
                raise InputError(f"{where}: {src} but the {rng} exceed 360; these are not degrees: {how}")
            return "deg", math.pi / 180, 0.0, src
        if unit == "mrad":
            if amax > 2000 * math.pi * (1 + 1e-3):
                raise InputError(f"{where}: {src} but the {rng} exceed 2000 pi; not milliradians: {how}")
            return "mrad", 1e-3, 0.0, src
        if m:
            if not is_int:
                raise InputError(f"{where}: {src} but the values are not integers ({rng}); {how}")
            if m.group(1):
                n = int(m.group(1))
                if not (1 <= n <= 32) or lo < -(2 ** (n - 1)) or hi >= 2 ** n:
                    raise InputError(f"{where}: {src} but the {rng} do not fit {n}-bit integers; {how}")
            else:
                n = max(1, int(math.ceil(math.log2(span + 1))))
            return (f"int{n}", _TWO_PI / 2 ** n, -math.pi if lo >= 0 else 0.0,
                    f"{src}: {n}-bit scanner integers ({'unsigned' if lo >= 0 else 'signed'}), 2**{n} values = 2 pi")
        raise InputError(f"{where}: phase unit {unit!r} is not one of rad, deg, mrad, int, int<N>; {how}")

    # --- automatic, from the values (and the header's representable range)
    if amax <= math.pi * (1 + 1e-4) or (lo >= -1e-4 and hi <= _TWO_PI * (1 + 1e-4)):
        if is_int and span >= 2:
            raise InputError(f"{where}: cannot tell the phase unit: integer {rng} could be radians or "
                             f"low-bit scanner integers; {how}")
        inside = "[-pi, pi]" if amax <= math.pi * (1 + 1e-4) else "[0, 2 pi]"
        return "rad", 1.0, 0.0, f"radians: every value lies in {inside}"
    if manufacturer.upper().startswith("GE") and amax <= 1000 * math.pi * (1 + 1e-4):
        return "mrad", 1e-3, 0.0, "GE milliradians: values within +-1000 pi"
    if header_range is not None and header_range[0] <= lo and hi <= header_range[1]:
        a, b = map(float, header_range)
        return (f"header[{a:g},{b:g})", _TWO_PI / (b - a), -math.pi - a * _TWO_PI / (b - a),
                f"header range [{a:g}, {b:g}) -> 2 pi (BitsStored, RescaleSlope/Intercept)")
    if is_int and span >= 8:
        n = max(1, int(math.ceil(math.log2(span + 1))))
        step = float(np.min(np.diff(np.unique(x[:: max(1, x.size // 200000)].ravel())))) if span else 1.0
        if (span + step) >= 0.75 * 2 ** n:
            return (f"int{n}", _TWO_PI / 2 ** n, -math.pi if lo >= 0 else 0.0,
                    f"observed range {lo:g}..{hi:g}: {n}-bit scanner integers ({'signed' if lo < 0 else 'unsigned'}), "
                    f"2**{n} values = 2 pi")
    if lo >= -180 * (1 + 1e-4) and hi <= 360 * (1 + 1e-4) and 270 <= span <= 360 * (1 + 1e-4):
        return "deg", math.pi / 180, 0.0, f"degrees: values span {span:.4g} within [-180, 360]"
    raise InputError(f"{where}: cannot tell the phase unit from the {rng} ({'integers' if is_int else 'not integers'}): "
                     f"neither radians ([-pi, pi] or [0, 2 pi]), degrees (a span of 270..360) nor scanner "
                     f"integers filling a 2**N range; {how}")


def phase_to_radians(phase, where="phase", unit="auto", sidecar=None, header_range=None,
                     manufacturer: str = ""):
    """Phase -> radians wrapped to [-pi, pi) (radians in [-pi, pi] kept). Returns ``(rad, name, reason)``."""
    name, scale, offset, reason = decide_phase_unit(phase, where, unit, sidecar, header_range, manufacturer)
    return _apply_unit(phase, name, scale, offset), name, reason


def _apply_unit(phase, name, scale, offset) -> np.ndarray:
    x = np.asarray(phase)
    if name == "rad" and float(np.abs(x).max()) <= math.pi * (1 + 1e-4):
        return x.astype(np.float32)
    r = np.mod(x.astype(np.float64) * scale + offset + math.pi, _TWO_PI) - math.pi
    return r.astype(np.float32)


# --------------------------------------------------------------------------- reading series
@dataclass
class _Series:
    data: np.ndarray          # (X, Y, Z, E)
    affine: np.ndarray
    files: list
    sidecars: list            # one per file (or per echo for DICOM)
    te_s: Optional[list] = None
    te_where: str = ""
    b0_t: Optional[float] = None
    header_range: Optional[tuple] = None
    manufacturer: str = ""
    dicom: bool = False

    @property
    def label(self):
        return _label(self.files)

    def side(self, key):
        for f, s in zip(self.files if not self.dicom else self.files * len(self.sidecars), self.sidecars):
            if key in s:
                return s[key], (f"{sidecar_path(f)}" if not self.dicom else f"{f} (DICOM header)")
        return None, None


def _read_series(paths, what, option, kind="magnitude") -> _Series:
    from .dicom import is_dicom_dir, load_dicom_echoes

    files = _files(paths)
    if not files:
        raise InputError(f"{option}: no file given for the {what}")
    for f in files:
        if not f.exists():
            raise InputError(f"{option} {f}: file not found")
    if any(f.is_dir() for f in files):
        if len(files) != 1:
            raise InputError(f"{option}: give either one DICOM folder or NIfTI files, not a mix ({_label(files)})")
        d = files[0]
        if not is_dicom_dir(d):
            what_is = "an empty folder" if not any(d.iterdir()) else "a folder without DICOM files"
            raise InputError(f"{option} {d}: is {what_is}; give the {what} as a NIfTI file or a folder of "
                             f"DICOM files")
        r = load_dicom_echoes(d, kind=kind, raw_phase=True)
        return _Series(data=r["data"], affine=r["affine"], files=[d], sidecars=r["sidecars"],
                       te_s=r["te_s"], te_where=f"{d} (DICOM EchoTime)", b0_t=r["b0_t"],
                       header_range=r.get("phase_header_range"), manufacturer=r.get("manufacturer", ""),
                       dicom=True)
    vols, sidecars, affine = [], [], None
    for f in files:
        data, aff = load_nifti(f, ndim=(3, 4))
        if affine is None:
            affine = aff
        else:
            why = grid_mismatch(data.shape, aff, vols[0].shape, affine)
            if why:
                raise InputError(f"{f}: not on the grid of {files[0]} ({why}); all echoes of the {what} must "
                                 f"share one grid")
        vols.append(data if data.ndim == 4 else data[..., None])
        sidecars.append(read_sidecar(f))
    data = np.concatenate(vols, axis=-1).astype(np.float32) if len(vols) > 1 else vols[0].astype(np.float32)
    # echo times from the sidecars (if every file has them)
    tes, where = [], ""
    for f, sc, v in zip(files, sidecars, vols):
        te = sc.get("EchoTime")
        if te is None:
            tes = None
            break
        where = str(sidecar_path(f))
        te = _number(te, "EchoTime", where, allow_list=True)
        te = te if isinstance(te, list) else [te]
        if len(te) != v.shape[-1]:
            raise InputError(f"{where}: EchoTime lists {len(te)} echo times for the {v.shape[-1]} echoes of {f}")
        tes += te
    return _Series(data=data, affine=affine, files=files, sidecars=sidecars, te_s=tes,
                   te_where=where if len(files) == 1 else f"sidecars of {_label(files)}")


def _echo_times(series: _Series, te_s, what, option_te) -> tuple:
    n = series.data.shape[-1]
    if te_s is not None:
        tes = [float(t) for t in te_s]
        if len(tes) != n:
            raise InputError(f"{option_te}: {len(tes)} echo times given for the {n} echoes of the {what} "
                             f"{series.label}")
        return check_echo_times(tes, option_te, what), option_te
    if series.te_s is None:
        raise InputError(f"{series.label}: no echo time for the {what}: add EchoTime (seconds) to its JSON "
                         f"sidecar {sidecar_path(series.files[0]).name} or give the echo times ({option_te})")
    if len(series.te_s) != n:
        raise InputError(f"{series.te_where}: {len(series.te_s)} echo times for the {n} echoes of {series.label}")
    return check_echo_times(series.te_s, series.te_where, what), series.te_where


def _image_type(series: _Series) -> set:
    it = set()
    for s in series.sidecars:
        v = s.get("ImageType")
        if isinstance(v, (list, tuple)):
            it |= {str(x).upper() for x in v}
        elif isinstance(v, str):
            it |= {x.upper() for x in re.split(r"[\\/_, ]+", v) if x}
    return it


def _decay_ratio(data: np.ndarray) -> float:
    """Mean of the last echo over the mean of the first (whole volume)."""
    first = float(np.mean(data[..., 0], dtype=np.float64))
    last = float(np.mean(data[..., -1], dtype=np.float64))
    return last / first if first > 0 else float("inf")


def _decaying_fraction(data: np.ndarray) -> float:
    """Fraction of the brighter voxels (first echo at or above the median of the voxels above 5 % of
    the maximum) whose last echo is below their first: ~1 for a magnitude, even at SNR 5 (it decays
    with R2*), about one half to two thirds for a wrapped phase."""
    mx = float(data.max())
    e0 = data[..., 0]
    sel = e0 > 0.05 * mx
    if not sel.any():
        return 1.0
    bright = e0 >= np.median(e0[sel])
    return float(np.mean(data[..., -1][bright] < e0[bright]))


def _check_magnitude(series: _Series, te, what, option, phase_option=None):
    it = _image_type(series)
    if it & {"P", "PHASE"} and not it & {"M", "MAGNITUDE"}:
        swap = f"; swap {option} and {phase_option}" if phase_option else ""
        raise InputError(f"{series.label}: the {what} is a phase image (sidecar ImageType "
                         f"{sorted(it)}){swap}")
    d = series.data
    mx = float(d.max())
    if mx <= 0:
        raise InputError(f"{series.label}: the {what} is zero or negative everywhere; give the magnitude images")
    mn = float(d.min())
    if mn < -1e-3 * mx:
        n = int(np.count_nonzero(d < 0))
        raise InputError(f"{series.label}: the {what} has {n} negative values (down to {mn:g}); a magnitude "
                         f"is >= 0: is this a phase, real or imaginary image?"
                         + (f" (swapped with {phase_option}?)" if phase_option else ""))
    if mn < 0:
        np.maximum(d, 0, out=d)
    if d.shape[-1] >= 2 and te[-1] - te[0] >= 0.005:
        r, dec = _decay_ratio(d), _decaying_fraction(d)
        if r >= 0.98 or dec < 0.85:
            raise InputError(f"{series.label}: the {what} does not decay over the echoes like a magnitude (mean "
                             f"of the last echo / first = {r:.3f}; {100 * dec:.0f} % of the brighter voxels "
                             f"decay, 85 % needed); "
                             f"is this a phase image?"
                             + (f" (swap {option} and {phase_option}?)" if phase_option else ""))


def _wrap_jump_fraction(data: np.ndarray, scale: float) -> float:
    """Fraction of voxel/echo steps whose value changes by more than pi (read in radians): a wrapped
    GRE phase wraps somewhere (7-18 % on the simulated heads), a magnitude never does (< 0.01 %)."""
    return float(np.mean(np.abs(np.diff(data, axis=-1)) * scale > math.pi))


def _check_phase_not_magnitude(series: _Series, te, scale, option, mag_option):
    it = _image_type(series)
    if it & {"M", "MAGNITUDE"} and not it & {"P", "PHASE"}:
        raise InputError(f"{series.label}: the GRE phase is a magnitude image (sidecar ImageType {sorted(it)}); "
                         f"swap {mag_option} and {option}")
    d = series.data
    if float(d.min()) >= 0 and d.shape[-1] >= 2 and te[-1] - te[0] >= 0.005:
        r = _decay_ratio(d)
        if r < 0.9 and _decaying_fraction(d) > 0.9 and _wrap_jump_fraction(d, scale) < 1e-3:
            raise InputError(f"{series.label}: the GRE phase decays over the echoes like a magnitude and never "
                             f"wraps (mean of the last echo / first = {r:.3f}); swap {mag_option} and {option}?")


# --------------------------------------------------------------------------- the loader
def load_acquisition(mag, phase, se=None, r2=None, mask=None, te_s=None, se_te_s=None, b0_t=None,
                     phase_unit: str = "auto", phase_sign=None, options: Optional[dict] = None) -> Acquisition:
    """Load and check a raw acquisition; the one loader of every entry point.

    Parameters
    ----------
    mag, phase : multi-echo GRE magnitude and phase: a 4-D NIfTI path, a list of 3-D NIfTI paths
        (one per echo, in echo order) or a DICOM folder (the same folder may hold both).
    se : optional multi-echo spin-echo magnitude (same forms) for R2.
    r2 : optional R2 map (Hz, 3-D NIfTI) instead of ``se``.
    mask : optional brain mask (3-D NIfTI, binary: 0 and one other value).
    te_s, se_te_s : echo times (s) overriding the sidecars / DICOM headers.
    b0_t : field strength (T) overriding the sidecar; default sidecar, else 3 T with a warning.
    phase_unit : ``"auto"`` (from the values and the sidecar) or ``rad``, ``deg``, ``mrad``, ``int``,
        ``int<N>`` (see the module docstring).
    phase_sign : +1 / -1 overriding the sidecar's ``PhaseSign`` (default +1).
    options : names of the options for messages (keys ``mag``, ``phase``, ``se``, ``r2``, ``mask``,
        ``te``, ``se_te``, ``b0``, ``phase_unit``, ``phase_sign``); defaults are the ``chisep run``
        option names (``--gre-mag`` ...). The Slicer runner and the BIDS app may pass their own.

    Returns
    -------
    :class:`Acquisition` (arrays on the GRE grid; phase in radians).

    Raises
    ------
    InputError naming the file (or option) and the fix, for every rule of the module docstring.
    """
    o = {"mag": "--gre-mag", "phase": "--gre-phase", "se": "--se-mag", "r2": "--r2", "mask": "--mask",
         "te": "--te", "se_te": "--se-te", "b0": "--b0", "phase_unit": "--phase-unit",
         "phase_sign": "--phase-sign"}
    o.update(options or {})
    warnings, prov = [], {}
    if b0_t is not None:
        b0_t = check_b0(b0_t, o["b0"])
    if phase_sign is not None:
        phase_sign = check_phase_sign(phase_sign, o["phase_sign"])
    if phase_unit is not None and str(phase_unit).lower() != "auto":
        pu = str(phase_unit).lower()
        if pu not in PHASE_UNITS and not re.fullmatch(r"int\d+", pu):
            raise InputError(f"{o['phase_unit']} {phase_unit!r}: use auto, rad, deg, mrad, int or int<N> (e.g. int12)")
    if se is not None and r2 is not None and _files(se) and _files(r2):
        raise InputError(f"give either {o['se']} (spin echo, for R2) or {o['r2']} (an R2 map), not both")

    m = _read_series(mag, "GRE magnitude", o["mag"], kind="magnitude")
    p = _read_series(phase, "GRE phase", o["phase"], kind="phase")
    if p.data.shape[:3] != m.data.shape[:3] or p.data.shape[-1] != m.data.shape[-1]:
        raise InputError(f"{p.label}: the phase has shape {p.data.shape} but the magnitude {m.label} has "
                         f"{m.data.shape}: give the same echoes on the same grid")
    check_same_grid(p.label, "the GRE phase", p.data.shape, p.affine, m.label, m.data.shape, m.affine,
                    "the GRE magnitude")
    n = m.data.shape[-1]
    if n < 2:
        raise InputError(f"{m.label}: the GRE has only {n} echo; the field and R2* fits need a multi-echo GRE "
                         f"(2 or more echoes, 3 or more for a good R2*)")
    te, prov["te_s"] = _echo_times(m, te_s, "GRE magnitude", o["te"])
    if te_s is None and p.te_s is not None:
        if len(p.te_s) != n or not np.allclose(p.te_s, te, rtol=1e-3):
            raise InputError(f"{p.te_where}: echo times {p.te_s} differ from the magnitude's {te} "
                             f"({m.te_where}); give the phase of the same echoes")
    _check_magnitude(m, te, "GRE magnitude", o["mag"], o["phase"])
    psc = p.sidecars[0] if p.sidecars else {}
    unit_name, scale, offset, unit_reason = decide_phase_unit(p.data, p.label, phase_unit or "auto", psc,
                                                              p.header_range, p.manufacturer)
    _check_phase_not_magnitude(p, te, scale, o["phase"], o["mag"])
    ph = _apply_unit(p.data, unit_name, scale, offset)
    del p.data

    # field strength
    if b0_t is not None:
        b0, prov["b0_t"] = b0_t, o["b0"]
    else:
        v, where = _side_of_either(m, p, "MagneticFieldStrength")
        if v is None and m.b0_t is not None:
            v, where = m.b0_t, f"{m.label} (DICOM header)"
        b0 = _b0_from_sidecar(v, where, m.label, o["b0"], prov, warnings)
    # B0 direction
    v, where = _side_of_either(m, p, "B0Direction")
    if v is not None:
        b0_dir = check_b0_direction(v, where)
        prov["b0_dir"] = where
    else:
        b0_dir = physics.b0_direction_from_affine(m.affine)
        prov["b0_dir"] = "affine"
    # phase sign
    if phase_sign is not None:
        sign, prov["phase_sign"] = phase_sign, o["phase_sign"]
    else:
        v, where = _side_of_either(m, p, "PhaseSign")
        if v is not None:
            sign, prov["phase_sign"] = check_phase_sign(v, where), where
        else:
            sign, prov["phase_sign"] = 1, "default (+1)"

    acq = Acquisition(mag=m.data, phase=ph, te_s=te, affine=m.affine, b0_t=float(b0), b0_dir=b0_dir,
                      phase_sign=sign, phase_unit=unit_name, phase_unit_reason=unit_reason,
                      sources={"gre_mag": m.files, "gre_phase": p.files}, provenance=prov, warnings=warnings)
    grid = m.data.shape[:3]
    if se is not None and _files(se):
        s = _read_series(se, "SE magnitude", o["se"], kind="magnitude")
        check_same_grid(s.label, "the SE magnitude", s.data.shape, s.affine, m.label, grid, m.affine)
        if s.data.shape[-1] < 2:
            raise InputError(f"{s.label}: the SE has only {s.data.shape[-1]} echo; R2 needs a multi-echo spin "
                             f"echo (2 or more echoes), or give an R2 map ({o['r2']})")
        acq.se_te_s, prov["se_te_s"] = _echo_times(s, se_te_s, "SE magnitude", o["se_te"])
        _check_magnitude(s, acq.se_te_s, "SE magnitude", o["se"])
        acq.se_mag = s.data
        acq.sources["se_mag"] = s.files
    elif se_te_s is not None:
        raise InputError(f"{o['se_te']} given without {o['se']}")
    if r2 is not None and _files(r2):
        f = _files(r2)[0]
        arr, aff = load_nifti(f, ndim=3)
        check_same_grid(f, "the R2 map", arr.shape, aff, m.label, grid, m.affine)
        acq.r2 = arr
        acq.sources["r2"] = [f]
    if mask is not None and _files(mask):
        f = _files(mask)[0]
        arr, aff = load_nifti(f, ndim=3)
        check_same_grid(f, "the mask", arr.shape, aff, m.label, grid, m.affine)
        acq.mask = check_binary_mask(arr, f)
        acq.sources["mask"] = [f]
    return acq


# --------------------------------------------------------------------------- processed maps
def load_processed_maps(local_field, field_unit, mask, r2star=None, r2=None, r2prime=None, qsm=None,
                        field_weight=None, magnitude=None, b0_t=None, field_te_s=None,
                        options: Optional[dict] = None):
    """Load processed maps (``chisep run --local-field ...``) into :class:`chisep.pipeline.Maps`.

    ``field_unit``: ``hz``, ``ppm`` or ``rad`` (``rad`` needs ``field_te_s`` > 0). ``b0_t``: > 0;
    default the local field's sidecar ``MagneticFieldStrength``, else 3 T with a warning. Every map
    must lie on the local field's grid (:data:`AFFINE_TOL_MM`); the mask must be binary.
    Returns ``(maps, info)`` with ``info = {"warnings": [...], "provenance": {...}, "sources": {...}}``.
    """
    from .pipeline import Maps

    o = {"local_field": "--local-field", "field_unit": "--field-unit", "field_te": "--field-te",
         "mask": "--mask", "b0": "--b0"}
    o.update(options or {})
    if not mask:
        raise InputError(f"{o['local_field']} needs {o['mask']} (the brain mask of the processed maps)")
    if not field_unit:
        raise InputError(f"{o['local_field']} needs {o['field_unit']} hz|ppm|rad (the unit of the field map)")
    if field_unit not in ("hz", "ppm", "rad"):
        raise InputError(f"{o['field_unit']} {field_unit!r}: use hz, ppm or rad")
    if field_unit == "rad":
        if field_te_s is None:
            raise InputError(f"{o['field_unit']} rad needs {o['field_te']} (the echo time in seconds the phase "
                             f"was measured at)")
        check_echo_times([field_te_s], o["field_te"], "local field")
    elif field_te_s is not None and field_te_s <= 0:
        raise InputError(f"{o['field_te']} {field_te_s}: must be a positive echo time in seconds")
    warnings, prov = [], {}
    if b0_t is not None:
        b0 = check_b0(b0_t, o["b0"])
        prov["b0_t"] = o["b0"]
    field_path = Path(local_field)
    field, affine = load_nifti(field_path, ndim=3)
    if b0_t is None:
        v = read_sidecar(field_path).get("MagneticFieldStrength")
        b0 = _b0_from_sidecar(v, str(sidecar_path(field_path)), field_path, o["b0"], prov, warnings)
    marr, maff = load_nifti(mask, ndim=3)
    check_same_grid(mask, "the mask", marr.shape, maff, field_path, field.shape, affine, "--local-field")
    maps = {"mask": check_binary_mask(marr, mask)}
    sources = {"local_field": [str(field_path)], "mask": [str(mask)]}
    for name, path in (("r2star", r2star), ("r2", r2), ("r2prime", r2prime), ("qsm", qsm),
                       ("field_weight", field_weight), ("magnitude", magnitude)):
        if path:
            arr, aff = load_nifti(path, ndim=3)
            check_same_grid(path, f"--{name.replace('_', '-')}", arr.shape, aff, field_path, field.shape,
                            affine, "--local-field")
            maps[name] = arr
            sources[name] = [str(path)]
    field_ppm = physics.convert_field(field, field_unit, "ppm", b0, te_s=field_te_s)
    return (Maps(affine=affine, local_field=field_ppm, b0_t=b0, **maps),
            {"warnings": warnings, "provenance": prov, "sources": sources})


__all__ = ["Acquisition", "load_acquisition", "load_processed_maps", "decide_phase_unit", "phase_to_radians",
           "check_same_grid", "grid_mismatch", "check_binary_mask", "check_b0", "AFFINE_TOL_MM", "PHASE_UNITS"]
