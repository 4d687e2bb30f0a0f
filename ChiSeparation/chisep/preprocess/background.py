"""Background field removal: V-SHARP (variable-radius SMV), LBV (Laplacian boundary value) and PDF
(projection onto dipole fields)."""
from __future__ import annotations

import numpy as np
import scipy.fft as sfft
import scipy.ndimage as ndi
import scipy.sparse as sparse
import scipy.sparse.linalg as splinalg

from .. import physics
from .mask import erode


def _bbox(mask, margin):
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, mask.shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi))


def smv_kernel_ft(shape, voxel_size, radius_mm):
    """FT of a normalised sphere of ``radius_mm`` (spherical mean value kernel), shape ``shape``."""
    vs = np.broadcast_to(np.asarray(voxel_size, float), (3,))
    grids = np.meshgrid(*[np.minimum(np.arange(n), n - np.arange(n)) * d for n, d in zip(shape, vs)],
                        indexing="ij", sparse=True)
    ball = (sum(g ** 2 for g in grids) <= radius_mm ** 2).astype(np.float64)
    ball /= ball.sum()
    return sfft.rfftn(ball, workers=-1)


def vsharp(field, mask, voxel_size=(1.0, 1.0, 1.0), radii_mm=None, max_radius_mm: float = 12.0,
           threshold: float = 0.05):
    """V-SHARP background removal.

    Parameters
    ----------
    field : (X, Y, Z) total field (any unit; the local field comes back in the same unit).
    mask : brain mask.
    radii_mm : SMV radii, largest first (default ``max_radius_mm`` down to ~1 voxel).
    threshold : truncation of the deconvolution (1 - SMV of the largest radius) in k-space.

    Returns
    -------
    local : (X, Y, Z) float32, zero outside ``mask_eroded``.
    mask_eroded : (X, Y, Z) uint8, where the local field is valid (mask eroded by the smallest radius).
    """
    vs = np.broadcast_to(np.asarray(voxel_size, float), (3,))
    m = np.asarray(mask) > 0
    if radii_mm is None:
        rmin = max(1.0, float(vs.max()))
        radii_mm = [r for r in (12, 10, 8, 6, 5, 4, 3, 2, 1) if max_radius_mm >= r >= rmin]
        if not radii_mm or radii_mm[-1] > rmin:
            radii_mm = list(radii_mm) + [rmin]
    radii_mm = sorted(set(float(r) for r in radii_mm), reverse=True)
    margin = int(np.ceil(radii_mm[0] / vs.min())) + 2
    sl = _bbox(m, margin)
    mb = m[sl]
    fb = np.asarray(field, np.float64)[sl] * mb
    shape = physics.padded_shape(mb.shape, 1.0)
    shape = tuple(max(s, n + 2 * margin) for s, n in zip(shape, mb.shape))
    shape = tuple(sfft.next_fast_len(s, real=True) for s in shape)
    fp, inner = physics.pad_to(fb, shape)
    mp, _ = physics.pad_to(mb.astype(np.float64), shape)
    Ff = sfft.rfftn(fp, workers=-1)
    Fm = sfft.rfftn(mp, workers=-1)
    acc = np.zeros(shape)
    done = np.zeros(shape, bool)
    k_large = None
    for r in radii_mm:
        S = smv_kernel_ft(shape, vs, r)
        if k_large is None:
            k_large = S
        er = sfft.irfftn(Fm * S, s=shape, workers=-1) > 0.999
        hp = fp - sfft.irfftn(Ff * S, s=shape, workers=-1)
        sel = er & ~done
        acc[sel] = hp[sel]
        done |= er
    final = done
    dker = 1.0 - k_large
    inv = np.where(np.abs(dker) > threshold, 1.0 / np.where(np.abs(dker) > threshold, dker, 1.0), 0.0)
    local = sfft.irfftn(sfft.rfftn(acc * final, workers=-1) * inv, s=shape, workers=-1) * final
    out = np.zeros(m.shape, np.float32)
    me = np.zeros(m.shape, np.uint8)
    out[sl] = local[inner]
    me[sl] = final[inner]
    return out, me


