"""Physics core: dipole kernel, forward field, units, relaxation model (analytic truths)."""
import numpy as np
import pytest

from chisep import physics as P


def _sphere(n, radius, ss=3):
    c = n / 2
    g = np.meshgrid(*[np.arange(n) - c] * 3, indexing="ij")
    chi = np.zeros((n, n, n))
    off = (np.arange(ss) + 0.5) / ss - 0.5
    for a in off:
        for b in off:
            for d in off:
                chi += ((g[0] + a) ** 2 + (g[1] + b) ** 2 + (g[2] + d) ** 2) <= radius ** 2
    return chi / ss ** 3, np.array([c, c, c])


@pytest.mark.parametrize("tilt", [0.0, 30.0])
def test_sphere_matches_analytic(tilt):
    chi, c = _sphere(64, 8)
    b0 = P.tilted_b0(tilt)
    f = P.forward_field(chi * 0.1, (1, 1, 1), b0)
    fa, r = P.sphere_field_analytic(chi.shape, (1, 1, 1), c, 8, 0.1, b0)
    shell = (r > 1.5 * 8) & (r < 3 * 8)
    rel = np.sqrt(np.mean((f - fa)[shell] ** 2)) / np.sqrt(np.mean(fa[shell] ** 2))
    assert rel < 0.05
    inside = r < 0.6 * 8
    # inside a uniformly magnetised sphere the (Lorentz-corrected) field vanishes: compare with
    # the surface field at the poles, 2/3 delta_chi
    assert np.sqrt(np.mean(f[inside] ** 2)) < 0.02 * (2 / 3 * 0.1)


def test_anisotropic_voxels_sphere():
    # 1x1x2 mm voxels: a sphere of radius 8 mm sampled on the anisotropic grid
    n = (64, 64, 32)
    vs = np.array([1.0, 1.0, 2.0])
    c = np.array(n) * vs / 2
    ss = 3
    off = (np.arange(ss) + 0.5) / ss - 0.5
    g = [np.arange(k) * d - cc for k, d, cc in zip(n, vs, c)]
    chi = np.zeros(n)
    for a in off:
        for b in off:
            for d in off:
                X, Y, Z = np.meshgrid(g[0] + a * vs[0], g[1] + b * vs[1], g[2] + d * vs[2], indexing="ij")
                chi += (X ** 2 + Y ** 2 + Z ** 2) <= 64
    chi /= ss ** 3
    f = P.forward_field(chi, vs, (0, 0, 1))
    fa, r = P.sphere_field_analytic(n, vs, c, 8, 1.0, (0, 0, 1))
    shell = (r > 12) & (r < 24)
    rel = np.sqrt(np.mean((f - fa)[shell] ** 2)) / np.sqrt(np.mean(fa[shell] ** 2))
    assert rel < 0.05


def test_kernel_properties():
    d = P.dipole_kernel((16, 18, 20), (1, 1, 2), P.tilted_b0(20))
    assert d[0, 0, 0] == 0.0
    assert d.max() <= 1 / 3 + 1e-12 and d.min() >= -2 / 3 - 1e-12
    d13 = P.dipole_kernel((8, 8, 8), dc=1 / 3)
    assert d13[0, 0, 0] == pytest.approx(1 / 3)
    # a flipped B0 gives the same kernel
    np.testing.assert_allclose(P.dipole_kernel((8, 8, 8), b0_dir=(0, 0, -1)), P.dipole_kernel((8, 8, 8)))


def test_unit_round_trips():
    rng = np.random.default_rng(0)
    f = rng.normal(size=1000) * 0.05
    for b0 in (1.5, 3.0, 7.0):
        np.testing.assert_allclose(P.hz_to_ppm(P.ppm_to_hz(f, b0), b0), f, rtol=1e-12, atol=0)
        hz = P.ppm_to_hz(f, b0)
        np.testing.assert_allclose(P.rad_to_hz(P.hz_to_rad(hz, 0.02), 0.02), hz, rtol=1e-12)
        np.testing.assert_allclose(P.convert_field(P.convert_field(f, "ppm", "rad", b0, te_s=0.011),
                                                   "rad", "ppm", b0, te_s=0.011), f, rtol=1e-12)
    assert P.center_frequency_hz(3.0) == pytest.approx(127.732434e6)
    assert P.ppm_to_hz(1.0, 3.0) == pytest.approx(127.732434)


def test_r2prime_round_trip_exact():
    rng = np.random.default_rng(1)
    para = rng.uniform(0, 0.2, 500)
    dia = rng.uniform(0, 0.1, 500)
    for drp, drn in ((114.0, None), (137.0, 120.0)):
        r2p = P.r2prime_from_chi(para, dia, drp, drn)
        p2, d2 = P.chi_from_r2prime_and_total(r2p, para - dia, drp, drn)
        np.testing.assert_allclose(p2, para, atol=1e-14)
        np.testing.assert_allclose(d2, dia, atol=1e-14)
    np.testing.assert_array_equal(P.r2prime_from_r2star_r2([10.0, 20.0], [15.0, 12.0]), [0.0, 8.0])
    assert P.dr_conventional(2.89) == pytest.approx(137.0)
    assert P.dr_conventional(5.78) == pytest.approx(274.0)


def test_field_linearity_and_superposition():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(20, 22, 24))
    b = rng.normal(size=(20, 22, 24))
    fa = P.forward_field(a, (1, 1, 1.5), P.tilted_b0(10))
    fb = P.forward_field(b, (1, 1, 1.5), P.tilted_b0(10))
    fab = P.forward_field(2 * a - b, (1, 1, 1.5), P.tilted_b0(10))
    np.testing.assert_allclose(fab, 2 * fa - fb, atol=1e-10)


def test_b0_direction_from_affine():
    np.testing.assert_allclose(P.b0_direction_from_affine(np.diag([1, 1, 2, 1])), [0, 0, 1])
    t = np.deg2rad(25)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([1.0, 1.0, 2.0])
    b = P.b0_direction_from_affine(aff)
    np.testing.assert_allclose(b, rot.T @ [0, 0, 1], atol=1e-12)
    assert np.degrees(np.arccos(b[2])) == pytest.approx(25)
    with pytest.raises(ValueError):
        P.b0_direction_from_affine(np.zeros((4, 4)))


def test_bad_inputs():
    with pytest.raises(ValueError):
        P.forward_field(np.zeros((4, 4)))
    with pytest.raises(ValueError):
        P.forward_field(np.full((4, 4, 4), np.nan))
    with pytest.raises(ValueError):
        P.center_frequency_hz(0)
    with pytest.raises(ValueError):
        P.convert_field(1.0, "ppm", "tesla", 3.0)
    with pytest.raises(ValueError):
        P.convert_field(1.0, "rad", "ppm", 3.0)
