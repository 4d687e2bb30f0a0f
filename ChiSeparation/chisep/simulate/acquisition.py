"""Acquisitions: the SimulatedHead result, GRE and SE signals with noise, the (tilted) affine, and
thick voxels as block averages of a 1 mm simulation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .lesions import _lesion_table, _renumber_lesions
from .template import _Grid


# --------------------------------------------------------------------------- result
@dataclass
class SimulatedHead:
    """A simulated subject: acquisitions, acquisition parameters and ground truth.

    Arrays are in NIfTI order (i, j, k[, echo]); ``affine`` maps voxel -> RAS+ mm.
    ``gre_mag``/``gre_phase`` (X, Y, Z, E) float32 (phase wrapped to [-pi, pi) rad);
    ``se_mag`` (X, Y, Z, E_se) float32 or None; ``truth`` maps are 3-D (see module docstring).
    """
    affine: np.ndarray
    voxel_size: np.ndarray
    b0_dir: np.ndarray
    b0_t: float
    te_s: tuple
    se_te_s: Optional[tuple]
    seed: int
    gre_mag: np.ndarray
    gre_phase: np.ndarray
    se_mag: Optional[np.ndarray]
    truth: dict
    lesion_table: list
    size: str = "small"
    snr: Optional[float] = None
    noise_sigma: float = 0.0
    phase_sign: int = 1
    tilt_deg: float = 0.0
    params: dict = field(default_factory=dict)

    @property
    def shape(self):
        """Spatial shape (X, Y, Z)."""
        return tuple(self.gre_mag.shape[:3])


def _block_mean(a, k):
    """Mean over blocks of k[0] x k[1] x k[2] voxels (trailing voxels that fill no block are dropped)."""
    sh = tuple(n // f for n, f in zip(a.shape[:3], k))
    a = a[:sh[0] * k[0], :sh[1] * k[1], :sh[2] * k[2]]
    return a.reshape(sh[0], k[0], sh[1], k[1], sh[2], k[2], *a.shape[3:]).mean(axis=(1, 3, 5))


def _block_pick(a, k):
    """The (middle) voxel of every block: for label maps."""
    sh = tuple(n // f for n, f in zip(a.shape[:3], k))
    c = [(f - 1) // 2 for f in k]
    return a[c[0]::k[0], c[1]::k[1], c[2]::k[2]][:sh[0], :sh[1], :sh[2]]


def _block_average_head(fine: "SimulatedHead", k, snr) -> "SimulatedHead":
    """A thick-voxel acquisition from a noiseless 1 mm simulation: complex GRE signals, SE magnitudes
    and truth maps averaged over blocks of ``k`` voxels (intra-voxel dephasing included), masks kept
    where at least half the block is in, labels from the block's middle voxel; then noise."""
    k = tuple(int(v) for v in k)
    T = {}
    for key, v in fine.truth.items():
        if key.startswith("mask"):
            T[key] = (_block_mean(v.astype(np.float32), k) >= 0.5).astype(np.uint8)
        elif key in ("lesions", "tissue"):
            T[key] = _block_pick(v, k)
        else:
            T[key] = _block_mean(v, k).astype(np.float32)
    T["lesions"] = np.where(T["mask"] > 0, T["lesions"], 0).astype(np.int16)
    A = np.array(fine.affine, float)
    A_c = A.copy()
    A_c[:3, :3] = A[:3, :3] @ np.diag(k)
    A_c[:3, 3] = A[:3, :3] @ ((np.asarray(k) - 1) / 2.0) + A[:3, 3]
    brain = T["mask"] > 0
    sigma = float(T["m0"][brain].mean() / snr) if snr else 0.0
    rng = np.random.default_rng([int(fine.seed), 4242])
    s = _block_mean(fine.gre_mag.astype(np.complex64) * np.exp(1j * fine.gre_phase), k)
    if sigma > 0:
        s = s + (rng.normal(0, sigma, s.shape) + 1j * rng.normal(0, sigma, s.shape))
    gm = np.abs(s).astype(np.float32)
    gp = np.angle(s).astype(np.float32)
    gp[gp >= np.float32(np.pi)] -= np.float32(2 * np.pi)
    del s
    sem = None
    if fine.se_mag is not None:
        sem = _block_mean(fine.se_mag, k).astype(np.float32)
        if sigma > 0:
            sem = np.abs(sem + rng.normal(0, sigma, sem.shape) + 1j * rng.normal(0, sigma, sem.shape)).astype(np.float32)
    vs = np.asarray(fine.voxel_size, float) * np.asarray(k)
    placed = [{"label": r["label"], "subtype": r["subtype"], "rim": r["rim"]} for r in fine.lesion_table]
    table = _lesion_table(placed, T["lesions"], T["chi_para"], T["chi_dia"], vs)
    T["lesions"] = _renumber_lesions(table, T["lesions"])
    params = dict(fine.params, simulated_at_mm=[float(x) for x in fine.voxel_size], block_average=list(k))
    return SimulatedHead(affine=A_c, voxel_size=vs, b0_dir=fine.b0_dir, b0_t=fine.b0_t, te_s=fine.te_s,
                         se_te_s=fine.se_te_s, seed=fine.seed, gre_mag=gm, gre_phase=gp, se_mag=sem, truth=T,
                         lesion_table=table, size=fine.size, snr=snr, noise_sigma=sigma,
                         phase_sign=fine.phase_sign, tilt_deg=fine.tilt_deg, params=params)


