"""The evaluation metrics (docs/DESIGN.md, "Evaluation") against analytic cases."""
import math

import numpy as np
import pytest

from chisep import metrics as M
from chisep.io import InputError


def _maps(seed=0, shape=(24, 22, 20)):
    rng = np.random.default_rng(seed)
    from scipy import ndimage as ndi
    t = ndi.gaussian_filter(rng.standard_normal(shape), 2.0) * 0.05 + 0.03
    mask = np.zeros(shape, bool)
    mask[3:-3, 3:-3, 3:-3] = True
    return t, mask


def test_identical_maps():
    t, m = _maps()
    assert M.nrmse(t, t, m) == 0.0
    assert M.psnr(t, t, m) == math.inf
    assert M.ssim3d(t, t, m) == pytest.approx(1.0, abs=1e-12)
    assert M.hfen(t, t, m) == 0.0
    d = M.all_metrics(t, t, m)
    assert set(d) == {"nrmse", "psnr", "ssim", "hfen"}


def test_scaled_map_nrmse_and_hfen():
    t, m = _maps()
    # p = 1.1 t  ->  ||p - t|| / ||t|| = 0.1 exactly, for the LoG too (linear filter)
    assert M.nrmse(1.1 * t, t, m) == pytest.approx(10.0, rel=1e-12)
    assert M.nrmse(0.75 * t, t, m) == pytest.approx(25.0, rel=1e-12)
    assert M.hfen(1.1 * t, t, m) == pytest.approx(10.0, rel=1e-9)


def test_psnr_known_rmse():
    t, m = _maps()
    # constant offset 0.01 ppm -> RMSE 0.01 -> PSNR = 20 log10(1/0.01) = 40 dB
    assert M.psnr(t + 0.01, t, m) == pytest.approx(40.0, abs=1e-9)
    # alternating +-0.001 -> RMSE 0.001 -> 60 dB; with peak 0.1 ppm -> 40 dB
    sign = np.where(np.indices(t.shape).sum(0) % 2 == 0, 1.0, -1.0)
    assert M.psnr(t + 0.001 * sign, t, m) == pytest.approx(60.0, abs=1e-9)
    assert M.psnr(t + 0.001 * sign, t, m, peak=0.1) == pytest.approx(40.0, abs=1e-9)


def test_ssim_matches_reference_and_decreases_with_noise():
    from skimage.metrics import structural_similarity
    t, m = _maps()
    rng = np.random.default_rng(1)
    p = t + 0.01 * rng.standard_normal(t.shape)
    # same SSIM map as scikit-image on the jointly rescaled, masked maps
    pm, tm = np.where(m, p, 0), np.where(m, t, 0)
    lo, hi = min(pm[m].min(), tm[m].min()), max(pm[m].max(), tm[m].max())
    _, ref = structural_similarity((pm - lo) * 255 / (hi - lo), (tm - lo) * 255 / (hi - lo), win_size=7,
                                   data_range=255, use_sample_covariance=False, full=True)
    ours = M.ssim_map(p, t, m)
    assert np.allclose(ours[m], ref[m], atol=1e-9)
    vals = [M.ssim3d(t + s * rng.standard_normal(t.shape), t, m) for s in (0.0, 0.003, 0.01, 0.03)]
    assert vals[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(vals, vals[1:])), vals
    assert vals[-1] < 0.8


def test_nrmse_demeaned_ignores_an_offset():
    rng = np.random.default_rng(1)
    t = rng.standard_normal((6, 6, 6))
    m = np.ones(t.shape, bool)
    assert M.nrmse(t + 0.5, t, m, demean=True) == pytest.approx(0.0, abs=1e-12)
    # a scaled map keeps its error: 10 % too large after removing the means
    tc = t - t.mean()
    assert M.nrmse(1.1 * tc + 3.0, tc, m, demean=True) == pytest.approx(10.0, rel=1e-9)
    assert M.nrmse(t + 0.5, t, m) > 10


def test_evaluation_mask():
    brain = np.zeros((5, 5, 5), bool)
    brain[1:4, 1:4, 1:4] = True
    csf = np.zeros_like(brain)
    csf[2, 2, 2] = True
    ves = np.zeros_like(brain)
    ves[1, 1, 1] = True
    ev = M.evaluation_mask(brain, csf, ves)
    assert ev.sum() == 27 - 2 and not ev[2, 2, 2] and not ev[1, 1, 1]
    assert M.evaluation_mask(brain).sum() == 27


def test_errors():
    t, m = _maps()
    with pytest.raises(InputError, match="shape"):
        M.nrmse(t[:-1], t, m)
    with pytest.raises(InputError, match="empty"):
        M.nrmse(t, t, np.zeros_like(m))
    bad = t.copy()
    bad[10, 10, 10] = np.nan
    with pytest.raises(InputError, match="NaN"):
        M.psnr(bad, t, m)