def pdf(field, mask, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), weight=None,
        max_iter: int = 40, tol: float = 1e-3):
    """Projection onto dipole fields: fit the field in the mask with sources outside it (CG).

    Returns ``(local, mask)``: local = field - D*(chi_out), zero outside the mask.
    """
    m = np.asarray(mask) > 0
    vs = np.broadcast_to(np.asarray(voxel_size, float), (3,))
    sl = _bbox(m, 8)
    mb = m[sl]
    fb = np.asarray(field, np.float64)[sl]
    w = np.ones_like(fb) if weight is None else np.asarray(weight, np.float64)[sl]
    w = w * mb
    shape = physics.padded_shape(mb.shape, 2.0)
    D = physics.dipole_kernel(shape, vs, b0_dir)[..., : shape[2] // 2 + 1]
    _, inner = physics.pad_to(fb, shape)
    out_mask = np.ones(shape, bool)
    out_mask[inner] = ~mb

    def A(x):  # sources outside the mask -> field inside the mask
        return sfft.irfftn(sfft.rfftn(x * out_mask, workers=-1) * D, s=shape, workers=-1)[inner] * w

    def At(y):
        z = np.zeros(shape)
        z[inner] = y * w
        return sfft.irfftn(sfft.rfftn(z, workers=-1) * D, s=shape, workers=-1) * out_mask

    b = At(fb * w)
    x = np.zeros(shape)
    r = b.copy()
    p = r.copy()
    rs = float(np.sum(r * r))
    rs0 = rs
    for _ in range(max_iter):
        Ap = At(A(p))
        alpha = rs / max(float(np.sum(p * Ap)), 1e-30)
        x += alpha * p
        r -= alpha * Ap
        rs_new = float(np.sum(r * r))
        if rs_new < (tol ** 2) * rs0:
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    bg = sfft.irfftn(sfft.rfftn(x * out_mask, workers=-1) * D, s=shape, workers=-1)[inner]
    out = np.zeros(m.shape, np.float32)
    out[sl] = (fb - bg) * mb
    return out, m.astype(np.uint8)


def laplacian_stencil(voxel_size=(1.0, 1.0, 1.0), kind: str = "compact") -> dict:
    """Finite-difference Laplacian as ``{offset (3-tuple): coefficient}`` (1/mm^2).

    ``kind="7-point"``: the second-order stencil, sum of the three 1-D second differences.
    ``kind="compact"``: the 19-point "Mehrstellen" stencil for Laplace's equation,
    ``sum_i d_i^2 + sum_{i<j} (h_i^2 + h_j^2) / 12 d_i^2 d_j^2`` (``d_i^2`` the 1-D second
    difference along axis ``i`` with step ``h_i``). For a harmonic function its truncation error is
    fourth order in the voxel size (the 7-point stencil's is second order), so a steep background
    field next to the sinuses or the skull base is far closer to discretely harmonic; it reaches only
    the 18 nearest neighbours, so the Dirichlet boundary stays one voxel thick. Anisotropic voxels
    are exact in this form.
    """
    h2 = np.broadcast_to(np.asarray(voxel_size, float), (3,)) ** 2
    if kind not in ("7-point", "compact"):
        raise ValueError(f"unknown Laplacian stencil {kind!r}; use '7-point' or 'compact'")
    st: dict = {}

    def add(off, c):
        st[off] = st.get(off, 0.0) + c

    for i in range(3):
        for a, w in ((-1, 1.0), (0, -2.0), (1, 1.0)):
            off = [0, 0, 0]
            off[i] = a
            add(tuple(off), w / h2[i])
    if kind == "compact":
        for i in range(3):
            for j in range(i + 1, 3):
                c = (h2[i] + h2[j]) / (12.0 * h2[i] * h2[j])
                for a, wa in ((-1, 1.0), (0, -2.0), (1, 1.0)):
                    for b, wb in ((-1, 1.0), (0, -2.0), (1, 1.0)):
                        off = [0, 0, 0]
                        off[i], off[j] = a, b
                        add(tuple(off), c * wa * wb)
    return st


def lbv(field, mask, voxel_size=(1.0, 1.0, 1.0), peel_mm: float = 0.0, tol: float = 1e-7,
        max_iter: int = 3000, stencil: str = "compact"):
    """Laplacian boundary value (LBV) background removal (Zhou, Liu, Spincemaille, Wang 2014).

    The background field is harmonic inside the brain, so it is the solution of Laplace's
    equation in the mask whose values on the mask's boundary (its one-voxel shell) are those of the
    total field; the local field is the total field minus that solution. LBV assumes the local
    field is small on the boundary; its error is the harmonic extension of the local field's
    boundary values, largest near the surface, hence ``peel_mm``. A second error is the
    discretisation: a steep background (sinuses, skull base) is not exactly harmonic for a
    finite-difference Laplacian and leaks into the local field; the default fourth-order compact
    stencil (:func:`laplacian_stencil`) makes that leak much smaller than the classic 7-point
    stencil does (docs/METHODS.md, "Background field removal").

    Parameters
    ----------
    field : (X, Y, Z) total field (any unit; the local field comes back in the same unit).
    mask : (X, Y, Z) brain mask.
    voxel_size : (3,) mm (anisotropic voxels are handled by the finite-difference Laplacian).
    peel_mm : erode the returned ``mask_eroded`` by this many mm (0: the mask minus its shell).
    tol : relative residual at which conjugate gradients stop.
    max_iter : conjugate-gradient iterations at most.
    stencil : "compact" (19-point, fourth order for harmonic functions; default) or "7-point".

    Returns
    -------
    local : (X, Y, Z) float32, zero outside ``mask_eroded``.
    mask_eroded : (X, Y, Z) uint8, where the local field is valid.
    """
    vs = np.broadcast_to(np.asarray(voxel_size, float), (3,))
    solve, inner = _lbv_solver(mask, vs, stencil, tol, max_iter)
    valid = erode(inner, peel_mm, vs) if peel_mm > 0 else inner
    return (solve(field) * valid).astype(np.float32), valid.astype(np.uint8)


def _dirichlet_eigenvalues(shape, vs, st):
    """Eigenvalues of minus the stencil's Laplacian on a box of ``shape`` with zero (Dirichlet) values
    just outside it: the stencil is diagonalised by the type-I discrete sine transform."""
    h2 = np.asarray(vs, float) ** 2
    e = [(2.0 * np.cos(np.pi * np.arange(1, n + 1) / (n + 1)) - 2.0).reshape([-1 if i == a else 1 for i in range(3)])
         for a, n in enumerate(shape)]
    lam = sum(e[i] / h2[i] for i in range(3))
    compact = any(sum(1 for o in off if o) == 2 for off in st)
    if compact:
        for i in range(3):
            for j in range(i + 1, 3):
                lam = lam + (h2[i] + h2[j]) / (12.0 * h2[i] * h2[j]) * e[i] * e[j]
    return -lam


def _lbv_solver(mask, vs, stencil, tol, max_iter):
    """Assemble LBV's Dirichlet problem on ``mask`` once; return ``(solve, inner)``.

    ``solve(field)`` gives ``field`` minus the discrete-harmonic function with ``field``'s values on
    the mask's shell (float64, zero outside ``inner``); ``inner`` (bool) are the unknowns: voxels all
    of whose stencil neighbours lie in the mask, the rest of the mask being the one-voxel shell.

    Conjugate gradients are preconditioned by the same stencil's exact inverse on the mask's bounding
    box (zero values outside the box; a type-I sine transform, float32): it removes the smooth error
    modes that a diagonal preconditioner leaves to hundreds of iterations (1 mm head: 202 -> 23
    iterations to the same relative residual; solutions agree to 1e-6 of their norm).
    """
    st = laplacian_stencil(vs, stencil)
    m = np.asarray(mask) > 0
    if not m.any():
        raise ValueError("LBV needs a non-empty mask")
    sl = _bbox(m, 1)
    mb = m[sl]
    foot = np.zeros((3, 3, 3), bool)
    for off in st:
        foot[off[0] + 1, off[1] + 1, off[2] + 1] = True
    inner_b = ndi.binary_erosion(mb, structure=foot)
    inner = np.zeros(m.shape, bool)
    inner[sl] = inner_b
    n = int(inner_b.sum())
    if n == 0:
        return (lambda field: np.zeros(m.shape)), inner
    # rows in raveled order, stencil offsets sorted by their flat displacement: every row's columns
    # come out sorted, so the CSR arrays are written directly (no COO sort)
    strides = np.array([mb.shape[1] * mb.shape[2], mb.shape[2], 1])
    offs = sorted(st, key=lambda o: int(np.dot(o, strides)))
    disp = np.array([int(np.dot(o, strides)) for o in offs], np.int64)
    coef = np.array([st[o] for o in offs])
    flat = np.flatnonzero(inner_b.ravel())
    ids = np.full(mb.size, -1, np.int32)
    ids[flat] = np.arange(n, dtype=np.int32)
    nb_flat = flat[:, None] + disp[None, :]
    nid = ids[nb_flat]
    unknown = nid >= 0
    vals = np.broadcast_to(-coef, nid.shape)               # the matrix is minus the Laplacian (SPD)
    A = sparse.csr_matrix((vals[unknown], nid[unknown], np.concatenate([[0], np.cumsum(unknown.sum(1))])),
                          shape=(n, n))
    A.has_sorted_indices = True
    known = ~unknown                                        # Dirichlet neighbours: rhs = B @ field (box, flat)
    B = sparse.csr_matrix((np.broadcast_to(coef, nid.shape)[known], nb_flat[known],
                           np.concatenate([[0], np.cumsum(known.sum(1))])), shape=(n, mb.size))
    del nid, nb_flat, unknown, known
    pshape = tuple(sfft.next_fast_len(k + 1, real=True) - 1 for k in mb.shape)  # DST-I of k uses an FFT of 2(k+1)
    inv = (1.0 / _dirichlet_eigenvalues(pshape, vs, st)).astype(np.float32)
    inner_p = np.zeros(pshape, bool)
    inner_p[tuple(slice(0, k) for k in mb.shape)] = inner_b

    def precond(r):
        z = np.zeros(pshape, np.float32)
        z[inner_p] = r
        z = sfft.idstn(sfft.dstn(z, type=1, workers=-1, overwrite_x=True) * inv, type=1, workers=-1, overwrite_x=True)
        return z[inner_p].astype(np.float64)

    M = splinalg.LinearOperator((n, n), matvec=precond, dtype=np.float64)

    def solve(field):
        fb = np.asarray(field, np.float64)[sl]
        x, _ = splinalg.cg(A, B @ fb.ravel(), x0=fb[inner_b], M=M, rtol=tol, maxiter=max_iter)
        local = np.zeros(m.shape)
        local[sl][inner_b] = fb[inner_b] - x
        return local

    return solve, inner


def extend_to_mask(values, known, mask, voxel_size=(1.0, 1.0, 1.0)):
    """Fill ``mask`` from ``values`` on ``known`` (inside it): each voxel takes its nearest known voxel's value.

    LBV-QSM's first susceptibility map lives on the inner voxels only, but the shell's own chi
    makes most of the local field's values on the boundary, so the shell needs a value too.

    Returns a float array, zero outside ``mask``.
    """
    m = np.asarray(mask) > 0
    k = np.asarray(known) > 0
    out = np.array(values, dtype=np.result_type(np.asarray(values).dtype, np.float32))
    sl = _bbox(m, 1)
    near = ndi.distance_transform_edt(~k[sl], sampling=np.broadcast_to(np.asarray(voxel_size, float), (3,)),
                                      return_distances=False, return_indices=True)
    out[sl] = out[sl][tuple(near)]
    return out * m


def _without_linear_trend(values, mask):
    """``values`` minus its least-squares fit by ``a + b.x`` over ``mask`` (zero outside ``mask``)."""
    m = np.asarray(mask) > 0
    idx = np.nonzero(m)
    x = np.stack(idx, 1).astype(np.float64)
    sd = x.std(0)
    x = (x[:, sd > 0] - x.mean(0)[sd > 0]) / sd[sd > 0]          # a flat mask has no trend along its thin axis
    basis = np.column_stack([np.ones(len(x)), x])
    v = np.asarray(values, np.float64)[idx]
    # normal equations of the (at most 4-column, centred and scaled) basis: the projection of a QR
    # factorisation to rounding, without forming the tall Q
    coef = np.linalg.solve(basis.T @ basis, basis.T @ v)
    out = np.zeros(m.shape)
    out[idx] = v - basis @ coef
    return out


def first_susceptibility_map(local_field, inner, mask, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0),
                             lam: float = 0.1):
    """LBV-QSM's first map: closed-form QSM of ``local_field`` on ``inner``, referenced to its median
    there and extended to ``mask`` (:func:`extend_to_mask`). ppm in, ppm out, zero outside ``mask``."""
    from ..qsm import qsm_closed_form

    inner = np.asarray(inner) > 0
    chi = qsm_closed_form(local_field, inner, voxel_size, b0_dir, lam=lam)
    return extend_to_mask(chi - np.median(chi[inner]), inner, mask, voxel_size)


