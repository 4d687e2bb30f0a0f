"""DICOM input: multi-echo GRE magnitude/phase and multi-echo SE folders, converted with dcm2niix.

Conversion is done by the dcm2niix converter (the ``dcm2niix`` PyPI package ships it; it is run as
a subprocess into a temporary folder that is always removed). dcm2niix is what the field trusts for
geometry (LPS -> RAS, slice order, oblique orientation) and writes BIDS sidecars with
``EchoTime`` (s), ``MagneticFieldStrength`` (T), ``ImagingFrequency`` (MHz) and ``ImageType``.
Here we only check for the ``DICM`` preamble and read a few header fields of one phase file with
pydicom (for the phase scaling below); there is no DICOM parsing of our own.

Magnitude vs phase: a volume is phase when its sidecar ``ImageType`` contains ``P`` or ``PHASE``
(or dcm2niix named it ``*_ph``); ``R``/``REAL`` and ``I``/``IMAGINARY`` volumes are ignored; every
other volume is magnitude (``M``/``MAGNITUDE``, and SE magnitude). A folder may hold both;
``kind`` selects.

Phase scaling: the one rule of :func:`chisep.acquisition.decide_phase_unit` (shared with NIfTI
input), given the header's representable range (``BitsStored``, ``PixelRepresentation``,
``RescaleSlope``/``RescaleIntercept``: Siemens 12 bit, slope 2, intercept -4096 -> ``[-4096, 4096)``)
and the manufacturer (GE milliradians). Radians are kept; degrees, milliradians and scanner
integers are scaled to radians and wrapped to [-pi, pi); anything that cannot be told is refused.
``chisep.acquisition.load_acquisition`` calls :func:`load_dicom_echoes` with ``raw_phase=True``
and decides the unit itself (so ``--phase-unit`` applies to DICOM too).

The result's ``phase_scaling`` says which rule was used (kept in the run report).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .io import InputError, load_nifti

__all__ = ["is_dicom_dir", "load_dicom_echoes", "phase_to_radians", "convert", "converter_path"]


def _has_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def _dicom_files(folder: Path):
    for f in sorted(folder.rglob("*")):
        if f.is_file() and _has_preamble(f):
            yield f


def is_dicom_dir(path) -> bool:
    """True if ``path`` is a folder holding (at any depth) a file with the DICOM ``DICM`` preamble."""
    p = Path(path)
    return p.is_dir() and next(_dicom_files(p), None) is not None


def converter_path() -> str:
    """Path of the dcm2niix binary (from the dcm2niix package, else on PATH)."""
    try:
        import dcm2niix
        if os.path.exists(dcm2niix.bin):
            return str(dcm2niix.bin)
    except ImportError:
        pass
    exe = shutil.which("dcm2niix")
    if exe is None:
        raise InputError("DICOM input needs the dcm2niix converter: pip install dcm2niix")
    return exe


def convert(dicom_dir, out_dir) -> list:
    """Run dcm2niix on ``dicom_dir`` into ``out_dir``; returns the NIfTI paths written.

    Raises :class:`InputError` (with the tail of dcm2niix's messages) when it fails or writes nothing.
    """
    cmd = [converter_path(), "-z", "y", "-b", "y", "-ba", "n", "-f", "%s_e%e",
           "-o", str(out_dir), str(dicom_dir)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    except OSError as exc:
        raise InputError(f"{dicom_dir}: could not start dcm2niix ({exc}); reinstall it: pip install dcm2niix") from exc
    files = sorted(Path(out_dir).glob("*.nii.gz"))
    if proc.returncode != 0 or not files:
        lines = [ln for ln in ((proc.stdout or "") + "\n" + (proc.stderr or "")).splitlines() if ln.strip()]
        raise InputError(f"{dicom_dir}: dcm2niix could not convert this folder (exit {proc.returncode}); "
                         f"its last messages: {' | '.join(lines[-6:]) or '(none)'}")
    return files


def _image_kind(sidecar: dict, path: Path) -> str:
    it = {str(x).upper() for x in (sidecar.get("ImageType") or [])}
    if it & {"P", "PHASE"} or Path(path).name.endswith("_ph.nii.gz"):
        return "phase"
    if it & {"R", "REAL"} or it & {"I", "IMAGINARY"}:
        return "other"
    return "magnitude"


def _phase_header_range(dicom_dir: Path, series_uids: set):
    """Representable (a, b) of a phase file of the given series (header fields), or None."""
    try:
        import pydicom
    except ImportError:
        return None
    tags = ["ImageType", "SeriesInstanceUID", "BitsStored", "PixelRepresentation",
            "RescaleSlope", "RescaleIntercept", "Manufacturer"]
    fallback = None
    for f in _dicom_files(Path(dicom_dir)):
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True, specific_tags=tags)
        except Exception:
            continue
        it = {str(x).upper() for x in (ds.get("ImageType") or [])}
        is_ph = bool(it & {"P", "PHASE"})
        if series_uids and str(ds.get("SeriesInstanceUID", "")) not in series_uids:
            continue
        if not is_ph:
            # a series may mix magnitude and phase; GE marks phase only in a private tag
            if series_uids and fallback is None:
                fallback = ds
            continue
        return _representable_range(ds)
    return _representable_range(fallback) if fallback is not None else None


def _representable_range(ds):
    bits = int(ds.get("BitsStored") or 0)
    if not bits:
        return None
    slope = float(ds.get("RescaleSlope") or 1.0)
    inter = float(ds.get("RescaleIntercept") or 0.0)
    lo = -(2 ** (bits - 1)) if int(ds.get("PixelRepresentation") or 0) == 1 else 0
    a, b = inter + slope * lo, inter + slope * (lo + 2 ** bits)
    return (min(a, b), max(a, b))


def phase_to_radians(phase: np.ndarray, value_range=None, manufacturer: str = "", unit: str = "auto"):
    """Scanner phase -> radians by :func:`chisep.acquisition.decide_phase_unit`.

    ``value_range`` is the header's representable ``(a, b)``. Returns ``(radians float32, rule)``;
    raises InputError when the unit cannot be told.
    """
    from .acquisition import phase_to_radians as _to_rad

    rad, name, reason = _to_rad(np.asarray(phase), "DICOM phase", unit, None, value_range, manufacturer)
    return rad, reason


def load_dicom_echoes(dicom_dir, kind: str = "auto", raw_phase: bool = False) -> dict:
    """Load one multi-echo series (GRE magnitude or phase, or SE magnitude) from a DICOM folder.

    Parameters
    ----------
    dicom_dir : folder (searched recursively) with the DICOM files of one acquisition; it may hold
        the magnitude and the phase series together.
    kind : ``"magnitude"``, ``"phase"`` or ``"auto"`` (magnitude when the folder has magnitude,
        else phase).
    raw_phase : keep the phase in the scanner's values (``phase_header_range`` and ``manufacturer``
        are returned for :func:`chisep.acquisition.decide_phase_unit`).

    Returns
    -------
    dict with ``data`` (X, Y, Z, E) float32 in NIfTI (i, j, k) order as dcm2niix writes it (phase
    in radians, see the module docstring), ``affine`` (4x4 voxel -> RAS+ mm), ``te_s`` (list,
    seconds, increasing), ``b0_t`` (T, or None), ``imaging_frequency_mhz`` (or None),
    ``image_type`` (list, first echo's ImageType), ``is_phase``, ``phase_scaling`` (rule used, or
    None) and ``sidecars`` (one dcm2niix sidecar dict per echo).

    Raises :class:`InputError` for a missing folder, a folder without DICOM files, a dcm2niix
    failure, no image of the requested kind, a missing EchoTime, two volumes with one echo time
    (several acquisitions in one folder), or echoes on different grids.
    """
    d = Path(dicom_dir)
    if not d.is_dir():
        raise InputError(f"{d}: not a folder (give the folder that holds the DICOM files)")
    if kind not in ("auto", "magnitude", "phase"):
        raise InputError(f"kind={kind!r}: must be 'auto', 'magnitude' or 'phase'")
    if not is_dicom_dir(d):
        raise InputError(f"{d}: no DICOM files found (DICOM files start with a 128-byte preamble "
                         f"and 'DICM'); give the folder of the exported series")
    items = []
    with tempfile.TemporaryDirectory(prefix="chisep_dcm_") as tmp:
        for f in convert(d, tmp):
            side_path = Path(str(f)[: -len(".nii.gz")] + ".json")
            try:
                side = json.loads(side_path.read_text()) if side_path.exists() else {}
            except ValueError:
                side = {}
            data, aff = load_nifti(f)
            if data.ndim == 3:
                data = data[..., None]
            if data.ndim != 4:
                raise InputError(f"{d}: dcm2niix wrote a {data.ndim}-D volume ({f.name}); expected 3-D echoes")
            items.append({"side": side, "data": data, "affine": aff,
                          "kind": _image_kind(side, f), "name": f.name})
    kinds = {it["kind"] for it in items}
    want = kind if kind != "auto" else ("magnitude" if "magnitude" in kinds else "phase")
    sel = [it for it in items if it["kind"] == want]
    if not sel:
        found = ", ".join(sorted(kinds)) or "nothing"
        raise InputError(f"{d}: no {want} images in this folder (found: {found}); "
                         f"give the folder of the {want} series")
    vols = []
    for it in sel:
        te = it["side"].get("EchoTime")
        if te is None:
            raise InputError(f"{d}: series {it['side'].get('SeriesNumber', '?')} ({it['name']}) has no "
                             f"EchoTime in its DICOM headers; give the echo times with --te")
        te = _float_or_none(te, "EchoTime", d)
        for e in range(it["data"].shape[3]):
            vols.append((float(te), it["data"][..., e], it["affine"], it["side"]))
    vols.sort(key=lambda v: v[0])
    tes = [v[0] for v in vols]
    dup = sorted({t for t in tes if tes.count(t) > 1})
    if dup:
        raise InputError(f"{d}: {len(vols)} {want} volumes but echo time(s) {[t * 1e3 for t in dup]} ms "
                         f"occur more than once; the folder holds several acquisitions or repeats; "
                         f"give a folder with one multi-echo series")
    ref_shape, ref_aff = vols[0][1].shape, vols[0][2]
    for te, v, aff, _ in vols:
        if v.shape != ref_shape or not np.allclose(aff, ref_aff, atol=1e-3):
            raise InputError(f"{d}: echo at TE {te * 1e3:g} ms is on a different grid ({v.shape}) than "
                             f"TE {vols[0][0] * 1e3:g} ms ({ref_shape}); one folder must hold one acquisition")
    data = np.stack([v[1] for v in vols], axis=-1).astype(np.float32)
    side0 = vols[0][3]
    scaling = hdr_range = None
    manufacturer = str(side0.get("Manufacturer", ""))
    if want == "phase":
        uids = {str(v[3].get("SeriesInstanceUID")) for v in vols if v[3].get("SeriesInstanceUID")}
        hdr_range = _phase_header_range(d, uids)
        if not raw_phase:
            try:
                data, scaling = phase_to_radians(data, hdr_range, manufacturer)
            except InputError as exc:
                raise InputError(f"{d}: {exc}") from None
    b0 = side0.get("MagneticFieldStrength")
    f0 = side0.get("ImagingFrequency")
    f0 = _float_or_none(f0, "ImagingFrequency", d)
    return {"data": data, "affine": np.asarray(ref_aff, dtype=float), "te_s": tes,
            "b0_t": _float_or_none(b0, "MagneticFieldStrength", d),
            "imaging_frequency_mhz": f0,
            "image_type": list(side0.get("ImageType") or []),
            "is_phase": want == "phase", "phase_scaling": scaling,
            "phase_header_range": hdr_range, "manufacturer": manufacturer,
            "sidecars": [v[3] for v in vols]}


def _float_or_none(v, key, where):
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        raise InputError(f"{where}: the DICOM header's {key} is {v!r}, not a number; give it on the "
                         f"command line") from None
