"""Lesion classification against hand-computed z-scores, with lesions just above and just below every
threshold, and paramagnetic rims with and without the "above the reference" condition.

The reference (NAWM) is a white-matter slab far from every lesion, so the reference sample is exactly
the slab's voxels and its median and 1.4826*MAD are computed here with plain numpy, independently of
:mod:`chisep.lesions`. Each lesion is a cube of one value placed at a chosen z.
"""
from __future__ import annotations

import numpy as np
import pytest

from chisep import lesions as L

SHAPE = (72, 40, 40)
SLAB = (slice(2, 14), slice(2, 38), slice(2, 38))       # white matter = reference
REF_SD = {"chi_para": 0.010, "chi_dia": 0.008, "chi_total": 0.0004}
REF_MEAN = {"chi_para": 0.020, "chi_dia": 0.030, "chi_total": -0.010}
Z_SMALL = [2.05, 1.95, -2.05, -1.95, 1.55, -1.55, 1.02]   # 3x3x3 cubes at these z (chi_para, chi_dia)
# chi_total: tiny reference scale, so a large z can sit below the 0.005 ppm minimum difference
Z_TOTAL = [40.0, 13.5, 11.5, -13.5, -11.5, 1.0, 0.0]       # diffs 0.016, 0.0054, 0.0046, ...


def _hand_ref(values):
    med = np.median(values)
    return med, 1.4826 * np.median(np.abs(values - med))


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(12)
    maps = {k: np.zeros(SHAPE) for k in REF_SD}
    for k in maps:
        maps[k][SLAB] = rng.normal(REF_MEAN[k], REF_SD[k], maps[k][SLAB].shape)
        # a few outliers (veins) that a robust reference ignores and a mean/SD one does not
        maps[k][SLAB][:3, :3, :3] += 20 * REF_SD[k]
    wm = np.zeros(SHAPE, bool)
    wm[SLAB] = True
    ref = {k: _hand_ref(maps[k][SLAB].ravel()) for k in maps}
    labels = np.zeros(SHAPE, np.int32)
    expect = {}
    lab = 0
    # small lesions along x >= 20, two rows in y
    for i, (zp, zt) in enumerate(zip(Z_SMALL, Z_TOTAL)):
        lab += 1
        x0, y0, z0 = 20 + 6 * i, 6, 8
        sl = (slice(x0, x0 + 3), slice(y0, y0 + 3), slice(z0, z0 + 3))
        labels[sl] = lab
        for k, z in (("chi_para", zp), ("chi_dia", -zp), ("chi_total", zt)):
            loc, sc = ref[k]
            maps[k][sl] = loc + z * sc
        expect[lab] = (zp, -zp, zt)
    # rim lesions (7^3 cubes: one-voxel ring, 5^3 core); values relative to the chi_para reference
    loc, sc = ref["chi_para"]
    rims = {}   # label -> (ring - ref, core - ref, rim expected)
    for j, (ring_d, core_d, rim) in enumerate([
            (0.030, 0.000, True),      # bright ring above core and reference
            (-0.020, -0.080, False),   # ring above core by 0.06 but BELOW the reference
            (0.0105, -0.050, True),    # ring just above reference + 0.01
            (0.0095, -0.050, False),   # ring just below reference + 0.01
            (0.030, 0.0205, False),    # ring only 0.0095 above the core
            (0.030, 0.0195, True)]):   # ring 0.0105 above the core
        lab += 1
        x0, y0, z0 = 20 + 8 * j, 20, 18
        sl = (slice(x0, x0 + 7), slice(y0, y0 + 7), slice(z0, z0 + 7))
        labels[sl] = lab
        maps["chi_para"][sl] = loc + ring_d
        maps["chi_para"][x0 + 1:x0 + 6, y0 + 1:y0 + 6, z0 + 1:z0 + 6] = loc + core_d
        rims[lab] = (ring_d, core_d, rim)
    rows = L.lesion_statistics(maps, labels, np.eye(4), wm_mask=wm, brain_mask=np.ones(SHAPE, bool))
    return {"maps": maps, "labels": labels, "wm": wm, "ref": ref, "expect": expect, "rims": rims,
            "rows": {r["label"]: r for r in rows}}


def _cls(z, diff, md=0.005):
    if z > 2.0 and diff > md:
        return "hyper"
    if z < -2.0 and diff < -md:
        return "hypo"
    return "iso"


def test_reference_is_the_hand_computed_median_and_mad(scene):
    for lab, row in scene["rows"].items():
        assert row["reference"] == "wm" and row["ref_n_voxels"] == scene["wm"].sum()
        for k, (loc, sc) in scene["ref"].items():
            assert row[f"{k}_ref_median"] == pytest.approx(loc, rel=1e-9, abs=1e-12)
    # the robust scale is 1.4826 MAD, i.e. close to the SD the slab was drawn with (not the raw MAD)
    for k, (loc, sc) in scene["ref"].items():
        assert sc == pytest.approx(REF_SD[k], rel=0.03)