class _FieldOfChi:
    """:func:`chisep.physics.forward_field` for repeated maps on one grid: the dipole kernel is built
    once and only on the real-FFT half-space (the full kernel is twice the work and memory), and the
    transforms run in float32 (the maps are float32; the field agrees with the float64 one to ~1e-6
    of its norm)."""

    def __init__(self, shape, voxel_size, b0_dir, pad_factor: float = 1.5):
        self.shape = physics.padded_shape(shape, max(pad_factor, 1.0))
        b = np.asarray(b0_dir, float) / np.linalg.norm(b0_dir)
        nh = self.shape[2] // 2 + 1
        k = [sfft.fftfreq(n, d=d) for n, d in zip(self.shape, np.broadcast_to(np.asarray(voxel_size, float), (3,)))]
        kx, ky, kz = k[0][:, None, None], k[1][None, :, None], k[2][None, None, :nh]
        k2 = kx ** 2 + ky ** 2 + kz ** 2
        kb = kx * b[0] + ky * b[1] + kz * b[2]
        with np.errstate(invalid="ignore", divide="ignore"):
            d = 1.0 / 3.0 - kb ** 2 / k2
        d[0, 0, 0] = 0.0
        self.D = d.astype(np.float32)

    def __call__(self, chi):
        chip, sl = physics.pad_to(np.asarray(chi, np.float32), self.shape)
        F = sfft.rfftn(chip, workers=-1)
        F *= self.D
        return sfft.irfftn(F, s=self.shape, workers=-1, overwrite_x=True)[sl].astype(np.float64)


