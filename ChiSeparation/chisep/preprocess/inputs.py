"""Loading multi-echo acquisitions: thin wrappers of :mod:`chisep.acquisition` (the one loader).

Kept for callers of the older dict API; new code calls :func:`chisep.acquisition.load_acquisition`.
"""
from __future__ import annotations

import numpy as np

from ..io import InputError


def load_echoes(paths, te_s=None, what: str = "echoes") -> dict:
    """Load a multi-echo series (4-D NIfTI, list of 3-D NIfTI, or DICOM folder) with its echo times.

    Returns dict: ``data`` (X, Y, Z, E) float32, ``te_s`` (list of E floats, increasing),
    ``affine``, ``sidecar`` (the first file's sidecar), ``paths``.
    """
    from ..acquisition import _echo_times, _read_series

    s = _read_series(paths, what, what, kind="magnitude")
    tes, _ = _echo_times(s, te_s, what, "--te" if "GRE" in what else "--se-te")
    return {"data": s.data, "te_s": tes, "affine": s.affine, "sidecar": s.sidecars[0] if s.sidecars else {},
            "paths": s.files}


def phase_to_radians(phase: np.ndarray, path="phase", unit: str = "auto") -> np.ndarray:
    """Phase in radians wrapped to [-pi, pi) by the rule of :func:`chisep.acquisition.decide_phase_unit`."""
    from ..acquisition import phase_to_radians as _to_rad
    return _to_rad(phase, str(path), unit)[0]


def load_gre(mag, phase, te_s=None, b0_t=None, phase_unit: str = "auto") -> dict:
    """Load multi-echo GRE magnitude and phase (dict form of :func:`chisep.acquisition.load_acquisition`).

    Returns dict: ``mag``, ``phase`` (X, Y, Z, E; phase in rad), ``te_s``, ``b0_t``, ``affine``,
    ``b0_dir``, ``phase_sign``, ``warnings``, ``acquisition`` (the checked object).
    """
    from ..acquisition import load_acquisition

    a = load_acquisition(mag, phase, te_s=te_s, b0_t=b0_t, phase_unit=phase_unit)
    return {"mag": a.mag, "phase": a.phase, "te_s": a.te_s, "b0_t": a.b0_t, "affine": a.affine,
            "b0_dir": a.b0_dir, "phase_sign": a.phase_sign, "warnings": a.warnings, "acquisition": a}


__all__ = ["load_echoes", "load_gre", "phase_to_radians", "InputError"]