@pytest.mark.parametrize("k,col", [("chi_para", 0), ("chi_dia", 1), ("chi_total", 2)])
def test_z_scores_and_classes_just_above_and_below_each_threshold(scene, k, col):
    loc, sc = scene["ref"][k]
    for lab, zs in scene["expect"].items():
        row = scene["rows"][lab]
        z = zs[col]
        assert row[f"{k}_z"] == pytest.approx(z, abs=1e-6), (lab, k)
        assert row[f"{k}_diff"] == pytest.approx(z * sc, rel=1e-6, abs=1e-12)
        assert row[f"{k}_class"] == _cls(z, z * sc), (lab, k, z)


def test_expected_classes_are_the_ones_the_thresholds_imply(scene):
    """Spelled out, so that a changed threshold reads as a changed class here."""
    rows = scene["rows"]
    got = [(rows[lab]["chi_para_class"], rows[lab]["chi_dia_class"], rows[lab]["chi_total_class"])
           for lab in sorted(scene["expect"])]
    assert got == [("hyper", "hypo", "hyper"),   # z +-2.05; total diff 0.016 > 0.005
                   ("iso", "iso", "hyper"),      # z +-1.95; total z 13.5, diff 0.0054 > 0.005
                   ("hypo", "hyper", "iso"),     # z -+2.05; total z 11.5 but diff 0.0046 < 0.005
                   ("iso", "iso", "hypo"),       # z -+1.95; total z -13.5
                   ("iso", "iso", "iso"),        # z +-1.55; total z -11.5, diff -0.0046
                   ("iso", "iso", "iso"),        # z -+1.55
                   ("iso", "iso", "iso")]        # z 1.02
    assert rows[1]["subtype"] == "both" and rows[2]["subtype"] == "neither"


def test_non_robust_reference_is_mean_and_sd(scene):
    maps, labels = scene["maps"], scene["labels"]
    rows = L.lesion_statistics({"chi_para": maps["chi_para"]}, labels, np.eye(4), wm_mask=scene["wm"],
                               brain_mask=np.ones(SHAPE, bool), robust=False)
    ref = maps["chi_para"][SLAB].ravel()
    for r in rows:
        diff = r["chi_para_mean"] - ref.mean()
        assert r["chi_para_z"] == pytest.approx(diff / ref.std(), rel=1e-6)


def test_rims_with_and_without_the_reference_condition(scene):
    loc = scene["ref"]["chi_para"][0]
    for lab, (ring_d, core_d, rim) in scene["rims"].items():
        row = scene["rows"][lab]
        assert row["rim_evaluable"] and row["core_n_voxels"] == 125 and row["rim_n_voxels"] == 343 - 125
        assert row["rim_chi_para_mean"] == pytest.approx(loc + ring_d, abs=1e-12)
        assert row["core_chi_para_mean"] == pytest.approx(loc + core_d, abs=1e-12)
        assert row["rim"] is rim, (lab, ring_d, core_d)


def test_classify_rule_at_the_boundaries():
    assert L.DEFAULT_Z_THRESHOLD == 2.0 and L.DEFAULT_RIM_MIN_DIFF == 0.01
    assert L.DEFAULT_MIN_DIFF["chi_para"] == 0.005 and L.DEFAULT_MIN_DIFF["r2prime"] == 0.5
    assert L.classify(0.02, 2.0001, 2.0, 0.005) == "hyper"
    assert L.classify(0.02, 1.9999, 2.0, 0.005) == "iso"
    assert L.classify(-0.02, -2.0001, 2.0, 0.005) == "hypo"
    assert L.classify(0.0049, 9.0, 2.0, 0.005) == "iso"
    loc, sc = L.location_scale(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
    assert loc == 3.0 and sc == pytest.approx(1.4826 * 1.0)


def test_shell_reference_is_the_ring_between_its_radii():
    """Without a WM mask the reference is the ring 2 < d <= 5 mm around each lesion (distances between
    voxel centres). Voxels closer than 2 mm (partial volume, oedema) hold a very different value and
    must not enter the reference; the ring holds a known sample whose median/1.4826 MAD are computed
    here."""
    n = 32
    c = np.array([16, 16, 16])
    idx = np.indices((n, n, n)).transpose(1, 2, 3, 0)
    lesion = np.all(np.abs(idx - c) <= 1, axis=-1)                       # 3x3x3 cube
    from scipy import ndimage as ndi
    d = ndi.distance_transform_edt(~lesion)
    rng = np.random.default_rng(5)
    chi = np.zeros((n, n, n))
    near = (d > 0) & (d <= 2.0)
    ring = (d > 2.0) & (d <= 5.0)
    chi[near] = 0.5                                                       # far off: must be excluded
    chi[ring] = rng.normal(0.02, 0.01, ring.sum())
    loc, sc = _hand_ref(chi[ring])
    chi[lesion] = loc + 2.05 * sc
    brain = np.ones((n, n, n), bool)
    row = L.lesion_statistics({"chi_para": chi}, lesion.astype(np.uint8), np.eye(4), brain_mask=brain,
                              exclusion_mm=0.0)[0]
    assert row["reference"] == "shell" and row["ref_n_voxels"] == int(ring.sum())
    assert row["chi_para_ref_median"] == pytest.approx(loc, abs=1e-12)
    assert row["chi_para_z"] == pytest.approx(2.05, abs=1e-6) and row["chi_para_class"] == "hyper"
