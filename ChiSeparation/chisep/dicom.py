"""DICOM input: multi-echo GRE magnitude/phase and multi-echo SE folders, converted with dcm2niix.

Conversion is done by the dcm2niix converter (the ``dcm2niix`` PyPI package ships it), which the
field trusts for geometry (LPS -> RAS, slice order, oblique orientation) and writes BIDS sidecars
with ``EchoTime`` (s), ``MagneticFieldStrength`` (T), ``ImagingFrequency`` (MHz) and ``ImageType``.
No DICOM parsing is done here beyond a preamble check.

Phase scaling rule: dcm2niix keeps the scanner's phase values (e.g. Siemens -4096..4094 after
RescaleSlope 2, RescaleIntercept -4096). Phase whose absolute maximum exceeds 3.2 is mapped
linearly onto [-pi, pi) from the full range the header allows: stored values 0..2^BitsStored - 1
through RescaleSlope/RescaleIntercept (read with pydicom from one phase file). Without those
header fields the value range, rounded out to a power of two, is used. Phase already within
[-pi, pi] is kept.
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


def _has_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def is_dicom_dir(path) -> bool:
    """True if ``path`` is a folder holding at least one file with the DICOM ``DICM`` preamble."""
    p = Path(path)
    if not p.is_dir():
        return False
    for f in p.rglob("*"):
        if f.is_file() and _has_preamble(f):
            return True
    return False


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
    """Run dcm2niix on ``dicom_dir`` into ``out_dir``; returns the NIfTI paths written."""
    cmd = [converter_path(), "-z", "y", "-b", "y", "-ba", "n", "-f", "%s_%e", "-o", str(out_dir), str(dicom_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    files = sorted(Path(out_dir).glob("*.nii.gz"))
    if proc.returncode != 0 or not files:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:]
        raise InputError(f"{dicom_dir}: dcm2niix could not convert this folder "
                         f"(exit {proc.returncode}): {' | '.join(tail)}")
    return files


def _is_phase(sidecar: dict, path: Path) -> bool:
    it = [str(x).upper() for x in sidecar.get("ImageType", [])]
    if "P" in it or "PHASE" in it:
        return True
    if "M" in it or "MAGNITUDE" in it:
        return False
    return path.name.endswith("_ph.nii.gz")


def _phase_header_range(dicom_dir: Path):
    """(lo, hi) of representable phase values from one phase file's header, or None."""
    try:
        import pydicom
    except ImportError:
        return None
    for f in sorted(Path(dicom_dir).rglob("*")):
        if not (f.is_file() and _has_preamble(f)):
            continue
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception:
            continue
        it = [str(x).upper() for x in getattr(ds, "ImageType", [])]
        if "P" not in it and "PHASE" not in it:
            continue
        bits = int(getattr(ds, "BitsStored", 0) or 0)
        if not bits:
            return None
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        inter = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        return inter, inter + slope * 2 ** bits
    return None


def phase_to_radians(phase: np.ndarray, value_range=None) -> np.ndarray:
    """Scanner phase -> radians by the rule in the module docstring (``value_range`` = (lo, hi))."""
    lo, hi = float(phase.min()), float(phase.max())
    if max(abs(lo), abs(hi)) <= 3.2:
        return phase.astype(np.float32)
    if value_range is not None and value_range[0] <= lo and hi <= value_range[1]:
        a, b = value_range
        return ((phase - a) / (b - a) * 2 * np.pi - np.pi).astype(np.float32)
    span = hi - lo
    full = 2.0 ** np.ceil(np.log2(max(span, 1.0)))
    base = lo if lo >= 0 else -full / 2
    return ((phase - base) / full * 2 * np.pi - np.pi).astype(np.float32)


def load_dicom_echoes(dicom_dir, kind: str = "auto") -> dict:
    """Load a multi-echo series from a DICOM folder.

    Parameters
    ----------
    dicom_dir : folder with the DICOM files of one acquisition (magnitude and/or phase).
    kind : ``"magnitude"``, ``"phase"`` or ``"auto"`` (magnitude if the folder has both).

    Returns
    -------
    dict with ``data`` (X, Y, Z, E) float32 (phase in rad), ``affine`` (4x4 RAS), ``te_s`` (list,
    seconds, increasing), ``b0_t``, ``imaging_frequency_mhz``, ``is_phase``, ``sidecars``.
    """
    d = Path(dicom_dir)
    if not d.is_dir():
        raise InputError(f"{d}: not a folder (give the folder that holds the DICOM files)")
    if not is_dicom_dir(d):
        raise InputError(f"{d}: no DICOM files found (files need the DICM preamble)")
    if kind not in ("auto", "magnitude", "phase"):
        raise ValueError("kind must be auto, magnitude or phase")
    with tempfile.TemporaryDirectory(prefix="chisep_dcm_") as tmp:
        files = convert(d, tmp)
        items = []
        for f in files:
            side_path = Path(str(f)[: -len(".nii.gz")] + ".json")
            side = json.loads(side_path.read_text()) if side_path.exists() else {}
            data, aff = load_nifti(f)
            if data.ndim == 3:
                data = data[..., None]
            items.append((side, data, aff, _is_phase(side, f), f))
    have_phase = any(it[3] for it in items)
    have_mag = any(not it[3] for it in items)
    want_phase = kind == "phase" or (kind == "auto" and have_phase and not have_mag)
    sel = [it for it in items if it[3] == want_phase]
    if not sel:
        raise InputError(f"{d}: no {'phase' if want_phase else 'magnitude'} images in this folder")
    vols, tes = [], []
    for side, data, aff, _, f in sel:
        te = side.get("EchoTime")
        if te is None:
            raise InputError(f"{d}: {f.name} has no EchoTime; give the echo times with --te")
        for e in range(data.shape[3]):
            vols.append((float(te), data[..., e], aff, side))
            tes.append(float(te))
    vols.sort(key=lambda v: v[0])
    ref_shape, ref_aff = vols[0][1].shape, vols[0][2]
    for te, v, aff, _ in vols:
        if v.shape != ref_shape or not np.allclose(aff, ref_aff, atol=1e-3):
            raise InputError(f"{d}: echoes on different grids ({v.shape} vs {ref_shape}); "
                             f"one folder must hold one acquisition")
    data = np.stack([v[1] for v in vols], axis=-1).astype(np.float32)
    if want_phase:
        data = phase_to_radians(data, _phase_header_range(d))
    side0 = vols[0][3]
    return {"data": data, "affine": ref_aff, "te_s": [v[0] for v in vols],
            "b0_t": side0.get("MagneticFieldStrength"),
            "imaging_frequency_mhz": side0.get("ImagingFrequency"),
            "is_phase": bool(want_phase), "sidecars": [v[3] for v in vols]}
