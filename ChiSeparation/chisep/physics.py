"""Physics of chi-separation: dipole kernel, forward field, units, relaxation model.

Conventions (docs/DESIGN.md, "Physics")
---------------------------------------
* Susceptibility in ppm. ``chi_dia`` is a positive magnitude; chi_total = chi_para - chi_dia.
* Local field ``f`` in ppm of B0: f = F^-1{ D(k) F{chi_total} }.
  f_hz = f_ppm * CF * 1e-6 with CF = gamma_bar * B0 (Hz).
* Dipole kernel D(k) = 1/3 - (k . b)^2 / |k|^2 with k_i = n_i / (N_i dx_i) (anisotropic voxels),
  b the unit B0 direction in the array frame. D(0) = 0 by default (the field has zero mean over
  the padded field of view, which matches the analytic field of a compact source); 1/3 optional.
* R2' = Dr+ chi_para + Dr- |chi_dia| in Hz, Dr in Hz/ppm.
"""
from __future__ import annotations

import numpy as np
import scipy.fft as sfft

#: Reduced gyromagnetic ratio of 1H, MHz/T.
GAMMA_BAR_MHZ_PER_T = 42.577478
#: Relaxometric constant used by chi-sepnet (its COSMOS-based labels), Hz/ppm.
DR_CHISEPNET = 114.0
#: Relaxometric constant of the conventional method at 2.89 T, Hz/ppm (scales linearly with B0).
DR_CONVENTIONAL_2P89T = 137.0


# --------------------------------------------------------------------------- units
def center_frequency_hz(b0_t: float) -> float:
    """Larmor (centre) frequency CF = gamma_bar * B0 in Hz for a field strength in tesla."""
    if not np.isfinite(b0_t) or b0_t <= 0:
        raise ValueError(f"field strength must be a positive number of tesla, got {b0_t!r}")
    return GAMMA_BAR_MHZ_PER_T * 1e6 * float(b0_t)


def ppm_to_hz(field_ppm, b0_t: float):
    """Field in ppm of B0 -> frequency offset in Hz."""
    return np.asarray(field_ppm) * (center_frequency_hz(b0_t) * 1e-6)


def hz_to_ppm(field_hz, b0_t: float):
    """Frequency offset in Hz -> field in ppm of B0."""
    return np.asarray(field_hz) / (center_frequency_hz(b0_t) * 1e-6)


def hz_to_rad(field_hz, te_s):
    """Phase accrued (rad) by a frequency offset (Hz) at echo time ``te_s`` (s): 2*pi*f*TE."""
    return 2.0 * np.pi * np.asarray(field_hz) * te_s


def rad_to_hz(phase_rad, delta_te_s):
    """Frequency offset (Hz) from a phase difference (rad) over ``delta_te_s`` (s)."""
    if np.any(np.asarray(delta_te_s) == 0):
        raise ValueError("echo-time difference must be non-zero")
    return np.asarray(phase_rad) / (2.0 * np.pi * np.asarray(delta_te_s))


def convert_field(field, unit_from: str, unit_to: str, b0_t: float, te_s: float | None = None):
    """Convert a field map between ``'ppm'``, ``'hz'`` and ``'rad'`` (rad needs ``te_s``)."""
    unit_from, unit_to = unit_from.lower(), unit_to.lower()
    for u in (unit_from, unit_to):
        if u not in ("ppm", "hz", "rad"):
            raise ValueError(f"unknown field unit {u!r}; use 'ppm', 'hz' or 'rad'")
        if u == "rad" and not te_s:
            raise ValueError("a field in radians needs the echo time (te_s) it was accrued over")
    hz = {"ppm": lambda x: ppm_to_hz(x, b0_t), "hz": lambda x: np.asarray(x),
          "rad": lambda x: rad_to_hz(x, te_s)}[unit_from](field)
    return {"ppm": lambda x: hz_to_ppm(x, b0_t), "hz": lambda x: x,
            "rad": lambda x: hz_to_rad(x, te_s)}[unit_to](hz)


def dr_conventional(b0_t: float) -> float:
    """Relaxometric constant of the conventional method, 137 Hz/ppm at 2.89 T scaled with B0."""
    return DR_CONVENTIONAL_2P89T * float(b0_t) / 2.89


