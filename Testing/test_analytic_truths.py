"""Independent truths: fields of a uniformly magnetised sphere and of an infinite cylinder written out
from their closed-form solutions (never through :func:`chisep.physics.forward_field`), and unit
conversions against absolute published constants.

Closed forms (field in ppm of B0, Lorentz-corrected, the convention of the dipole kernel
D(k) = 1/3 - (k.b)^2/|k|^2):

* sphere of radius ``a`` and susceptibility ``dchi`` in a zero background: 0 inside, and
  ``dchi/3 * (a/r)^3 * (3 cos^2(theta) - 1)`` outside (theta: angle between r and B0);
* infinite cylinder at angle ``theta`` to B0: ``dchi/6 * (3 cos^2(theta) - 1)`` inside, and outside
  ``dchi/2 * sin^2(theta) * (a/r)^2 * cos(2 phi)``, which averages to 0 around any ring.
"""
from __future__ import annotations

import numpy as np
import pytest

from chisep import physics, qsm, regularized

N = 48
SUB = 4            # sub-voxel sampling of the voxelised sources (partial volumes at the boundary)
C = (N - 1) / 2.0


def _ball_occupancy(centre, a, n=N):
    g = (np.arange(n * SUB) + 0.5) / SUB - 0.5
    X, Y, Z = np.meshgrid(g - centre[0], g - centre[1], g - centre[2], indexing="ij")
    return ((X ** 2 + Y ** 2 + Z ** 2) <= a * a).reshape(n, SUB, n, SUB, n, SUB).mean((1, 3, 5))


def _sphere_field(centre, a, b0_dir, dchi=1.0, n=N):
    """Closed-form Lorentz-corrected field (ppm) of a sphere; returns (field, r)."""
    x = np.arange(n, dtype=float)
    X, Y, Z = np.meshgrid(x - centre[0], x - centre[1], x - centre[2], indexing="ij")
    r = np.sqrt(X ** 2 + Y ** 2 + Z ** 2)
    b = np.asarray(b0_dir, float) / np.linalg.norm(b0_dir)
    with np.errstate(all="ignore"):
        cos2 = np.where(r > 0, (X * b[0] + Y * b[1] + Z * b[2]) ** 2 / r ** 2, 0.0)
        f = np.where(r > a, dchi * a ** 3 / (3.0 * r ** 3) * (3.0 * cos2 - 1.0), 0.0)
    return f, r


@pytest.fixture(scope="module")
def big_mask():
    x = np.arange(N) - C
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    return np.sqrt(X ** 2 + Y ** 2 + Z ** 2) < 22


# --------------------------------------------------------------------------- forward model
@pytest.mark.parametrize("theta_deg", [0.0, 30.0, np.degrees(np.arccos(1 / np.sqrt(3))), 90.0])
def test_forward_field_of_an_infinite_cylinder_matches_the_closed_form(theta_deg):
    """A cylinder filling the box along the third axis, periodic (no padding) = infinite."""
    a, dchi = 5.0, 0.1
    g = (np.arange(N * SUB) + 0.5) / SUB - 0.5 - C
    X2, Y2 = np.meshgrid(g, g, indexing="ij")
    occ = ((X2 ** 2 + Y2 ** 2) <= a * a).reshape(N, SUB, N, SUB).mean((1, 3))
    chi = np.repeat(occ[:, :, None], N, axis=2) * dchi
    b = physics.tilted_b0(theta_deg, "y")
    f = physics.forward_field(chi, (1, 1, 1), b, pad_factor=1.0)
    x = np.arange(N) - C
    X, Y = np.meshgrid(x, x, indexing="ij")
    r = np.sqrt(X ** 2 + Y ** 2)[:, :, None] * np.ones(N)
    inside = f[r < a - 1.5].mean()
    ring = f[(r > 12) & (r < 14)].mean()          # cos(2 phi) averages out; removes the D(0) offset
    truth = dchi / 6.0 * (3.0 * np.cos(np.radians(theta_deg)) ** 2 - 1.0)
    assert inside - ring == pytest.approx(truth, abs=2e-4 * dchi)
    # inside the cylinder the field is uniform
    assert np.ptp(f[r < a - 1.5]) < 5e-3 * dchi


def test_forward_field_of_a_sphere_matches_the_closed_form():
    a, dchi = 7.0, 0.1
    b = physics.tilted_b0(20.0)
    chi = _ball_occupancy((C, C, C), a) * dchi
    f_true, r = _sphere_field((C, C, C), a, b, dchi)
    f = physics.forward_field(chi, (1, 1, 1), b, pad_factor=3.0)
    # 0 inside (voxelised boundary: measured mean 0.0003, max 0.022 of dchi)
    assert abs(f[r < a - 2].mean()) < 0.003 * dchi and np.abs(f[r < a - 2]).max() < 0.04 * dchi
    out = (r > a + 2) & (r < 20)
    # dipole outside (measured: max error 1.4 %, mean 0.1 % of the peak)
    err = np.abs(f - f_true)[out] / np.abs(f_true).max()
    assert err.max() < 0.03 and err.mean() < 0.004
    # and the pole/equator values themselves: dchi*2/3 and -dchi/3 at the surface, scaled by (a/r)^3
    assert f_true[out].max() == pytest.approx(2 * dchi / 3 * (a / (a + 2.5)) ** 3, rel=0.2)


