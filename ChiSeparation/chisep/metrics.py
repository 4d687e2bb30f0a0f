"""Image-quality metrics of susceptibility maps against a known truth (docs/DESIGN.md, "Evaluation").

The one implementation used by ``chisep demo``, the training loop's whole-volume validation and the
benchmarks, so that their numbers compare.

All metrics are computed over an evaluation mask (brain minus CSF minus vessels, see
:func:`evaluation_mask`). Maps are 3-D arrays in ppm, array order ``(i, j, k)``.

- NRMSE = 100 * ||p - t|| / ||t||  (%), norms over the mask.
- PSNR  = 20 * log10(peak / RMSE)   (dB), ``peak`` = 1 ppm as in the chi-sepnet paper.
- SSIM  on both maps rescaled *jointly* to 0..255 (same linear map for both, from the common
  min/max inside the mask), uniform 7^3 window, constants K1 = 0.01, K2 = 0.03, the SSIM map
  averaged over the mask.
- HFEN  = NRMSE of the Laplacian-of-Gaussian filtered maps (sigma 1.5 voxels).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from .io import InputError


def _check(pred, truth, mask):
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if p.shape != t.shape:
        raise InputError(f"prediction shape {p.shape} differs from truth shape {t.shape}")
    if mask is None:
        m = np.ones(p.shape, bool)
    else:
        m = np.asarray(mask) > 0
        if m.shape != p.shape:
            raise InputError(f"mask shape {m.shape} differs from map shape {p.shape}")
    if not m.any():
        raise InputError("evaluation mask is empty")
    if not (np.all(np.isfinite(p[m])) and np.all(np.isfinite(t[m]))):
        raise InputError("maps contain NaN/inf inside the evaluation mask")
    return p, t, m


def evaluation_mask(mask, mask_csf=None, mask_vessels=None) -> np.ndarray:
    """Brain mask minus CSF minus vessels.

    Parameters
    ----------
    mask : (X, Y, Z) array, brain mask (non-zero = brain).
    mask_csf, mask_vessels : optional (X, Y, Z) arrays, non-zero voxels are removed.

    Returns
    -------
    (X, Y, Z) bool array.
    """
    ev = np.asarray(mask) > 0
    for name, extra in (("mask_csf", mask_csf), ("mask_vessels", mask_vessels)):
        if extra is None:
            continue
        extra = np.asarray(extra)
        if extra.shape != ev.shape:
            raise InputError(f"{name} shape {extra.shape} differs from mask shape {ev.shape}")
        ev &= ~(extra > 0)
    return ev


def nrmse(pred, truth, mask=None, demean: bool = False) -> float:
    """Normalised root-mean-square error, 100 * ||p - t|| / ||t|| over the mask (%).

    ``demean``: subtract each map's own mean over the mask first. For local fields and QSM, whose
    mean the data do not determine (the dipole kernel is 0 or a convention at k = 0), so that an
    offset is not counted as error.

    Returns ``inf`` if the truth is zero everywhere in the mask but the prediction is not,
    ``0`` if both are.
    """
    p, t, m = _check(pred, truth, mask)
    p, t = p[m], t[m]
    if demean:
        p, t = p - p.mean(), t - t.mean()
    num = float(np.linalg.norm(p - t))
    den = float(np.linalg.norm(t))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return 100.0 * num / den


def psnr(pred, truth, mask=None, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio 20 * log10(peak / RMSE) in dB; ``peak`` in ppm (default 1 ppm).

    ``inf`` for identical maps.
    """
    p, t, m = _check(pred, truth, mask)
    rmse = float(np.sqrt(np.mean((p[m] - t[m]) ** 2)))
    if rmse == 0.0:
        return math.inf
    return 20.0 * math.log10(float(peak) / rmse)


def ssim_map(pred, truth, mask=None, win: int = 7, k1: float = 0.01, k2: float = 0.03,
             data_range: float = 255.0) -> np.ndarray:
    """Local SSIM map (X, Y, Z) of the jointly rescaled maps (uniform ``win``^3 window).

    Both maps are set to 0 outside the mask, then mapped linearly by the same function onto
    ``0..data_range`` (common min/max inside the mask). Local means, variances and covariance are
    population moments over the window (``scipy.ndimage.uniform_filter``, reflected borders).
    """
    p, t, m = _check(pred, truth, mask)
    p = np.where(m, p, 0.0)
    t = np.where(m, t, 0.0)
    lo = min(p[m].min(), t[m].min())
    hi = max(p[m].max(), t[m].max())
    if hi > lo:
        p = (p - lo) * (data_range / (hi - lo))
        t = (t - lo) * (data_range / (hi - lo))
    else:
        p = np.zeros_like(p)
        t = np.zeros_like(t)
    f = lambda a: ndi.uniform_filter(a, size=win, mode="reflect")  # noqa: E731
    mp, mt = f(p), f(t)
    vp = f(p * p) - mp * mp
    vt = f(t * t) - mt * mt
    cpt = f(p * t) - mp * mt
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    return ((2 * mp * mt + c1) * (2 * cpt + c2)) / ((mp * mp + mt * mt + c1) * (vp + vt + c2))


def ssim3d(pred, truth, mask=None, win: int = 7, k1: float = 0.01, k2: float = 0.03) -> float:
    """Structural similarity (0..1, 1 = identical), the :func:`ssim_map` averaged in the mask."""
    s = ssim_map(pred, truth, mask, win=win, k1=k1, k2=k2)
    m = np.ones(s.shape, bool) if mask is None else np.asarray(mask) > 0
    return float(np.mean(s[m]))


def hfen(pred, truth, mask=None, sigma: float = 1.5) -> float:
    """High-frequency error norm (%): NRMSE of the LoG-filtered maps (``sigma`` in voxels).

    Maps are set to 0 outside the mask before filtering.
    """
    p, t, m = _check(pred, truth, mask)
    lp = ndi.gaussian_laplace(np.where(m, p, 0.0), sigma=sigma, mode="nearest")
    lt = ndi.gaussian_laplace(np.where(m, t, 0.0), sigma=sigma, mode="nearest")
    return nrmse(lp, lt, m)


def all_metrics(pred, truth, mask=None) -> dict:
    """``{"nrmse": %, "psnr": dB, "ssim": 0..1, "hfen": %}`` of ``pred`` against ``truth`` in ``mask``."""
    return {"nrmse": nrmse(pred, truth, mask), "psnr": psnr(pred, truth, mask),
            "ssim": ssim3d(pred, truth, mask), "hfen": hfen(pred, truth, mask)}