# --------------------------------------------------------------------------- relaxation model
def r2prime_from_chi(chi_para, chi_dia, dr_pos: float = DR_CHISEPNET, dr_neg: float | None = None):
    """R2' (Hz) = Dr+ * chi_para + Dr- * |chi_dia| (chi in ppm, Dr in Hz/ppm; Dr- defaults to Dr+)."""
    dr_neg = dr_pos if dr_neg is None else dr_neg
    return dr_pos * np.asarray(chi_para) + dr_neg * np.abs(np.asarray(chi_dia))


def chi_from_r2prime_and_total(r2prime_hz, chi_total, dr_pos: float = DR_CHISEPNET,
                               dr_neg: float | None = None):
    """Invert the two linear relations exactly (no regularization, no positivity).

    chi_total = chi_para - chi_dia and R2' = Dr+ chi_para + Dr- chi_dia give
    chi_para = (R2' + Dr- chi_total) / (Dr+ + Dr-), chi_dia = (R2' - Dr+ chi_total) / (Dr+ + Dr-).
    Returns ``(chi_para, chi_dia)`` in ppm.
    """
    dr_neg = dr_pos if dr_neg is None else dr_neg
    r2p = np.asarray(r2prime_hz, dtype=float)
    tot = np.asarray(chi_total, dtype=float)
    s = dr_pos + dr_neg
    return (r2p + dr_neg * tot) / s, (r2p - dr_pos * tot) / s


def r2prime_from_r2star_r2(r2star_hz, r2_hz):
    """R2' = max(R2* - R2, 0) in Hz."""
    return np.maximum(np.asarray(r2star_hz) - np.asarray(r2_hz), 0.0)


# --------------------------------------------------------------------------- geometry
def b0_direction_from_affine(affine) -> np.ndarray:
    """Unit B0 direction in the array (voxel) frame for a voxel->RAS affine.

    B0 lies along world z (S in RAS+). With A the affine's 3x3 part, normalise its columns
    (removing voxel size) to a rotation R; the direction in the array frame is R^T (0, 0, 1).
    A flip of an axis flips the sign of that component, which leaves the dipole kernel unchanged.
    """
    a = np.asarray(affine, dtype=float)
    if a.shape not in ((4, 4), (3, 3)):
        raise ValueError(f"affine must be 4x4 (or 3x3), got shape {a.shape}")
    m = a[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    if np.any(norms == 0):
        raise ValueError("affine has a zero-length voxel axis")
    r = m / norms
    b = r.T @ np.array([0.0, 0.0, 1.0])
    return b / np.linalg.norm(b)


def voxel_size_from_affine(affine) -> np.ndarray:
    """Voxel size (mm) along each array axis: the column norms of the affine's 3x3 part."""
    return np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)


def tilted_b0(angle_deg: float, axis: str = "x") -> np.ndarray:
    """Unit B0 direction tilted from the third array axis by ``angle_deg`` about ``axis`` (x|y)."""
    t = np.deg2rad(angle_deg)
    if axis == "x":
        return np.array([0.0, -np.sin(t), np.cos(t)])
    if axis == "y":
        return np.array([np.sin(t), 0.0, np.cos(t)])
    raise ValueError("axis must be 'x' or 'y'")


def _unit(b0_dir) -> np.ndarray:
    b = np.asarray(b0_dir, dtype=float).reshape(3)
    n = np.linalg.norm(b)
    if n == 0 or not np.isfinite(n):
        raise ValueError(f"B0 direction must be a non-zero 3-vector, got {b0_dir!r}")
    return b / n


# --------------------------------------------------------------------------- kernel
def kspace_grid(shape, voxel_size):
    """Spatial frequencies k_i = n_i / (N_i dx_i) (1/mm) on an unshifted FFT grid, each broadcastable."""
    shape = tuple(int(s) for s in shape)
    vs = np.broadcast_to(np.asarray(voxel_size, dtype=float), (3,))
    ks = []
    for ax, (n, d) in enumerate(zip(shape, vs)):
        k = sfft.fftfreq(n, d=d)
        sh = [1, 1, 1]
        sh[ax] = n
        ks.append(k.reshape(sh))
    return ks


