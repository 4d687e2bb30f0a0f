"""The hollow-cylinder white-matter model (chisep.fibres) against its analytic limits."""
import numpy as np
import pytest

from chisep import fibres as F
from chisep import physics as P

PAR = F.FibreParams()
THETAS = np.linspace(0.0, np.pi / 2, 13)


def test_fibre_along_b0_has_no_angle_dependent_shift():
    m, a, e = F.pool_frequencies_ppm(0.0, PAR)
    # axonal and extra-axonal water: no offset at all for a fibre along B0
    assert a == 0.0 and e == 0.0
    # myelin water: only the angle-independent part chi_i/3 - chi_a/6 + e remains
    assert m == pytest.approx(PAR.chi_i / 3.0 - PAR.chi_a / 6.0 + PAR.e, abs=1e-15)


def test_every_pool_offset_is_linear_in_sin2_theta():
    s2 = np.sin(THETAS) ** 2
    for k, pool in enumerate(F.pool_frequencies_ppm(THETAS, PAR)):
        d = pool - F.pool_frequencies_ppm(0.0, PAR)[k]
        slope = np.polyfit(s2, d, 1)
        assert np.allclose(np.polyval(slope, s2), d, atol=1e-15)
        assert abs(slope[1]) < 1e-15          # no offset: zero at theta = 0
    # the analytic axonal slope, W&B: (3/4) chi_a ln(1/g)
    a = F.pool_frequencies_ppm(np.pi / 2, PAR)[1]
    assert a == pytest.approx(0.75 * PAR.chi_a * np.log(1 / PAR.g), rel=1e-12)


def test_no_myelin_water_and_fibre_along_b0_is_the_plain_voxel_model():
    te = np.array([0.004, 0.012, 0.02, 0.03])
    s = np.array([F.gre_factor(t, 0.0, 3.0, 0.0, 15.0, PAR) for t in te])
    assert np.allclose(s, np.exp(-15.0 * te), rtol=0, atol=1e-15)
    # without susceptibility sources in the sheath the GRE magnitude is the SE (nothing to refocus)
    p0 = F.FibreParams(chi_i=0.0, chi_a=0.0, e=0.0)
    for t in te:
        assert abs(F.gre_factor(t, 1.0, 7.0, 0.15, 15.0, p0)) == pytest.approx(F.se_factor(t, 0.15, 15.0, p0))


def test_signal_angle_dependence_follows_sin2_theta():
    # the initial phase slope of the WM signal is 2 pi times the water-weighted mean offset, which is
    # a + b sin^2(theta); its angle-dependent part is exactly proportional to sin^2(theta)
    t = 1e-7
    mwf, r2, b0 = 0.12, 15.0, 3.0
    slope = np.array([np.angle(F.gre_factor(t, th, b0, mwf, r2, PAR)) / (2 * np.pi * t) for th in THETAS])
    s2 = np.sin(THETAS) ** 2
    fit = np.polyfit(s2, slope, 1)
    assert np.max(np.abs(np.polyval(fit, s2) - slope)) < 1e-4 * np.ptp(slope)
    fm, fa = mwf, (1 - mwf) * PAR.f_axon
    m90, a90, _ = F.pool_frequencies_ppm(np.pi / 2, PAR)
    m0, _, _ = F.pool_frequencies_ppm(0.0, PAR)
    b_expected = P.ppm_to_hz(fm * (m90 - m0) + fa * a90, b0)
    # (the myelin pool's weight decays a little even over 0.1 us; tolerance covers it)
    assert fit[0] == pytest.approx(b_expected, rel=1e-3)


def test_decay_is_not_mono_exponential_and_dephasing_grows_with_angle():
    te = np.linspace(0.002, 0.04, 12)
    s = np.abs([F.gre_factor(t, np.pi / 2, 3.0, 0.15, 15.0, PAR) for t in te])
    curv = np.diff(np.log(s), 2)
    assert np.max(np.abs(curv)) > 1e-3        # log|S| is not a straight line in TE
    ex = [float(F.excess_r2prime_hz(te, th, 3.0, 0.15, 15.0, PAR)) for th in (0.0, np.pi / 4, np.pi / 2)]
    assert ex[0] < ex[1] < ex[2]
    # and the pool offsets scale with the field: more dephasing at 7 T
    assert float(F.excess_r2prime_hz(te, np.pi / 2, 7.0, 0.15, 15.0, PAR)) > ex[2]


def test_apparent_dia_orientation_mean_is_the_isotropic_value():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((3, 200000))
    v /= np.linalg.norm(v, axis=0)
    th = F.fibre_angle(v, (0.0, 0.0, 1.0))
    app = F.apparent_dia(np.full(th.shape, 0.03), th, 0.5)
    assert app.mean() == pytest.approx(0.03, rel=5e-3)
    # less diamagnetic along B0 (chi_par > chi_perp), more across it
    assert F.apparent_dia(0.03, 0.0, 0.5) < 0.03 < F.apparent_dia(0.03, np.pi / 2, 0.5)


def test_fibre_field_is_unit_and_deterministic():
    f1 = F.fibre_field((16, 16, 8), (1.0, 1.0, 2.0), np.random.default_rng(3))
    f2 = F.fibre_field((16, 16, 8), (1.0, 1.0, 2.0), np.random.default_rng(3))
    assert np.array_equal(f1, f2)
    assert np.allclose(np.linalg.norm(f1, axis=0), 1.0, atol=1e-5)
    th = F.fibre_angle(f1, P.tilted_b0(20.0, "x"))
    assert th.min() >= 0 and th.max() <= np.pi / 2 + 1e-6