def lbv_qsm(field, mask, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), lam: float = 0.1,
            stencil: str = "compact", peel_mm: float = 0.0, tol: float = 1e-7, max_iter: int = 3000,
            boundary_mask=None, refine: int = 1):
    """LBV whose missing part — the local field's own values on the mask boundary — is estimated
    from a first susceptibility map and put back.

    Plain LBV returns ``f_local - H[f_local]``, where ``H[g]`` is the harmonic function in the mask
    with ``g``'s boundary values: the local field of sources inside the brain is not zero on the
    brain's surface, so part of it is lost (about a fifth of its norm on simulated heads). Here
    (1) ``f1 = lbv(field)``; (2) ``chi = qsm_closed_form(f1)``, referenced to its median in the
    mask and extended to the mask's shell from the nearest inner voxel; (3) ``f_chi = D * chi`` (the
    field of that map, sources inside the mask only); (4) the
    result is ``f1 + H[f_chi]``, with ``H[f_chi] = f_chi - lbv(f_chi)``, computed as
    ``f_chi + lbv(field - f_chi)``. A background field does not enter step 4, so the correction
    cannot bring it back; the result is exact when ``chi`` is.

    With ``boundary_mask`` (inside ``mask``) steps 1-3 use ``mask`` and step 4 takes its boundary
    values on ``boundary_mask``'s shell: leave out surface voxels whose field is not the field at
    their centre (:func:`chisep.preprocess.mask.partial_volume_surface`) while the first
    susceptibility map still covers them.

    Parameters
    ----------
    field : (X, Y, Z) total field (any unit; returned in the same unit).
    mask : (X, Y, Z) brain mask.
    voxel_size : (3,) mm. b0_dir : (3,) B0 direction in the array frame.
    lam : gradient regularisation of the first susceptibility map (:func:`chisep.qsm.qsm_closed_form`;
        a smooth map is what the boundary values need).
    stencil, peel_mm, tol, max_iter : as for :func:`lbv`.
    boundary_mask : optional (X, Y, Z) mask for step 4 (default ``mask``); the result lives on it.
    refine : repeat steps 2-4 this many times, the map re-estimated from the corrected local field on
        step 4's inner voxels; the update keeps the map's constant and linear trend (their field is
        harmonic in the brain, so no field pins them, and an unconstrained re-estimation lets them
        drift and the error grow with each round). One round (the default) lowers the error; a
        second gains nothing (docs/METHODS.md, "Background field removal").

    Returns
    -------
    local : (X, Y, Z) float32, zero outside ``mask_eroded``.
    mask_eroded : (X, Y, Z) uint8.
    """
    vs = np.broadcast_to(np.asarray(voxel_size, float), (3,))
    m = np.asarray(mask) > 0
    solve, inner = _lbv_solver(m, vs, stencil, tol, max_iter)
    if boundary_mask is None:
        solve_b, inner_b = solve, inner
    else:
        solve_b, inner_b = _lbv_solver(m & (np.asarray(boundary_mask) > 0), vs, stencil, tol, max_iter)
    field = np.asarray(field, np.float64)
    f1 = solve(field)
    if inner.any():
        chi = first_susceptibility_map(f1, inner, m, vs, b0_dir, lam)
        field_of = _FieldOfChi(m.shape, vs, b0_dir, pad_factor=1.5)
        for it in range(int(refine) + 1):
            f_chi = field_of(chi)
            local = f_chi + solve_b(field - f_chi)
            if it < refine:
                new = first_susceptibility_map(local, inner_b, m, vs, b0_dir, lam)
                chi = chi + _without_linear_trend(new - chi, m)
        f1 = local
    elif boundary_mask is not None:
        f1 = solve_b(field)
    valid = erode(inner_b, peel_mm, vs) if peel_mm > 0 else inner_b
    return (f1 * valid).astype(np.float32), valid.astype(np.uint8)