# --------------------------------------------------------------------------- QSM
@pytest.mark.parametrize("tilt", [0.0, 25.0])
def test_qsm_recovers_a_sphere_from_its_closed_form_field(big_mask, tilt):
    a, dchi = 7.0, 0.1
    b = physics.tilted_b0(tilt)
    f, r = _sphere_field((C, C, C), a, b, dchi)
    inner, shell = r < a - 2, (r > a + 3) & (r < a + 7)
    cf = qsm.qsm_closed_form(f, big_mask, b0_dir=b)
    it = qsm.qsm_iterative(f, big_mask, b0_dir=b)
    # contrast sphere - surroundings (the mean is not determined by a field)
    c_cf = (cf[inner].mean() - cf[shell].mean()) / dchi
    c_it = (it[inner].mean() - it[shell].mean()) / dchi
    assert 0.80 < c_cf < 0.92        # closed form: L2 gradient regularisation lowers contrast (0.86)
    assert 0.92 < c_it < 1.03        # iterative TV: 0.96
    # a wrong B0 direction (the data were tilted, the inversion assumes no tilt) must not fit as well
    if tilt:
        res_right = np.abs(physics.forward_field(it, (1, 1, 1), b, 2.0) - f)[big_mask].mean()
        assert res_right < 0.1 * np.abs(f)[big_mask].mean()


# --------------------------------------------------------------------------- regularized separation
def test_regularized_separates_a_para_and_a_dia_sphere():
    """A paramagnetic and a diamagnetic sphere, field from the closed form, R2' = Dr (para + |dia|)."""
    b = physics.tilted_b0(25.0)
    a = 6.0
    cp, cd = (16.0, C, C), (31.0, C, C)
    para, dia = 0.08, 0.06
    fp, rp = _sphere_field(cp, a, b)
    fd, rd = _sphere_field(cd, a, b)
    f = para * fp - dia * fd
    x = np.arange(N) - C
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    mask = np.sqrt(X ** 2 + Y ** 2 + Z ** 2) < 22
    dr = physics.dr_conventional(3.0)
    assert dr == pytest.approx(137.0 * 3.0 / 2.89)
    r2p = dr * (para * _ball_occupancy(cp, a) + dia * _ball_occupancy(cd, a)) + 2.0
    res = regularized.chi_separation_regularized(f.astype(np.float32), r2p.astype(np.float32), mask, b0_dir=b)
    ip, idd = rp < a - 2, rd < a - 2
    bg = mask & (rp > a + 3) & (rd > a + 3)
    p, d = res["chi_para"], res["chi_dia"]
    # measured: para 0.0788 in the para sphere, dia 0.0588 in the dia sphere, cross-talk < 0.001
    assert p[ip].mean() - np.median(p[bg]) == pytest.approx(para, abs=0.006)
    assert d[idd].mean() - np.median(d[bg]) == pytest.approx(dia, abs=0.006)
    assert abs(p[idd].mean() - np.median(p[bg])) < 0.005
    assert abs(d[ip].mean() - np.median(d[bg])) < 0.005
    np.testing.assert_allclose(res["chi_total"], p - d, atol=1e-6)


# --------------------------------------------------------------------------- units
def test_gyromagnetic_ratio_and_centre_frequencies_are_absolute():
    assert physics.GAMMA_BAR_MHZ_PER_T == 42.577478            # CODATA 2018, 1H
    assert physics.center_frequency_hz(3.0) == pytest.approx(127.732434e6, abs=1.0)
    assert physics.center_frequency_hz(1.5) == pytest.approx(63.866217e6, abs=1.0)
    assert physics.center_frequency_hz(7.0) == pytest.approx(298.042346e6, abs=1.0)


@pytest.mark.parametrize("b0,hz_per_ppm", [(1.5, 63.866217), (3.0, 127.732434), (7.0, 298.042346)])
def test_hz_ppm_at_each_field_strength(b0, hz_per_ppm):
    assert float(physics.ppm_to_hz(1.0, b0)) == pytest.approx(hz_per_ppm, rel=1e-8)
    assert float(physics.hz_to_ppm(hz_per_ppm, b0)) == pytest.approx(1.0, rel=1e-8)
    assert float(physics.convert_field(0.05, "ppm", "hz", b0)) == pytest.approx(0.05 * hz_per_ppm, rel=1e-8)
    assert float(physics.convert_field(10.0, "hz", "ppm", b0)) == pytest.approx(10.0 / hz_per_ppm, rel=1e-8)


def test_radians_and_hz_with_two_pi():
    # 10 Hz over 25 ms: 0.25 cycles = pi/2 rad
    assert float(physics.hz_to_rad(10.0, 0.025)) == pytest.approx(np.pi / 2, rel=1e-12)
    # pi rad over 5 ms: half a cycle in 5 ms = 100 Hz
    assert float(physics.rad_to_hz(np.pi, 0.005)) == pytest.approx(100.0, rel=1e-12)
    # 1 rad over 20 ms at 3 T: 1/(2 pi 0.02) = 7.957747 Hz = 0.0622997 ppm
    assert float(physics.convert_field(1.0, "rad", "hz", 3.0, te_s=0.02)) == pytest.approx(7.957747, rel=1e-6)
    assert float(physics.convert_field(1.0, "rad", "ppm", 3.0, te_s=0.02)) == pytest.approx(
        7.957747 / 127.732434, rel=1e-6)
    assert float(physics.convert_field(7.957747 / 127.732434, "ppm", "rad", 3.0, te_s=0.02)) == pytest.approx(
        1.0, rel=1e-6)


def test_dipole_kernel_values_at_known_directions():
    d = physics.dipole_kernel((8, 8, 8), (1, 1, 1), (0, 0, 1))
    assert d[0, 0, 1] == pytest.approx(1 / 3 - 1)     # k parallel to B0: -2/3
    assert d[1, 0, 0] == pytest.approx(1 / 3)         # k perpendicular to B0: +1/3
    assert d[1, 0, 1] == pytest.approx(1 / 3 - 0.5)   # 45 degrees: -1/6
    assert d[0, 0, 0] == 0.0
