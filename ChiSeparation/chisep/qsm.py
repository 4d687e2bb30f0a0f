"""Plain QSM (chi_total, ppm) from a local field (ppm): closed form and iterative.

``qsm_closed_form``
    L2 gradient-regularized dipole inversion solved exactly in k-space:

        chi = argmin ||M f - D * chi||^2 + lam ||grad chi||^2
        chi_hat = D F{M f} / (D^2 + lam |G|^2),   then masked,

    with |G(k)|^2 = sum_i 4 sin^2(pi n_i / N_i) / dx_i^2 the eigenvalues of the forward-difference
    Laplacian (1/mm^2). The k = 0 term (and D = 0 with |G| = 0) is set to 0. Deterministic (no
    random numbers, no iteration) and fast: one forward and one inverse real FFT on the padded
    bounding box of the mask. This is the QSM channel chi-sepnet sees at training and at inference.

``qsm_iterative``
    Weighted L1-TV dipole inversion with the chi support restricted to the mask, by ADMM
    (variable splitting u = D*chi for the weighted field fidelity, g = grad chi for the TV,
    s = chi for the support; the chi-update is exact in k-space):

        chi = argmin ||W (f - D * chi)||^2_mask + lam * sum_v w_edge(v) |grad chi(v)|,
        chi = 0 outside the mask,

    w_edge from the magnitude's gradients (edges get ``edge_weight``, MEDI-style), W the field
    reliability weight (normalised to mean 1 in the mask).

Both work on anisotropic voxels (k_i = n_i / (N_i dx_i), finite differences divided by dx_i) and
on any B0 direction in the array frame (:func:`chisep.physics.dipole_kernel`). Each crops to the
mask's bounding box (plus a margin) and zero-pads by ``pad_factor`` (>= 1.5) so the periodic FFT
does not wrap dipole fields from one side to the other.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import scipy.fft as sfft

from . import physics
from .io import InputError

ProgressFn = Optional[Callable[[float, str], None]]

#: The stop criterion is checked from this iteration on (the first steps only project the start).
MIN_ITER = 5

#: Default regularization of the closed-form QSM (gradient L2 weight, mm^2). The error changes little
#: over a wide range of lam; 0.02 sits in that flat range with margin for noisy fields. Keep it
#: stable: chi-sepnet's QSM channel (and so the trained weights) depends on it.
LAM_CLOSED_FORM = 0.02
#: Default TV weight of the iterative QSM (ppm/mm units of the field fidelity, see module doc).
LAM_ITERATIVE = 1e-3


# --------------------------------------------------------------------------- validation
def check_field_inputs(local_field_ppm, mask, voxel_size, b0_dir, name="local_field_ppm"):
    """Validate (field, mask, voxel size, B0 direction); return float32 field, bool mask, vs, b.

    Raises :class:`InputError` for shape mismatches, non-finite values, empty masks, bad voxel
    sizes or a zero B0 direction.
    """
    f = np.asarray(local_field_ppm)
    if f.ndim != 3:
        raise InputError(f"{name} must be a 3-D volume, got shape {f.shape}")
    m = np.asarray(mask)
    if m.shape != f.shape:
        raise InputError(f"mask shape {m.shape} does not match {name} shape {f.shape}")
    m = m > 0
    if not m.any():
        raise InputError("mask is empty: give a brain mask with at least one voxel")
    f = f.astype(np.float32, copy=False)
    if not np.all(np.isfinite(f[m])):
        raise InputError(f"{name} has NaN/inf inside the mask")
    vs = np.asarray(voxel_size, dtype=float).reshape(-1)
    if vs.size == 1:
        vs = np.repeat(vs, 3)
    if vs.size != 3 or not np.all(np.isfinite(vs)) or np.any(vs <= 0):
        raise InputError(f"voxel_size must be three positive sizes in mm, got {voxel_size!r}")
    b = np.asarray(b0_dir if b0_dir is not None else (0, 0, 1), dtype=float).reshape(-1)
    if b.size != 3 or not np.all(np.isfinite(b)) or np.linalg.norm(b) == 0:
        raise InputError(f"b0_dir must be a non-zero 3-vector, got {b0_dir!r}")
    return f, m, vs, b / np.linalg.norm(b)


def check_map(arr, shape, name, allow_none=True):
    """A float32 3-D map of ``shape`` (or None); InputError otherwise."""
    if arr is None:
        if allow_none:
            return None
        raise InputError(f"{name} is required")
    a = np.asarray(arr)
    if a.shape != tuple(shape):
        raise InputError(f"{name} shape {a.shape} does not match the field shape {tuple(shape)}")
    a = a.astype(np.float32, copy=False)
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name} contains NaN/inf; replace them (e.g. by 0 outside the brain)")
    return a


# --------------------------------------------------------------------------- grid helpers
def bounding_box(mask: np.ndarray, margin: int = 3):
    """Slices of the bounding box of ``mask`` grown by ``margin`` voxels (clipped to the array)."""
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


class KGrid:
    """Padded FFT grid of a cropped volume: dipole kernel and Laplacian on the rfft half-space.

    Attributes
    ----------
    shape : padded real-space shape. sl : slices of the crop inside the padded grid.
    D : (N0, N1, N2//2+1) float32 dipole kernel (D(0) = 0). L : same shape, |G(k)|^2 (1/mm^2).
    """

    def __init__(self, crop_shape, voxel_size, b0_dir, pad_factor: float = 1.5):
        if not np.isfinite(pad_factor) or pad_factor < 1.0:
            raise InputError(f"pad_factor must be >= 1 (1.5 or more recommended), got {pad_factor!r}")
        self.vs = np.asarray(voxel_size, dtype=float)
        self.shape = physics.padded_shape(crop_shape, pad_factor)
        lo = [(n - s) // 2 for s, n in zip(crop_shape, self.shape)]
        self.sl = tuple(slice(a, a + s) for a, s in zip(lo, crop_shape))
        nh = self.shape[2] // 2 + 1
        self.D = physics.dipole_kernel(self.shape, self.vs, b0_dir)[..., :nh].astype(np.float32)
        L = np.zeros((self.shape[0], self.shape[1], nh), np.float32)
        for ax, (n, d) in enumerate(zip(self.shape, self.vs)):
            m = n if ax < 2 else nh
            e = (4.0 * np.sin(np.pi * np.arange(m) / n) ** 2 / d ** 2).astype(np.float32)
            sh = [1, 1, 1]
            sh[ax] = m
            L += e.reshape(sh)
        self.L = L

    def pad(self, crop: np.ndarray) -> np.ndarray:
        out = np.zeros(self.shape, np.float32)
        out[self.sl] = crop
        return out

    def fft(self, x):
        return sfft.rfftn(x, workers=-1)

    def ifft(self, X):
        return sfft.irfftn(X, s=self.shape, workers=-1).astype(np.float32, copy=False)


def grad(x: np.ndarray, vs) -> list:
    """Forward differences with periodic boundaries, per axis, divided by the voxel size (1/mm)."""
    return [(np.roll(x, -1, axis=a) - x) * np.float32(1.0 / vs[a]) for a in range(3)]


def grad_adj(g: list, vs) -> np.ndarray:
    """Adjoint of :func:`grad` (minus the backward-difference divergence)."""
    out = np.zeros_like(g[0])
    for a in range(3):
        out += (np.roll(g[a], 1, axis=a) - g[a]) * np.float32(1.0 / vs[a])
    return out


def tv_shrink_into(gx: list, eta: list, tau, out: list) -> None:
    """ADMM step of isotropic TV: out = shrink(gx + eta, tau) and eta = (gx + eta) - out, in place.

    ``gx``, ``eta``, ``out``: lists of the 3 gradient components; ``tau`` scalar or per-voxel array.
    """
    v = [gx[a] + eta[a] for a in range(3)]
    nrm = np.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(nrm > tau, 1.0 - tau / nrm, 0.0).astype(np.float32)
    for a in range(3):
        out[a] = v[a] * s
        eta[a] = v[a] - out[a]


def edge_weights(magnitude, mask, voxel_size, edge_percent: float = 30.0,
                 edge_weight: float = 0.1) -> np.ndarray:
    """TV weights from the magnitude's gradients: 1 in flat regions, ``edge_weight`` at edges.

    Edges are the ``edge_percent`` % of mask voxels with the largest magnitude-gradient norm
    (MEDI-style). ``magnitude=None`` gives uniform weights (1 in the mask). Returns float32,
    same shape as ``mask``; 0 outside the mask and on its last layer (voxels whose forward
    neighbour is outside), so the jump to 0 at the brain's edge is not penalised.
    """
    m = np.asarray(mask) > 0
    # the TV acts only on differences inside the mask: a voxel whose forward neighbour is outside
    # gets weight 0 (the jump to the zero outside the brain is not penalised)
    inner = m.copy()
    for a in range(3):
        nb = np.zeros_like(m)
        sl = [slice(None)] * 3
        sl[a] = slice(0, -1)
        sl2 = [slice(None)] * 3
        sl2[a] = slice(1, None)
        nb[tuple(sl)] = m[tuple(sl2)]
        inner &= nb
    w = inner.astype(np.float32)
    if magnitude is None:
        return w
    mag = np.asarray(magnitude, dtype=np.float32)
    if mag.ndim == 4:  # multi-echo: combine
        mag = np.sqrt(np.sum(mag.astype(np.float32) ** 2, axis=-1))
    if mag.shape != m.shape:
        raise InputError(f"magnitude shape {mag.shape} does not match the mask shape {m.shape}")
    if not 0.0 <= edge_percent < 100.0:
        raise InputError(f"edge_percent must be in [0, 100), got {edge_percent!r}")
    g = np.gradient(mag, *np.asarray(voxel_size, dtype=float))
    gn = np.sqrt(sum(x * x for x in g))
    if edge_percent <= 0:
        return w
    thr = np.percentile(gn[m], 100.0 - edge_percent)
    w[inner & (gn > thr)] = np.float32(edge_weight)
    return w


# --------------------------------------------------------------------------- closed form
def qsm_closed_form(local_field_ppm, mask, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0),
                    lam: float = LAM_CLOSED_FORM, pad_factor: float = 1.5) -> np.ndarray:
    """Closed-form L2 gradient-regularized QSM (ppm).

    Parameters
    ----------
    local_field_ppm : (X, Y, Z) local (tissue) field in ppm of B0.
    mask : (X, Y, Z) brain mask (nonzero = inside); the field is used only there.
    voxel_size : (3,) mm. b0_dir : (3,) B0 direction in the array frame.
    lam : gradient-regularization weight (mm^2); larger = smoother, lower contrast.
    pad_factor : zero padding of the mask's bounding box (>= 1.5 recommended).

    Returns
    -------
    chi : (X, Y, Z) float32 chi_total in ppm, 0 outside the mask. The mean is not determined by
    the field (D(0) = 0): the estimate has zero mean over the padded box.
    """
    f, m, vs, b = check_field_inputs(local_field_ppm, mask, voxel_size, b0_dir)
    if not np.isfinite(lam) or lam < 0:
        raise InputError(f"lam must be >= 0, got {lam!r}")
    box = bounding_box(m)
    kg = KGrid(f[box].shape, vs, b, pad_factor)
    F = kg.fft(kg.pad(np.where(m[box], f[box], 0.0)))
    den = kg.D * kg.D + np.float32(lam) * kg.L
    with np.errstate(divide="ignore", invalid="ignore"):
        filt = np.where(den > 1e-12, kg.D / den, 0.0).astype(np.float32)
    chi_box = kg.ifft(F * filt)[kg.sl]
    out = np.zeros(f.shape, np.float32)
    out[box] = np.where(m[box], chi_box, 0.0)
    return out


# --------------------------------------------------------------------------- iterative
def qsm_iterative(local_field_ppm, mask, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0),
                  field_weight=None, magnitude=None, lam: float = LAM_ITERATIVE,
                  max_iter: int = 50, tol: float = 3e-3, pad_factor: float = 1.5,
                  edge_percent: float = 30.0, edge_weight: float = 0.1, rho: float = 1.0,
                  init=None, progress: ProgressFn = None, return_info: bool = False):
    """Weighted L1-TV QSM by ADMM, chi supported on the mask (ppm).

    Minimises ``||W (f - D*chi)||^2`` (inside the mask) ``+ lam * sum w_edge |grad chi|`` with
    chi = 0 outside the mask (see the module docstring for the splitting).

    Parameters
    ----------
    local_field_ppm, mask, voxel_size, b0_dir : as :func:`qsm_closed_form`.
    field_weight : (X, Y, Z) reliability of the field (e.g. magnitude SNR) or None (uniform);
        normalised to mean 1 in the mask.
    magnitude : (X, Y, Z) or (X, Y, Z, E) magnitude for edge-weighted TV, or None (plain TV).
    lam : TV weight. max_iter, tol : stop when the relative change of chi in the mask < tol.
    rho : ADMM penalty scale (convergence speed only, not the solution).
    init : optional initial chi (ppm); default the closed-form QSM.
    progress : ``progress(fraction, message)`` called once per iteration.
    return_info : also return ``dict(n_iter, converged, residual_history)``.

    Returns
    -------
    chi : (X, Y, Z) float32 ppm, 0 outside the mask (and ``info`` if ``return_info``).
    """
    f, m, vs, b = check_field_inputs(local_field_ppm, mask, voxel_size, b0_dir)
    if not np.isfinite(lam) or lam < 0:
        raise InputError(f"lam must be >= 0, got {lam!r}")
    if int(max_iter) < 1 or not np.isfinite(tol) or tol < 0:
        raise InputError("max_iter must be >= 1 and tol >= 0")
    w = check_map(field_weight, f.shape, "field_weight")
    box = bounding_box(m)
    mb = m[box]
    w2 = (np.ones(int(mb.sum()), np.float32) if w is None else np.abs(w[box][mb]).astype(np.float32))
    mw = float(np.mean(w2)) if w2.size else 1.0
    w2 = (w2 / (mw if mw > 0 else 1.0)) ** 2
    ew = edge_weights(None if magnitude is None else np.asarray(magnitude)[box], mb, vs,
                      edge_percent, edge_weight)
    kg = KGrid(mb.shape, vs, b, pad_factor)
    mp = kg.pad(mb) > 0
    ewp = kg.pad(ew)
    fm = f[box][mb]
    rho_u, rho_g, rho_s = np.float32(rho), np.float32(0.3 * rho), np.float32(0.3 * rho)
    tau = (np.float32(lam) / rho_g) * ewp
    chi0 = qsm_closed_form(f, m, vs, b, pad_factor=pad_factor) if init is None else \
        check_map(init, f.shape, "init", allow_none=False)
    x = kg.pad(np.where(mb, chi0[box], 0.0))
    den = rho_u * kg.D * kg.D + rho_g * kg.L + rho_s
    X = kg.fft(x)
    dx = kg.ifft(X * kg.D)
    eta_u = np.zeros_like(fm)
    g = grad(x, vs)
    eta_g = [np.zeros_like(x) for _ in range(3)]
    eta_s = np.zeros_like(x)
    hist, converged, it = [], False, 0
    prev = x[mp].copy()
    for it in range(1, int(max_iter) + 1):
        # z-updates: field fidelity (pointwise in the mask), TV shrinkage, support projection
        v = dx[mp] + eta_u
        u_in = (2 * w2 * fm + rho_u * v) / (2 * w2 + rho_u)
        eta_u = v - u_in
        U = dx.copy()          # outside the mask u = D*chi exactly (dual stays 0 there)
        U[mp] = u_in - eta_u
        tv_shrink_into(grad(x, vs), eta_g, tau, g)
        vs_ = x + eta_s
        s = np.where(mp, vs_, 0.0).astype(np.float32)
        eta_s = vs_ - s
        # chi-update, exact in k-space
        rhs = rho_g * grad_adj([g[a] - eta_g[a] for a in range(3)], vs) + rho_s * (s - eta_s)
        X = (rho_u * kg.D * kg.fft(U) + kg.fft(rhs)) / den
        x = kg.ifft(X)
        dx = kg.ifft(X * kg.D)
        cur = x[mp]
        rel = float(np.linalg.norm(cur - prev) / max(np.linalg.norm(cur), 1e-12))
        hist.append(rel)
        prev = cur.copy()
        if progress is not None:
            progress(it / max_iter, f"QSM iteration {it}/{max_iter} (change {rel:.2e})")
        if rel < tol and it >= MIN_ITER:
            converged = True
            break
    out = np.zeros(f.shape, np.float32)
    out[box] = np.where(mb, x[kg.sl], 0.0)
    if progress is not None:
        progress(1.0, "QSM done")
    if return_info:
        return out, {"n_iter": it, "converged": converged, "residual_history": hist}
    return out
