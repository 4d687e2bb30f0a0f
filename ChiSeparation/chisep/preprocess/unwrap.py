"""Phase unwrapping: Laplacian (FFT) and quality-guided region growing; temporal unwrapping of echoes.

Multi-echo strategy (:func:`unwrap_echoes`): the phase difference of the first two echoes
(angle(S2 conj S1), small wraps) is unwrapped spatially and made congruent with the measured
difference; it gives a first field estimate f0 and the phase offset phi0 = angle(S1 exp(-i 2 pi f0
TE1)). phi0 is then smoothed (complex Gaussian filter of |S1| exp(i phi0), ``phi0_smooth_mm``): the
offset is a smooth coil/transmit phase, while the per-voxel estimate carries the noise of echoes 1-2,
which would otherwise enter every echo (smoothing brings the field noise close to what the true
phi0 gives). Every echo is then unwrapped against its
prediction phi0 + 2 pi f0 TE_e, which keeps absolute phase and removes phi0 (the odd/even echo offsets of bipolar readouts are removed the same way when
``bipolar=True``: the prediction of even echoes carries its own offset).
"""
from __future__ import annotations

import numpy as np
import scipy.fft as sfft
import scipy.ndimage as ndi

from .. import physics
from ..io import InputError
from ..options import UNWRAP_METHODS


def _laplacian_eigen(shape, voxel_size):
    """Eigenvalues of the periodic discrete Laplacian on ``shape`` (1/mm^2)."""
    vs = np.broadcast_to(np.asarray(voxel_size, float), (3,))
    lam = 0.0
    for ax, (n, d) in enumerate(zip(shape, vs)):
        k = np.arange(n)
        v = (2 * np.cos(2 * np.pi * k / n) - 2) / d ** 2
        sh = [1, 1, 1]
        sh[ax] = n
        lam = lam + v.reshape(sh)
    return lam


def _lap(x, eig):
    return sfft.ifftn(sfft.fftn(x, workers=-1) * eig, workers=-1).real


def _laplacian_once(p, voxel_size, pad):
    q = np.pad(np.asarray(p, np.float64), pad, mode="reflect")
    eig = _laplacian_eigen(q.shape, voxel_size)
    c, s = np.cos(q), np.sin(q)
    lap = c * _lap(s, eig) - s * _lap(c, eig)
    eig_inv = np.where(eig == 0, 0.0, 1.0 / np.where(eig == 0, 1.0, eig))
    out = sfft.ifftn(sfft.fftn(lap, workers=-1) * eig_inv, workers=-1).real
    sl = tuple(slice(pad, pad + n) for n in p.shape)
    return out[sl]


def unwrap_laplacian(phase: np.ndarray, voxel_size=(1.0, 1.0, 1.0), pad: int = 8, n_iter: int = 2) -> np.ndarray:
    """Laplacian phase unwrapping (FFT): phi = L^-1[cos(p) L sin(p) - sin(p) L cos(p)].

    ``L`` is the discrete Laplacian with the voxel spacing (mm) of each axis. The plain method
    underestimates steep phase (strong background fields), so the wrapped residual
    ``angle(exp(i (p - phi)))`` is unwrapped again and added, ``n_iter`` times, which removes most
    of the voxels left off by a whole cycle.
    The result is smooth and not congruent with ``phase`` (a property of the method); use
    :func:`make_congruent` to snap it to ``phase + 2 pi k``.

    Parameters
    ----------
    phase : (X, Y, Z) wrapped phase (rad).
    voxel_size : (3,) mm.

    Returns
    -------
    (X, Y, Z) float32 unwrapped (smooth) phase, rad.
    """
    p = np.asarray(phase, np.float64)
    out = _laplacian_once(p, voxel_size, pad)
    for _ in range(int(n_iter)):
        out = out + _laplacian_once(np.angle(np.exp(1j * (p - out))), voxel_size, pad)
    return out.astype(np.float32)


def fix_isolated_jumps(unwrapped: np.ndarray, mask, n_iter: int = 2) -> np.ndarray:
    """Remove residual 2 pi jumps of small regions: snap each voxel to the 2 pi k closest to the
    median of its 3x3x3 neighbourhood (computed in the mask's bounding box)."""
    m = np.asarray(mask) > 0
    if not m.any():
        return unwrapped
    idx = np.argwhere(m)
    sl = tuple(slice(a, b + 1) for a, b in zip(idx.min(0), idx.max(0)))
    u = np.array(unwrapped[sl], np.float32)
    mb = m[sl]
    for _ in range(int(n_iter)):
        med = ndi.median_filter(u, size=3, mode="nearest")
        k = np.round((med - u) / (2 * np.pi)) * mb
        if not k.any():
            break
        u = u + (2 * np.pi) * k
    out = np.array(unwrapped, np.float32)
    out[sl] = np.where(mb, u, out[sl])
    return out


def make_congruent(smooth: np.ndarray, wrapped: np.ndarray, mask=None) -> np.ndarray:
    """wrapped + 2 pi k closest to ``smooth`` after removing their mean offset (in ``mask``)."""
    d = np.angle(np.exp(1j * (smooth - wrapped)))
    sel = d if mask is None else d[mask > 0]
    off = float(np.angle(np.mean(np.exp(1j * sel)))) if sel.size else 0.0
    s = smooth - off
    return (wrapped + 2 * np.pi * np.round((s - wrapped) / (2 * np.pi))).astype(np.float32)


