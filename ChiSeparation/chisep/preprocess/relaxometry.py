"""Relaxometry: R2* (ARLO or log-linear fit) from GRE, R2 from multi-echo spin echo, R2'. All in Hz."""
from __future__ import annotations

import numpy as np

R_MAX = 500.0


def _equally_spaced(te, tol=1e-3):
    d = np.diff(te)
    return len(te) >= 3 and np.allclose(d, d[0], rtol=tol)


def _in_mask(fn, arrays, mask):
    """Apply a voxel-wise fit ``fn(*arrays) -> (...)`` to the voxels of ``mask`` only (zero elsewhere):
    the same arithmetic per voxel, a fraction of the work on a head (the brain is ~1/5 of the box)."""
    if mask is None:
        return fn(*arrays)
    m = np.asarray(mask) > 0
    out = np.zeros(m.shape, np.float32)
    if m.any():
        out[m] = fn(*[np.asarray(a)[m] for a in arrays])
    return out


def r2star_arlo(mag, te_s, mask=None):
    """R2* (Hz) by ARLO (auto-regression on linear operations) for >= 3 equally spaced echoes.

    With Simpson's integrals S_i = dTE (s_i + 4 s_{i+1} + s_{i+2}) / 3 and differences
    d_i = s_i - s_{i+2}, a mono-exponential decay satisfies d_i = R2* S_i; R2* is the least-squares
    slope sum(S_i d_i) / sum(S_i^2). Closed form, no iterations.
    """
    te = np.asarray(te_s, float)
    if not _equally_spaced(te):
        raise ValueError("ARLO needs at least 3 equally spaced echoes; use r2star_fit")
    return _in_mask(lambda s: _arlo(s, te), (mag,), mask)


def _arlo(mag, te):
    dt = te[1] - te[0]
    s = np.asarray(mag, np.float64)
    S = dt * (s[..., :-2] + 4 * s[..., 1:-1] + s[..., 2:]) / 3
    d = s[..., :-2] - s[..., 2:]
    num = np.sum(S * d, -1)
    den = np.sum(S * S, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2s = np.where(den > 0, num / den, 0.0)
    r2s = np.clip(np.nan_to_num(r2s), 0, R_MAX)
    return r2s.astype(np.float32)


def r2star_fit(mag, te_s, mask=None):
    """R2* (Hz) by a log-linear least-squares fit weighted by the squared signal (any echo times)."""
    return _loglinear(mag, te_s, mask)


def _loglinear(mag, te_s, mask=None):
    te = np.asarray(te_s, float)
    return _in_mask(lambda s: _loglinear_fit(s, te), (mag,), mask)


def _loglinear_fit(mag, te):
    s = np.maximum(np.asarray(mag, np.float64), 1e-12)
    w = s ** 2
    y = np.log(s)
    sw = w.sum(-1)
    st = (w * te).sum(-1)
    stt = (w * te * te).sum(-1)
    sy = (w * y).sum(-1)
    sty = (w * te * y).sum(-1)
    det = sw * stt - st ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(det > 0, (sw * sty - st * sy) / det, 0.0)
    r = np.clip(np.nan_to_num(-slope), 0, R_MAX)
    return r.astype(np.float32)


def r2_from_se(se_mag, se_te_s, mask=None):
    """R2 (Hz) from multi-echo spin-echo magnitudes by a mono-exponential (weighted log-linear) fit.

    Note: in multi-echo spin-echo trains, stimulated echoes from imperfect refocusing add signal to
    later echoes, so a mono-exponential fit biases R2 low (and R2' = R2* - R2 high); dropping the
    first echo or an EPG fit reduces the bias. The simulated heads have ideal refocusing.
    """
    return _loglinear(se_mag, se_te_s, mask)


def r2star(mag, te_s, mask=None):
    """R2* by ARLO when the echoes are equally spaced (>= 3), else by the log-linear fit."""
    return r2star_arlo(mag, te_s, mask) if _equally_spaced(np.asarray(te_s, float)) else r2star_fit(mag, te_s, mask)