def _gre(m0, r2star, f_hz, phi0, te, phase_sign, sigma, rng):
    """Multi-echo GRE magnitude and wrapped phase (X, Y, Z, E) float32."""
    mag = np.empty(m0.shape + (len(te),), np.float32)
    ph = np.empty_like(mag)
    m0d = m0.astype(np.float64)
    for e, t in enumerate(te):
        a = m0d * np.exp(-r2star.astype(np.float64) * t)
        phase = phase_sign * 2.0 * np.pi * f_hz.astype(np.float64) * t + phi0
        if sigma > 0:
            s = a * np.exp(1j * phase)
            s += rng.normal(0, sigma, s.shape) + 1j * rng.normal(0, sigma, s.shape)
            mag[..., e] = np.abs(s)
            p = np.angle(s)
        else:
            mag[..., e] = a
            p = np.angle(np.exp(1j * phase)) * (a > 0)
        p = p.astype(np.float32)
        p[p >= np.float32(np.pi)] -= np.float32(2 * np.pi)
        ph[..., e] = p
    return mag, ph


def _se(m0, r2, se_te, sigma, rng):
    """Multi-echo SE magnitude (X, Y, Z, E) float32: M0 exp(-R2 TE), Rician when ``sigma`` > 0."""
    sem = np.empty(m0.shape + (len(se_te),), np.float32)
    for e, t in enumerate(se_te):
        s = m0 * np.exp(-r2 * np.float32(t))
        if sigma > 0:
            s = np.abs(s + rng.normal(0, sigma, s.shape).astype(np.float32)
                       + 1j * rng.normal(0, sigma, s.shape).astype(np.float32))
        sem[..., e] = s
    return sem


def _affine(grid: _Grid, tilt_deg: float) -> np.ndarray:
    """Voxel -> RAS affine of the grid, rotated about its centre by -tilt about x (oblique)."""
    t = np.deg2rad(tilt_deg)
    R = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(t), np.sin(t)], [0.0, -np.sin(t), np.cos(t)]])
    A = np.eye(4)
    A[:3, :3] = R @ np.diag(grid.vs)
    c = grid.origin + grid.vs * (np.asarray(grid.shape) - 1) / 2.0
    A[:3, 3] = c + R @ (grid.origin - c)
    return A


