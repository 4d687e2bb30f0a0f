"""The simulated head: acquisitions match the signal model after the NIfTI round trip, the truth is
self-consistent and realistic, seeds differ, tilt/voxel/noise options work, bad arguments fail clearly."""
from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import scipy.ndimage as ndi

from chisep import physics
from chisep.io import InputError
from chisep.simulate import TISSUE_LABELS, simulate_head, write_simulation

TRUTH_NAMES = ("chi_para", "chi_dia", "chi_total", "local_field", "total_field", "background_field",
               "r2", "r2star", "r2prime", "m0", "mask", "mask_csf", "mask_vessels", "lesions", "tissue")


@pytest.fixture(scope="module")
def head():
    return simulate_head(seed=3, size="small", snr=0)


@pytest.fixture(scope="module")
def written(head, tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    write_simulation(head, d)
    return d


def _wrap(p):
    return np.angle(np.exp(1j * p))


def test_roundtrip_phase_and_magnitude_match_model(head, written):
    mag = nib.load(str(written / "gre_mag.nii.gz"))
    ph = nib.load(str(written / "gre_phase.nii.gz"))
    side = json.loads((written / "gre_phase.json").read_text())
    te = np.asarray(side["EchoTime"])
    assert np.allclose(te, head.te_s) and side["MagneticFieldStrength"] == 3.0
    assert side["ImagingFrequency"] == pytest.approx(127.732434, abs=1e-5)
    assert np.allclose(mag.affine, head.affine) and np.allclose(ph.affine, head.affine)
    m = np.asarray(mag.dataobj, dtype=np.float32)
    p = np.asarray(ph.dataobj, dtype=np.float32)
    assert m.shape == head.gre_mag.shape and m.shape[:3] == (64, 64, 64) and m.shape[3] == 5
    t = {k: np.asarray(nib.load(str(written / "truth" / f"{k}.nii.gz")).dataobj)
         for k in ("total_field", "m0", "r2star", "phi0")}
    f_hz = physics.ppm_to_hz(t["total_field"].astype(np.float64), 3.0)
    inside = t["m0"] > 0
    assert inside.sum() > 0.9 * inside.size
    assert p.min() >= -np.pi and p.max() < np.pi
    n_wrapped = 0
    for e, tt in enumerate(te):
        expect = 2 * np.pi * f_hz * tt + t["phi0"]
        d = _wrap(p[..., e] - expect)[inside]
        assert np.abs(d).max() < 2e-4, f"echo {e}: phase off by {np.abs(d).max()}"
        expect_mag = t["m0"] * np.exp(-t["r2star"].astype(np.float64) * tt)
        assert np.allclose(m[..., e], expect_mag, rtol=2e-5, atol=1e-7)
        n_wrapped += int((np.abs(expect[inside]) > np.pi).sum())
    assert n_wrapped > 1000          # the phase really wraps
    # SE magnitudes: M0 exp(-R2 TE)
    se = np.asarray(nib.load(str(written / "se_mag.nii.gz")).dataobj)
    r2 = np.asarray(nib.load(str(written / "truth" / "r2.nii.gz")).dataobj).astype(np.float64)
    se_te = json.loads((written / "se_mag.json").read_text())["EchoTime"]
    assert np.allclose(se_te, head.se_te_s)
    for e, tt in enumerate(se_te):
        assert np.allclose(se[..., e], t["m0"] * np.exp(-r2 * tt), rtol=2e-5, atol=1e-7)


def test_written_files_and_labels(head, written):
    for name in TRUTH_NAMES:
        assert (written / "truth" / f"{name}.nii.gz").exists(), name
    assert json.loads((written / "truth" / "tissue_labels.json").read_text()) == TISSUE_LABELS
    side = json.loads((written / "gre_mag.json").read_text())
    assert np.allclose(side["B0Direction"], head.b0_dir) and side["PhaseSign"] == 1
    lab = np.asarray(nib.load(str(written / "truth" / "lesions.nii.gz")).dataobj)
    assert np.array_equal(lab, head.truth["lesions"])


def test_lesion_table_matches_maps(head, written):
    T = head.truth
    lab = T["lesions"]
    table = head.lesion_table
    assert len(table) >= 4
    assert sorted(r["label"] for r in table) == sorted(int(v) for v in np.unique(lab) if v > 0)
    assert {r["subtype"] for r in table} == {"iron", "demyelinated", "both", "neither"}
    assert any(r["rim"] for r in table)
    for r in table:
        sel = lab == r["label"]
        assert r["n_voxels"] == sel.sum()
        assert r["volume_mm3"] == pytest.approx(sel.sum() * np.prod(head.voxel_size))
        assert r["chi_para_mean"] == pytest.approx(T["chi_para"][sel].mean(), rel=1e-5)
        assert r["chi_dia_mean"] == pytest.approx(T["chi_dia"][sel].mean(), rel=1e-5)
        assert np.allclose(r["center_ijk"], np.argwhere(sel).mean(0), atol=0.01)
        assert np.all((T["tissue"][sel] == TISSUE_LABELS["lesion"]))
        assert np.all(T["mask"][sel] == 1)
    with open(written / "truth" / "lesions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(table)
    for row, r in zip(rows, table):
        assert int(row["label"]) == r["label"] and row["subtype"] == r["subtype"]
        assert bool(int(row["rim"])) == r["rim"]
        assert float(row["chi_para_mean"]) == pytest.approx(r["chi_para_mean"], abs=1e-6)
        assert float(row["chi_dia_mean"]) == pytest.approx(r["chi_dia_mean"], abs=1e-6)
    # contrasts vs normal-appearing white matter are big enough to classify
    wm = T["tissue"] == TISSUE_LABELS["white_matter"]
    nawm_p, nawm_d = T["chi_para"][wm].mean(), T["chi_dia"][wm].mean()
    for r in table:
        p, d = r["chi_para_mean"], r["chi_dia_mean"]
        if r["subtype"] in ("iron", "both"):
            assert p > nawm_p + 0.02, r
        else:
            assert abs(p - nawm_p) < 0.25 * nawm_p, r
        if r["subtype"] in ("demyelinated", "both"):
            assert d < 0.65 * nawm_d, r
        else:
            assert abs(d - nawm_d) < 0.25 * nawm_d, r
    # a rim lesion: its outer shell is more paramagnetic than its core
    r = next(r for r in table if r["rim"])
    sel = lab == r["label"]
    core = ndi.binary_erosion(sel, iterations=2)
    shell = sel & ~ndi.binary_erosion(sel)
    assert core.any() and T["chi_para"][shell].mean() > T["chi_para"][core].mean() + 0.02


def test_truth_relations_exact(head):
    T = head.truth
    assert np.array_equal(T["chi_total"], (T["chi_para"] - T["chi_dia"]).astype(np.float32))
    assert np.allclose(T["r2prime"], physics.DR_CHISEPNET * (T["chi_para"] + T["chi_dia"]), rtol=1e-6, atol=1e-6)
    assert np.allclose(T["r2star"], T["r2"] + T["r2prime"], rtol=1e-6, atol=1e-6)
    assert np.allclose(T["total_field"], T["local_field"] + T["background_field"], atol=1e-6)
    assert T["chi_para"].min() >= 0 and T["chi_dia"].min() >= 0
    out = T["mask"] == 0
    assert not T["chi_para"][out].any() and not T["chi_dia"][out].any()
    for k in ("chi_para", "r2", "m0", "local_field"):
        assert T[k].dtype == np.float32 and T[k].shape == head.shape
    # small block content: nuclei, white matter, a vein, CSF
    present = set(np.unique(T["tissue"]).tolist())
    for name in ("white_matter", "caudate", "putamen", "globus_pallidus", "thalamus",
                 "substantia_nigra", "red_nucleus", "vessel", "csf"):
        assert TISSUE_LABELS[name] in present, name
    assert T["mask_vessels"].sum() > 50


def test_values_realistic(head):
    T = head.truth
    norm = {"globus_pallidus": (0.132, 0.013), "substantia_nigra": (0.116, 0.011),
            "red_nucleus": (0.112, 0.010), "putamen": (0.077, 0.010), "caudate": (0.048, 0.008),
            "white_matter": (0.017, 0.029)}
    for name, (p, d) in norm.items():
        sel = T["tissue"] == TISSUE_LABELS[name]
        assert 0.65 * p < T["chi_para"][sel].mean() < 1.35 * p, name
        assert 0.65 * d < T["chi_dia"][sel].mean() < 1.45 * d, name
    ves = T["tissue"] == TISSUE_LABELS["vessel"]
    assert T["chi_para"][ves].mean() > 0.25
    csf = T["tissue"] == TISSUE_LABELS["csf"]
    assert abs(T["chi_total"][csf].mean()) < 0.01
    for name in ("white_matter", "cortex", "putamen", "thalamus"):
        sel = T["tissue"] == TISSUE_LABELS[name]
        assert 11.0 < T["r2"][sel].mean() < 21.0, name
    assert T["r2"][csf].mean() < 4.0
    assert T["m0"][csf].mean() > T["m0"][T["tissue"] == TISSUE_LABELS["white_matter"]].mean()


def test_fields(head):
    T = head.truth
    b = T["mask"] > 0
    head_m = T["m0"] > 0
    f = physics.forward_field(T["chi_total"] * b, head.voxel_size, head.b0_dir)
    assert np.abs(f - T["local_field"])[head_m].max() < 1e-6
    ratio = np.percentile(np.abs(T["background_field"][b]), 95) / np.percentile(np.abs(T["local_field"][b]), 95)
    assert ratio > 5, ratio
    # harmonic inside the brain: spherical-mean residual far below the local field's
    r = 4
    g = np.mgrid[-r:r + 1, -r:r + 1, -r:r + 1]
    k = (np.sum(g ** 2, 0) <= r * r).astype(float)
    k /= k.sum()
    inner = ndi.binary_erosion(b, iterations=r + 2, border_value=0)
    res_bg = (T["background_field"] - ndi.convolve(T["background_field"].astype(float), k))[inner]
    res_lf = (T["local_field"] - ndi.convolve(T["local_field"].astype(float), k))[inner]
    assert np.sqrt(np.mean(res_bg ** 2)) < 0.1 * np.sqrt(np.mean(res_lf ** 2))


def test_seeds_differ_and_repeat(head):
    other = simulate_head(seed=4, size="small", snr=0)
    assert not np.array_equal(other.truth["mask"], head.truth["mask"])
    diff = np.mean(other.truth["tissue"] != head.truth["tissue"])
    assert diff > 0.05, diff
    assert np.abs(other.truth["chi_para"] - head.truth["chi_para"]).mean() > 0.003
    again = simulate_head(seed=4, size="small", snr=0)
    assert np.array_equal(again.gre_phase, other.gre_phase)
    assert again.lesion_table == other.lesion_table


def test_tilt_and_voxel_size():
    h = simulate_head(seed=5, size="small", snr=0, tilt_deg=25.0, voxel_size=(1.0, 1.0, 2.0), n_lesions=4,
                      se_te_s=None, te_s=(0.004, 0.012), phase_sign=-1, b0_t=7.0)
    assert h.gre_mag.shape == (64, 64, 32, 2) and h.se_mag is None
    assert np.allclose(physics.b0_direction_from_affine(h.affine), h.b0_dir, atol=1e-12)
    assert np.allclose(h.b0_dir, physics.tilted_b0(25.0, "x"))
    assert np.allclose(physics.voxel_size_from_affine(h.affine), (1, 1, 2))
    T = h.truth
    f = physics.forward_field(T["chi_total"] * T["mask"], (1, 1, 2), h.b0_dir)
    assert np.abs(f - T["local_field"])[T["m0"] > 0].max() < 1e-6
    inside = T["m0"] > 0
    expect = -2 * np.pi * physics.ppm_to_hz(T["total_field"].astype(float), 7.0) * 0.012 + T["phi0"]
    assert np.abs(_wrap(h.gre_phase[..., 1] - expect))[inside].max() < 2e-4
    assert len(h.lesion_table) >= 3


def test_noise_level():
    clean = simulate_head(seed=6, size="small", snr=0, se_te_s=None, te_s=(0.005,), n_lesions=2)
    noisy = simulate_head(seed=6, size="small", snr=50, se_te_s=None, te_s=(0.005,), n_lesions=2)
    b = clean.truth["mask"] > 0
    sigma = clean.truth["m0"][b].mean() / 50
    assert noisy.noise_sigma == pytest.approx(sigma, rel=1e-5)
    sc = clean.gre_mag[..., 0] * np.exp(1j * clean.gre_phase[..., 0])
    sn = noisy.gre_mag[..., 0] * np.exp(1j * noisy.gre_phase[..., 0])
    d = (sn - sc)
    assert np.std(d.real) == pytest.approx(sigma, rel=0.03)
    assert np.std(d.imag) == pytest.approx(sigma, rel=0.03)
    out = clean.truth["m0"] == 0          # outside the head (or air): noise only
    if out.any():
        assert clean.gre_mag[out].max() == 0 and noisy.gre_mag[out].mean() > 0.5 * sigma


@pytest.mark.parametrize("kw, words", [
    ({"size": "huge"}, "size"), ({"snr": -1}, "snr"), ({"te_s": ()}, "te_s"), ({"te_s": (-0.005, 0.01)}, "positive"),
    ({"te_s": (5, 11)}, "seconds"), ({"voxel_size": (1, 0, 1)}, "voxel_size"), ({"voxel_size": (1, 1)}, "voxel_size"),
    ({"se_te_s": (0.03, 0.02)}, "increasing"), ({"phase_sign": 2}, "phase_sign"), ({"b0_t": 0}, "b0_t"),
    ({"seed": -3}, "seed"), ({"n_lesions": -1}, "n_lesions")])
def test_bad_arguments(kw, words):
    with pytest.raises(InputError, match=words):
        simulate_head(**kw)


def test_cli_writes_everything(tmp_path, capsys):
    from chisep.cli import main

    out = tmp_path / "sim"
    rc = main(["simulate", "--out", str(out), "--seed", "1", "--size", "small", "--noise", "0",
               "--phase-sign", "-1", "--te", "0.005", "0.010", "0.015", "--progress", "none"])
    assert rc == 0
    for f in ("gre_mag", "gre_phase", "se_mag"):
        assert (out / f"{f}.nii.gz").exists() and (out / f"{f}.json").exists()
    for name in TRUTH_NAMES:
        assert (out / "truth" / f"{name}.nii.gz").exists(), name
    assert (out / "truth" / "lesions.csv").exists() and (out / "truth" / "tissue_labels.json").exists()
    side = json.loads((out / "gre_phase.json").read_text())
    assert side["EchoTime"] == [0.005, 0.010, 0.015] and side["PhaseSign"] == -1
    p = np.asarray(nib.load(str(out / "gre_phase.nii.gz")).dataobj)
    tf = np.asarray(nib.load(str(out / "truth" / "total_field.nii.gz")).dataobj).astype(float)
    phi0 = np.asarray(nib.load(str(out / "truth" / "phi0.nii.gz")).dataobj)
    m0 = np.asarray(nib.load(str(out / "truth" / "m0.nii.gz")).dataobj)
    expect = -2 * np.pi * physics.ppm_to_hz(tf, 3.0) * 0.015 + phi0
    assert np.abs(_wrap(p[..., 2] - expect))[m0 > 0].max() < 2e-4
    assert not list(out.glob(".staging_*"))
    # a bad argument: clear message, exit code 2, nothing written
    rc = main(["simulate", "--out", str(tmp_path / "bad"), "--size", "small", "--te", "-0.01"])
    assert rc == 2
    assert "te_s" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "gre_mag.nii.gz").exists()


def test_thick_slices_are_block_averages_of_a_1mm_simulation():
    """Whole heads at integer thick voxels are made by averaging a 1 mm simulation (the helper is
    exercised here on a small 1 mm head): truth maps are block means, the GRE signal is the complex
    mean (intra-voxel dephasing), the affine puts each thick voxel at the centre of its block."""
    from chisep.simulate import _block_average_head

    fine = simulate_head(seed=4, size="small", snr=None)
    k = (1, 1, 2)
    h = _block_average_head(fine, k, snr=None)
    nz = fine.truth["local_field"].shape[2] // 2
    assert h.truth["local_field"].shape == fine.truth["local_field"].shape[:2] + (nz,)
    lf = fine.truth["local_field"][..., : 2 * nz]
    np.testing.assert_allclose(h.truth["local_field"], 0.5 * (lf[..., 0::2] + lf[..., 1::2]), atol=1e-7)
    s = fine.gre_mag * np.exp(1j * fine.gre_phase)
    s = 0.5 * (s[:, :, 0:2 * nz:2] + s[:, :, 1:2 * nz:2])
    np.testing.assert_allclose(h.gre_mag, np.abs(s), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(h.voxel_size, [1.0, 1.0, 2.0])
    centre_fine = 0.5 * (fine.affine @ [3, 4, 10, 1] + fine.affine @ [3, 4, 11, 1])
    np.testing.assert_allclose(h.affine @ [3, 4, 5, 1], centre_fine, atol=1e-9)
    # dephasing: the thick-voxel GRE decays at least as fast as the mean true R2* predicts
    m = h.truth["mask"] > 0
    assert np.all(h.gre_mag[m][:, -1] <= np.mean(fine.gre_mag[..., : 2 * nz, -1].reshape(*m.shape, 2), -1)[m] + 1e-5)
    assert {r["subtype"] for r in h.lesion_table} <= {"iron", "demyelinated", "both", "neither"}
    assert len(h.lesion_table) == int(h.truth["lesions"].max())


def test_full_head_background_is_harmonic_in_the_brain_next_to_the_sinuses():
    """The air/tissue source must stay outside the brain: LBV (which removes exactly the fields that
    are harmonic in the mask) leaves almost nothing of the true background field. Seed 22 has a
    frontal sinus close to the orbitofrontal cortex; when the smoothed air boundary reached into the
    brain, 24 % of the local field's norm leaked through (0.7 % now)."""
    from chisep.preprocess import lbv

    h = simulate_head(seed=22, size="full", snr=None)
    T = h.truth
    out, inner = lbv(T["background_field"], T["mask"], h.voxel_size)
    m = inner > 0
    loc = T["local_field"][m]
    leak = np.linalg.norm(out[m] - out[m].mean()) / np.linalg.norm(loc - loc.mean())
    assert leak < 0.03, leak