def dipole_kernel(shape, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), dc: float = 0.0,
                  dtype=np.float64) -> np.ndarray:
    """Dipole kernel D(k) = 1/3 - (k.b)^2/|k|^2 on an unshifted FFT grid.

    Parameters
    ----------
    shape : (3,) ints, grid size.
    voxel_size : (3,) floats, mm.
    b0_dir : (3,) B0 direction in the array frame (normalised here).
    dc : value of D(0); 0 (default) or 1/3.

    Returns
    -------
    D : ndarray, shape ``shape``, real.
    """
    b = _unit(b0_dir)
    kx, ky, kz = kspace_grid(shape, voxel_size)
    k2 = kx ** 2 + ky ** 2 + kz ** 2
    kb = kx * b[0] + ky * b[1] + kz * b[2]
    with np.errstate(invalid="ignore", divide="ignore"):
        d = 1.0 / 3.0 - kb ** 2 / k2
    d[0, 0, 0] = dc
    return d.astype(dtype, copy=False)


# --------------------------------------------------------------------------- padding
def padded_shape(shape, factor: float = 2.0, multiple: int = 1):
    """FFT-friendly shape at least ``factor`` x ``shape`` (and a multiple of ``multiple``)."""
    out = []
    for s in shape:
        n = int(np.ceil(s * factor))
        n = sfft.next_fast_len(n, real=True)
        while n % multiple:
            n = sfft.next_fast_len(n + 1, real=True)
        out.append(n)
    return tuple(out)


def pad_to(arr: np.ndarray, shape, mode: str = "constant"):
    """Zero-pad ``arr`` (centred) to ``shape``; returns (padded, slices) where padded[slices] == arr."""
    pads, sl = [], []
    for s, n in zip(arr.shape[:3], shape):
        if n < s:
            raise ValueError(f"cannot pad size {s} down to {n}")
        lo = (n - s) // 2
        pads.append((lo, n - s - lo))
        sl.append(slice(lo, lo + s))
    pads += [(0, 0)] * (arr.ndim - 3)
    return np.pad(arr, pads, mode=mode), tuple(sl)


# --------------------------------------------------------------------------- forward model
def forward_field(chi_ppm, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0),
                  pad_factor: float = 2.0, dc: float = 0.0) -> np.ndarray:
    """Field (ppm) of a susceptibility distribution (ppm): F^-1{ D F{chi} }.

    The volume is zero-padded by ``pad_factor`` (>= 1) so that the periodic FFT does not wrap
    fields from one side to the other; the result is cropped back to ``chi_ppm.shape``.
    """
    chi = np.asarray(chi_ppm, dtype=np.float64)
    if chi.ndim != 3:
        raise ValueError(f"chi must be 3-D, got shape {chi.shape}")
    if not np.all(np.isfinite(chi)):
        raise ValueError("chi contains NaN or inf")
    shape = padded_shape(chi.shape, max(pad_factor, 1.0))
    chip, sl = pad_to(chi, shape)
    d = dipole_kernel(shape, voxel_size, b0_dir, dc=dc)
    f = sfft.irfftn(sfft.rfftn(chip, workers=-1) * d[..., : shape[2] // 2 + 1], s=shape, workers=-1)
    return f[sl]


def sphere_field_analytic(shape, voxel_size, center_mm, radius_mm: float, delta_chi: float,
                          b0_dir=(0.0, 0.0, 1.0)):
    """Analytic field (ppm) of a uniformly magnetised sphere (Lorentz-corrected).

    Outside: delta_chi/3 * (R/r)^3 * (3 cos^2 theta - 1); inside: 0. ``center_mm`` is in mm
    from voxel (0,0,0) along the array axes.
    Returns ``(field, r_mm)``.
    """
    b = _unit(b0_dir)
    vs = np.broadcast_to(np.asarray(voxel_size, dtype=float), (3,))
    grids = np.meshgrid(*[np.arange(n) * d - c for n, d, c in zip(shape, vs, center_mm)],
                        indexing="ij")
    r = np.sqrt(sum(g ** 2 for g in grids))
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (grids[0] * b[0] + grids[1] * b[1] + grids[2] * b[2]) / r
        f = delta_chi / 3.0 * (radius_mm / r) ** 3 * (3 * cos ** 2 - 1)
    f[r <= radius_mm] = 0.0
    return f, r
