"""White matter as myelinated fibres: a hollow-cylinder model (after Wharton & Bowtell, PNAS 2012).

Real white matter is not a bag of isotropic susceptibility: myelin is a sheath of lipid whose
susceptibility is anisotropic (a radial principal axis), wrapped round an axon. Two consequences
for a gradient-echo acquisition, both ignored by a voxel model ``S = M0 exp(-R2* t + i 2 pi f t)``:

1. The water in the voxel sits in three pools with different frequencies that depend on the fibre
   angle ``theta`` to B0: myelin water (between the lipid layers, short T2), axonal water and
   extra-axonal water. The pools beat against each other, so the decay is not mono-exponential and
   the phase is not linear in TE. A spin echo refocuses the offsets (only the T2 mixture remains).
2. The bulk ("apparent") susceptibility that makes the macroscopic field depends on the angle:
   ``chi_app(theta) = chi_perp + d_chi cos^2 theta`` with ``d_chi = chi_par - chi_perp > 0``
   (white matter looks less diamagnetic along B0).

Pool frequencies (ppm of the applied field; ``g`` = g-ratio = r_inner / r_outer; ``chi_i``,
``chi_a`` isotropic and anisotropic myelin susceptibility; ``e`` = exchange offset of myelin water)::

    axon:   (3/4) chi_a ln(1/g) sin^2 theta
    myelin: chi_i/2 (cos^2 theta - 1/3) + chi_a ((3/4) L(g) - 5/12) sin^2 theta - chi_a/6 cos^2 theta + e
            with L(g) = 1/2 - g^2 ln(1/g) / (1 - g^2) the area mean of ln(r_outer/r) over the sheath
    extra-axonal: 0 (the cos 2phi pattern round each fibre averages out over the voxel)

Every pool offset is ``a + b sin^2 theta``; the angle-dependent part (``b sin^2 theta``) vanishes
for fibres along B0, where the axonal and extra-axonal pools have no offset at all.

Public functions (numpy, vectorised over voxels)::

    pool_frequencies_ppm(theta, params) -> (myelin, axon, extra)
    gre_factor(te_s, theta, b0_t, mwf, r2_hz, params) -> complex factor of the WM GRE signal
    se_factor(te_s, mwf, r2_hz, params) -> real factor of the WM SE signal
    fibre_field(shape, voxel_size, rng, sigma_mm) -> unit fibre directions (3, X, Y, Z)
    apparent_dia(chi_dia_iso, theta, ratio) -> |chi_dia| apparent at angle theta
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from . import physics


@dataclass(frozen=True)
class FibreParams:
    """Hollow-cylinder parameters (ppm, s). Defaults near W&B 2012's fits to human white matter
    (chi_i about -0.06 ppm, chi_a about -0.12 ppm, exchange offset 0.02 ppm, g 0.7-0.8) and a
    myelin-water T2 of ~12 ms."""
    chi_i: float = -0.06
    chi_a: float = -0.12
    e: float = 0.02
    g: float = 0.8
    t2_myelin_s: float = 0.012
    f_axon: float = 0.5        # axonal share of the non-myelin water


def _l_mean(g: float) -> float:
    return 0.5 - g * g * np.log(1.0 / g) / (1.0 - g * g)


def pool_frequencies_ppm(theta, p: FibreParams = FibreParams()):
    """(myelin, axon, extra-axonal) frequency offsets in ppm of B0, for fibre angle ``theta`` (rad)."""
    th = np.asarray(theta, dtype=np.float64)
    s2 = np.sin(th) ** 2
    c2 = 1.0 - s2
    axon = 0.75 * p.chi_a * np.log(1.0 / p.g) * s2
    myelin = (0.5 * p.chi_i * (c2 - 1.0 / 3.0) + p.chi_a * (0.75 * _l_mean(p.g) - 5.0 / 12.0) * s2
              - p.chi_a / 6.0 * c2 + p.e)
    return myelin, axon, np.zeros_like(th)


def _fractions(mwf, p: FibreParams):
    mwf = np.asarray(mwf, dtype=np.float64)
    rest = 1.0 - mwf
    return mwf, rest * p.f_axon, rest * (1.0 - p.f_axon)


def gre_factor(te_s, theta, b0_t: float, mwf, r2_hz, p: FibreParams = FibreParams()):
    """Complex WM GRE factor at echo time ``te_s`` (multiplies M0 and the bulk phase/R2' terms).

    The long pools (axon, extra-axonal) relax with the voxel's ``r2_hz``, myelin water with
    1/``t2_myelin_s``; each pool precesses at its hollow-cylinder offset. At theta = 0 with
    ``mwf`` = 0 this is ``exp(-r2 t)``: the plain voxel model."""
    t = float(te_s)
    fm, fa, fe = _fractions(mwf, p)
    dm, da, de = (physics.ppm_to_hz(x, b0_t) for x in pool_frequencies_ppm(theta, p))
    r2 = np.asarray(r2_hz, dtype=np.float64)
    long_ = np.exp(-r2 * t)
    return (fm * np.exp(-t / p.t2_myelin_s) * np.exp(2j * np.pi * dm * t)
            + fa * long_ * np.exp(2j * np.pi * da * t)
            + fe * long_ * np.exp(2j * np.pi * de * t))


def se_factor(te_s, mwf, r2_hz, p: FibreParams = FibreParams()):
    """Real WM spin-echo factor: the pool offsets are refocused, the T2 mixture remains."""
    t = float(te_s)
    fm, fa, fe = _fractions(mwf, p)
    r2 = np.asarray(r2_hz, dtype=np.float64)
    return fm * np.exp(-t / p.t2_myelin_s) + (fa + fe) * np.exp(-r2 * t)


def mwf_from_dia(chi_dia_ppm, ref_dia_ppm: float = 0.029, ref_mwf: float = 0.12):
    """Myelin-water fraction proportional to the myelin (|chi_dia|) content, clipped to 0.02-0.25."""
    return np.clip(ref_mwf * np.asarray(chi_dia_ppm, np.float64) / ref_dia_ppm, 0.02, 0.25)


def fibre_field(shape, voxel_size, rng, sigma_mm: float = 8.0) -> np.ndarray:
    """Smoothly varying random unit fibre directions (3, X, Y, Z) float32 (tract-like coherence over
    ``sigma_mm``)."""
    vs = np.asarray(voxel_size, float)
    sig = [sigma_mm / v for v in vs]
    v = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sig, mode="wrap")
                  for _ in range(3)])
    n = np.sqrt((v * v).sum(0))
    return (v / np.maximum(n, 1e-8)).astype(np.float32)


def fibre_angle(fibres: np.ndarray, b0_dir) -> np.ndarray:
    """Angle (rad, 0..pi/2) between fibre directions (3, ...) and B0 (array frame)."""
    b = np.asarray(b0_dir, float)
    b = b / np.linalg.norm(b)
    c = np.abs(np.tensordot(b, fibres, axes=(0, 0)))
    return np.arccos(np.clip(c, 0.0, 1.0)).astype(np.float32)


def apparent_dia(chi_dia_iso, theta, ratio: float):
    """|chi_dia| that makes the bulk field at fibre angle ``theta``: the orientation mean
    ``chi_dia_iso`` minus ``d_chi (cos^2 theta - 1/3)`` with ``d_chi = ratio * chi_dia_iso``
    (chi_par - chi_perp > 0: less diamagnetic along B0). The mean over all angles is ``chi_dia_iso``."""
    c2 = np.cos(np.asarray(theta, np.float64)) ** 2
    d = np.asarray(chi_dia_iso, np.float64)
    return np.clip(d - ratio * d * (c2 - 1.0 / 3.0), 0.0, None)


def excess_r2prime_hz(te_s, theta, b0_t: float, mwf, r2_hz, p: FibreParams = FibreParams()):
    """The R2' a mono-exponential R2* - R2 fit would read from the pool model alone (log-linear
    fits over ``te_s`` of |GRE factor| and of the SE factor): the orientation-dependent part of WM R2'."""
    te = np.asarray(te_s, float)
    tc = te - te.mean()
    den = float((tc ** 2).sum())
    acc_g = 0.0
    acc_s = 0.0
    for t, c in zip(te, tc):
        acc_g = acc_g + np.log(np.abs(gre_factor(t, theta, b0_t, mwf, r2_hz, p))) * c
        acc_s = acc_s + np.log(se_factor(t, mwf, r2_hz, p)) * c
    return (-acc_g + acc_s) / den