def unwrap_region_growing(phase: np.ndarray, mask=None, magnitude=None) -> np.ndarray:
    """Quality-guided region-growing unwrapping (reliability-sorted edge merging, congruent).

    Unwraps along edges of highest reliability first (phase second differences), so that noisy
    regions are reached last; it keeps absolute phase up to one global 2 pi k. Implemented with
    scikit-image's 3-D reliability-sorting unwrapper; voxels outside ``mask`` are excluded.
    """
    from skimage.restoration import unwrap_phase

    p = np.asarray(phase, np.float64)
    if mask is not None:
        p = np.ma.masked_array(p, mask=~(np.asarray(mask) > 0))
    out = unwrap_phase(p)
    out = np.ma.filled(out, 0.0) if np.ma.isMaskedArray(out) else out
    return out.astype(np.float32)


def smooth_phase(phase, weight, voxel_size=(1.0, 1.0, 1.0), sigma_mm: float = 1.0) -> np.ndarray:
    """Magnitude-weighted Gaussian smoothing of a wrapped phase map (rad): angle(G * (w e^{i phase})).

    ``sigma_mm`` is converted to voxels per axis (anisotropic voxels). Where the smoothed complex
    value vanishes the input phase is kept.
    """
    vs = np.broadcast_to(np.asarray(voxel_size, float), (3,))
    sig = float(sigma_mm) / vs
    w = np.asarray(weight, np.float32)
    re = ndi.gaussian_filter(w * np.cos(phase), sig, mode="nearest")
    im = ndi.gaussian_filter(w * np.sin(phase), sig, mode="nearest")
    return np.where(re ** 2 + im ** 2 > 0, np.arctan2(im, re), phase).astype(np.float32)


def _wrap(x):
    """x wrapped to [-pi, pi] with real arithmetic (angle(exp(i x)) up to rounding, several times faster)."""
    return x - (2 * np.pi) * np.round(x / (2 * np.pi))


def unwrap_echoes(mag, phase, te_s, mask, voxel_size=(1.0, 1.0, 1.0), method: str = "region-growing",
                  bipolar: bool = False, phi0_smooth_mm: float = 1.0, progress=None):
    """Unwrap every echo with phase-offset removal (see module docstring).

    Parameters
    ----------
    mag, phase : (X, Y, Z, E) magnitude and wrapped phase (rad).
    te_s : (E,) echo times (s). mask : (X, Y, Z) brain mask. voxel_size : (3,) mm.
    method : "laplacian" or "region-growing" (spatial unwrapping of the echo 1-2 difference).
    bipolar : remove an extra odd/even echo offset (bipolar readouts).
    phi0_smooth_mm : Gaussian sigma (mm) of the phase-offset smoothing; 0 = no smoothing.

    Returns ``(unwrapped (X,Y,Z,E) rad without phi0, phi0 (X,Y,Z) rad)``.
    """
    te = np.asarray(te_s, float)
    m = mask > 0
    if len(te) < 2:
        raise ValueError("temporal unwrapping needs at least two echoes")
    s0 = mag[..., 0] * np.exp(1j * phase[..., 0])   # only two echoes are needed as complex
    # bipolar readouts: odd and even echoes carry different offsets, so the first frequency estimate
    # comes from two echoes of the same polarity (1 and 3)
    e1 = 2 if (bipolar and len(te) >= 3) else 1
    d01 = np.angle(mag[..., e1] * np.exp(1j * phase[..., e1]) * np.conj(s0))
    if method == "laplacian":
        # unmasked: zeroing outside the mask would add artificial wraps at its border
        d_unw = make_congruent(unwrap_laplacian(d01, voxel_size), d01, m) * m
    elif method == "region-growing":
        d_unw = unwrap_region_growing(d01 * m, m)
    else:
        raise InputError(f"unknown unwrapping method {method!r}; use one of {', '.join(UNWRAP_METHODS)}")
    if method == "laplacian":
        d_unw = fix_isolated_jumps(d_unw, m)
    # remove the global 2 pi k ambiguity: the field averaged over the brain is small
    k = np.round(np.median(d_unw[m]) / (2 * np.pi)) if m.any() else 0
    d_unw = d_unw - 2 * np.pi * k
    omega = d_unw / (te[e1] - te[0])                  # rad/s
    phi0 = np.angle(s0 * np.exp(-1j * omega * te[0]))
    if phi0_smooth_mm and phi0_smooth_mm > 0:
        phi0 = smooth_phase(phi0, np.abs(s0) * m, voxel_size, phi0_smooth_mm)
    del s0
    out = np.empty(phase.shape, np.float32)
    for e in range(len(te)):
        pred = phi0 + omega * te[e]
        out[..., e] = (pred + _wrap(phase[..., e] - pred) - phi0) * m
        if progress:
            progress((e + 1) / len(te), f"unwrapping echo {e + 1}/{len(te)}")
    if bipolar and len(te) >= 3:
        # even echoes carry an extra offset with bipolar readouts: estimate it against the odd-echo fit
        odd = out[..., 0::2]
        slope = np.sum(odd * te[0::2], -1) / np.sum(te[0::2] ** 2)
        for e in range(1, len(te), 2):
            off = np.angle(np.exp(1j * (out[..., e] - slope * te[e])))
            out[..., e] -= off * m
    return out, phi0.astype(np.float32)


__all__ = ["unwrap_laplacian", "unwrap_region_growing", "make_congruent", "fix_isolated_jumps", "smooth_phase", "unwrap_echoes", "physics"]
