"""Phase unwrapping: Laplacian (FFT) and quality-guided region growing; temporal unwrapping of echoes.

Multi-echo strategy (:func:`unwrap_echoes`): the phase difference of the first two echoes
(angle(S2 conj S1), small wraps) is unwrapped spatially and made congruent with the measured
difference; it gives a first field estimate f0 and the phase offset phi0 = angle(S1 exp(-i 2 pi f0
TE1)). Every echo is then unwrapped against its prediction phi0 + 2 pi f0 TE_e, which keeps absolute
phase and removes phi0 (the odd/even echo offsets of bipolar readouts are removed the same way when
``bipolar=True``: the prediction of even echoes carries its own offset).
"""
from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from .. import physics


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


def unwrap_laplacian(phase: np.ndarray, voxel_size=(1.0, 1.0, 1.0), pad: int = 8) -> np.ndarray:
    """Laplacian phase unwrapping (FFT): phi = L^-1[cos(p) L sin(p) - sin(p) L cos(p)].

    The result is smooth and not congruent with ``phase`` (a property of the method); use
    :func:`make_congruent` to snap it to ``phase + 2 pi k``. Shape (X, Y, Z), radians.
    """
    p = np.pad(np.asarray(phase, np.float64), pad, mode="reflect")
    eig = _laplacian_eigen(p.shape, voxel_size)
    c, s = np.cos(p), np.sin(p)
    lap = c * _lap(s, eig) - s * _lap(c, eig)
    eig_inv = np.where(eig == 0, 0.0, 1.0 / np.where(eig == 0, 1.0, eig))
    out = sfft.ifftn(sfft.fftn(lap, workers=-1) * eig_inv, workers=-1).real
    sl = tuple(slice(pad, pad + n) for n in phase.shape)
    return out[sl].astype(np.float32)


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


def unwrap_echoes(mag, phase, te_s, mask, voxel_size=(1.0, 1.0, 1.0), method: str = "region-growing",
                  bipolar: bool = False, progress=None):
    """Unwrap every echo with phase-offset removal (see module docstring).

    Returns ``(unwrapped (X,Y,Z,E) rad without phi0, phi0 (X,Y,Z) rad)``.
    """
    te = np.asarray(te_s, float)
    m = mask > 0
    s = mag * np.exp(1j * phase)
    if len(te) < 2:
        raise ValueError("temporal unwrapping needs at least two echoes")
    d01 = np.angle(s[..., 1] * np.conj(s[..., 0])) * m
    if method == "laplacian":
        d_unw = make_congruent(unwrap_laplacian(d01, voxel_size), d01, m)
    elif method in ("region-growing", "region_growing", "romeo"):
        d_unw = unwrap_region_growing(d01, m)
    else:
        raise ValueError(f"unknown unwrapping method {method!r}; use laplacian or region-growing")
    # remove the global 2 pi k ambiguity: the field averaged over the brain is small
    k = np.round(np.median(d_unw[m]) / (2 * np.pi)) if m.any() else 0
    d_unw = d_unw - 2 * np.pi * k
    omega = d_unw / (te[1] - te[0])                   # rad/s
    phi0 = np.angle(s[..., 0] * np.exp(-1j * omega * te[0]))
    out = np.empty(phase.shape, np.float32)
    for e in range(len(te)):
        pred = phi0 + omega * te[e]
        out[..., e] = (pred + np.angle(np.exp(1j * (phase[..., e] - pred))) - phi0) * m
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


__all__ = ["unwrap_laplacian", "unwrap_region_growing", "make_congruent", "unwrap_echoes", "physics"]
