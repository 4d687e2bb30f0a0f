"""Brain mask from the combined multi-echo magnitude."""
from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

from .. import physics


def _ball(radius_mm, voxel_size):
    vs = np.asarray(voxel_size, float)
    r = np.maximum(np.round(radius_mm / vs).astype(int), 0)
    g = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    return sum((gi * d / max(radius_mm, 1e-6)) ** 2 for gi, d in zip(g, vs)) <= 1.0


def largest_component(mask) -> np.ndarray:
    """The largest 6-connected component of a binary mask (bool; the mask itself if it has at most one)."""
    m = np.asarray(mask, bool)
    lab, n = ndi.label(m)
    if n <= 1:
        return m
    return lab == (1 + int(np.argmax(np.bincount(lab.ravel())[1:])))


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample."""
    hist, edges = np.histogram(values, bins=bins)
    centers = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[np.argmax(between)])


def brain_mask(magnitude: np.ndarray, voxel_size=(1.0, 1.0, 1.0), erode_mm: float = 4.0,
               threshold: float | None = None) -> np.ndarray:
    """Brain mask from a combined magnitude sqrt(sum_e |m_e|^2).

    Threshold (15 % of the 99th percentile, or ``threshold``), open the mask with a ball of ``erode_mm``
    so that the scalp detaches from the brain across the dark skull, keep the largest component,
    dilate back, and fill holes.

    Parameters
    ----------
    magnitude : (X, Y, Z) combined magnitude.
    voxel_size : mm.

    Returns
    -------
    mask : (X, Y, Z) uint8.
    """
    m = np.asarray(magnitude, dtype=np.float32)
    if threshold is None:
        # a fraction of the robust maximum: well above noise and the dark skull, below any tissue
        sample = m[m > 0]
        if sample.size == 0:
            return np.zeros(m.shape, np.uint8)
        threshold = 0.15 * float(np.percentile(sample, 99))
    mask = m > threshold
    ball = _ball(erode_mm, voxel_size)
    core = ndi.binary_erosion(mask, ball)
    if not core.any():
        return mask.astype(np.uint8)
    core = largest_component(core)
    out = ndi.binary_dilation(core, ball) & mask
    out = ndi.binary_fill_holes(out)
    return out.astype(np.uint8)


def erode(mask: np.ndarray, radius_mm: float, voxel_size=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Erode a mask by a ball of ``radius_mm`` (anisotropic voxels respected)."""
    if radius_mm <= 0:
        return mask.astype(bool)
    return ndi.binary_erosion(mask.astype(bool), _ball(radius_mm, voxel_size))


def reliable_mask(mask, reliable) -> np.ndarray:
    """The part of ``mask`` where ``reliable`` holds, as one piece: the largest 6-connected component
    of ``mask & reliable`` with its holes filled (unreliable voxels inside the brain, e.g. in veins,
    stay; those on the surface, e.g. next to the sinuses, go). Returns uint8."""
    m = (np.asarray(mask) > 0) & np.asarray(reliable, bool)
    out = np.zeros(m.shape, np.uint8)
    sl = _bbox(m, 1)
    if sl is not None:  # labelling and hole filling in the bounding box (+1 voxel): the same result
        out[sl] = ndi.binary_fill_holes(largest_component(m[sl]))
    return out


def _bbox(m, margin):
    """Slices of ``m``'s bounding box grown by ``margin`` voxels (clipped), or None when ``m`` is empty."""
    idx = [np.flatnonzero(np.any(m, axis=tuple(b for b in range(m.ndim) if b != a))) for a in range(m.ndim)]
    if any(i.size == 0 for i in idx):
        return None
    return tuple(slice(max(int(i[0]) - margin, 0), min(int(i[-1]) + margin + 1, n)) for i, n in zip(idx, m.shape))


def partial_volume_surface(mask, magnitude, ratio: float = 0.9) -> np.ndarray:
    """Surface voxels of ``mask`` that the brain only partly fills (thick slices, the skull base).

    A surface voxel (not 18-connected-interior) is flagged when its magnitude is below ``ratio``
    times the brightest interior voxel in its 3x3x3 neighbourhood. Such a voxel's field is the
    signal-weighted mean over its brain part, not the field at its centre, and a background removal
    that takes the field on the mask's surface as boundary data (LBV) carries that offset into the
    whole brain. A half-filled voxel is markedly darker than its full neighbours while a full one is
    about as bright, so a ratio just below 1 separates them; 0.9 is the value with the lower
    LBV-QSM error on the simulated tuning heads (docs/METHODS.md, "Background field removal").

    Parameters
    ----------
    mask : (X, Y, Z) brain mask. magnitude : (X, Y, Z) combined magnitude.
    ratio : flag below this fraction of the neighbourhood's brightest interior magnitude.

    Returns
    -------
    (X, Y, Z) bool.
    """
    m = np.asarray(mask) > 0
    out = np.zeros(m.shape, bool)
    sl = _bbox(m, 2)  # erosion and 3x3x3 filter need one voxel beyond the mask; computed in its box
    if sl is None:
        return out
    mb = m[sl]
    inner = ndi.binary_erosion(mb, ndi.generate_binary_structure(3, 2))
    mag = np.asarray(magnitude, np.float32)[sl]
    ref = ndi.maximum_filter(np.where(inner, mag, 0), size=3)
    out[sl] = mb & ~inner & (ref > 0) & (mag < float(ratio) * ref)
    return out


def lbv_boundary_mask(mask, magnitude, ratio: float = 0.9) -> np.ndarray:
    """``mask`` without its partial-volume surface voxels (:func:`partial_volume_surface`), as one
    piece (:func:`reliable_mask`): the mask whose shell LBV and LBV-QSM take boundary values on. uint8."""
    return reliable_mask(mask, ~partial_volume_surface(mask, magnitude, ratio))


def dice(a, b) -> float:
    """Dice overlap of two binary masks."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


__all__ = ["brain_mask", "erode", "dice", "largest_component", "otsu_threshold", "lbv_boundary_mask", "partial_volume_surface", "reliable_mask", "physics"]
