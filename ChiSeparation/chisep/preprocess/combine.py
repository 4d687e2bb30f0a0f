"""Echo combination: the total field (Hz) from unwrapped multi-echo phase, and its reliability."""
from __future__ import annotations

import numpy as np


def _echo_weights(mag, te):
    """Inverse-variance weights (TE_e m_e)^2 of the per-echo fields (see :func:`combine_echoes`)."""
    return (np.asarray(mag, np.float64) * te) ** 2


def combine_echoes(unwrapped, mag, te_s, mask, phase_sign: int = 1):
    """Weighted least-squares field from unwrapped phases (phi0 removed).

    Each echo gives f_e = phi_e / (2 pi TE_e); they are averaged with inverse-variance weights
    (TE_e m_e)^2, i.e. the squared SNR weights W_e = TE_e exp(-TE_e / T2*) of DESIGN.md section 3
    (m_e = M0 exp(-TE_e / T2*) is the measured magnitude, so no T2* fit is needed).

    Returns
    -------
    field_hz : (X, Y, Z) float32, Hz, signed so that positive = higher frequency
        (divided by ``phase_sign``).
    weight : (X, Y, Z) float32 in [0, 1], proportional to the inverse standard deviation of the
        field noise (sqrt(sum_e (TE_e m_e)^2)), scaled by its 99th percentile in the mask.
    """
    te = np.asarray(te_s, float)
    w = _echo_weights(mag, te)
    num = np.sum(w * unwrapped / (2 * np.pi * te), axis=-1)
    den = np.sum(w, axis=-1)
    m = mask > 0
    field = np.where(m & (den > 0), num / np.where(den > 0, den, 1.0), 0.0) * float(phase_sign)
    rel = np.sqrt(den)
    scale = np.percentile(rel[m], 99) if m.any() else 1.0
    weight = np.clip(rel / max(scale, 1e-12), 0, 1) * m
    return field.astype(np.float32), weight.astype(np.float32)


def echo_fit_residual(unwrapped, mag, te_s, field_hz, phase_sign: int = 1):
    """Weighted RMS (Hz) of the per-echo fields ``phi_e / (2 pi TE_e)`` about the combined field.

    Small (noise, ~0.1-0.3 Hz at SNR 100) where the phase grows linearly with TE; large where it
    does not: strong intra-voxel dephasing (thick slices next to the sinuses), flow, or residual
    unwrapping errors. Weights as in :func:`combine_echoes`.

    Parameters
    ----------
    unwrapped : (X, Y, Z, E) unwrapped phases (rad, phi0 removed). mag : (X, Y, Z, E) magnitudes.
    te_s : (E,) echo times (s). field_hz : (X, Y, Z) the combined field from :func:`combine_echoes`.

    Returns
    -------
    (X, Y, Z) float32, Hz (0 where all weights vanish).
    """
    te = np.asarray(te_s, float)
    w = _echo_weights(mag, te)
    fe = np.asarray(unwrapped, np.float64) / (2 * np.pi * te) * float(phase_sign)
    den = np.sum(w, axis=-1)
    ss = np.sum(w * (fe - np.asarray(field_hz, np.float64)[..., None]) ** 2, axis=-1)
    return np.sqrt(np.where(den > 0, ss / np.where(den > 0, den, 1.0), 0.0)).astype(np.float32)
