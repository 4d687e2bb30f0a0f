"""Lesion statistics, hyper/iso/hypo classification and rims: synthetic phantoms and simulated heads."""
import csv
import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from chisep import lesions as L
from chisep.io import InputError

WM_PARA, WM_DIA = 0.017, 0.029
SHAPE = (48, 40, 36)
AFFINE = np.array([[1.0, 0, 0, -20], [0, 1.0, 0, -30], [0, 0, 1.5, 10], [0, 0, 0, 1]])
VS = np.array([1.0, 1.0, 1.5])


def _ball(c, r_mm):
    g = np.indices(SHAPE).astype(float)
    d2 = sum(((g[a] - c[a]) * VS[a]) ** 2 for a in range(3))
    return d2 <= r_mm ** 2


def _phantom(seed=0):
    """Textured WM block with one lesion per subtype, an iron lesion with a rim, a single-voxel
    iron lesion and a demyelinated lesion cut by the brain-mask border."""
    rng = np.random.default_rng(seed)
    tex = lambda: ndi.gaussian_filter(rng.standard_normal(SHAPE), 1.5) * 3.0  # noqa: E731  ~unit SD
    para = WM_PARA * (1 + 0.06 * tex())
    dia = WM_DIA * (1 + 0.06 * tex())
    brain = np.zeros(SHAPE, bool)
    brain[:, 2:-2, 2:-2] = True                      # i faces: the lesion at i=0 touches the volume face
    lab = np.zeros(SHAPE, np.int16)
    spec = [  # label, centre, radius mm, para delta, dia factor, rim
        (1, (10, 12, 10), 4.0, 0.05, 1.0, False),    # iron
        (2, (10, 28, 10), 4.0, 0.0, 0.4, False),     # demyelinated
        (3, (26, 12, 10), 4.0, 0.05, 0.4, False),    # both
        (4, (26, 28, 10), 4.0, 0.0, 1.0, False),     # neither
        (5, (38, 20, 24), 4.5, 0.04, 1.0, True),     # iron with a paramagnetic rim
    ]
    for lbl, c, r, dp, fd, rim in spec:
        b = _ball(c, r)
        lab[b] = lbl
        para[b] = WM_PARA + dp
        dia[b] = WM_DIA * fd
        if rim:
            depth = ndi.distance_transform_edt(b, sampling=VS)
            para[b & (depth <= 1.0)] += 0.08
    lab[20, 20, 26] = 6                              # single voxel, iron
    para[20, 20, 26] = WM_PARA + 0.06
    b = _ball((0, 20, 24), 4.0) & (lab == 0)        # cut by the volume face i = 0: demyelinated
    lab[b] = 7
    dia[b] = WM_DIA * 0.4
    maps = {"chi_para": para, "chi_dia": dia, "chi_total": para - dia}
    truth = {1: ("iron", False), 2: ("demyelinated", False), 3: ("both", False), 4: ("neither", False),
             5: ("iron", True), 6: ("iron", False), 7: ("demyelinated", False)}
    return maps, lab, brain, truth


@pytest.fixture(scope="module")
def phantom():
    return _phantom()


def test_phantom_classes_rims_and_flags(phantom):
    maps, lab, brain, truth = phantom
    rows = L.lesion_statistics(maps, lab, AFFINE, brain_mask=brain)
    assert [r["label"] for r in rows] == list(range(1, 8))
    for r in rows:
        sub, rim = truth[r["label"]]
        assert r["subtype"] == sub, (r["label"], r["class_string"], r["notes"])
        assert r["rim"] == rim, r["label"]
        assert r["reference"] == "shell" and r["ref_n_voxels"] >= 20
    by = {r["label"]: r for r in rows}
    assert by[3]["class_string"] == "para-hyper/dia-hypo"
    assert by[1]["chi_para_diff"] == pytest.approx(0.05, abs=0.004)
    assert by[2]["chi_dia_diff"] == pytest.approx(-0.6 * WM_DIA, abs=0.004)
    b5 = lab == 5
    depth = ndi.distance_transform_edt(b5, sampling=VS)
    frac = (b5 & (depth <= 1.0)).sum() / (b5 & (depth <= 1.5)).sum()      # rim voxels in the 1.5 mm ring
    assert by[5]["rim_evaluable"] and by[5]["core_chi_para_mean"] == pytest.approx(WM_PARA + 0.04)
    assert by[5]["rim_chi_para_mean"] == pytest.approx(WM_PARA + 0.04 + 0.08 * frac)
    assert by[1]["rim_evaluable"] and not by[1]["rim"]
    # lesion 1 (no rim): ring and core have the same value
    assert by[1]["rim_chi_para_mean"] == pytest.approx(by[1]["core_chi_para_mean"], abs=1e-9)
    # single voxel: SD 0, classified by its mean, flagged, rim not evaluable
    s = by[6]
    assert s["n_voxels"] == 1 and s["chi_para_sd"] == 0.0 and s["small_lesion"]
    assert s["chi_para_mean"] == pytest.approx(WM_PARA + 0.06) and s["chi_para_class"] == "hyper"
    assert not s["rim_evaluable"] and "small lesion" in s["notes"]
    # border lesion: counted on the voxels in the volume and the brain mask
    b = by[7]
    n_expected = int(((lab == 7) & brain).sum())
    assert b["touches_border"] and b["n_voxels"] == n_expected and b["n_voxels_label"] == int((lab == 7).sum())
    assert not any(by[k]["touches_border"] for k in (1, 2, 3, 4, 5, 6))
    assert L.summary_counts(rows)["subtypes"] == {"iron": 3, "demyelinated": 2, "both": 1, "neither": 1,
                                                  "other": 0, "unclassified": 0}
    assert L.summary_counts(rows)["rims"] == 1


def test_geometry_stats_and_wm_reference(phantom):
    maps, lab, brain, truth = phantom
    rows = L.lesion_statistics(maps, lab, AFFINE, brain_mask=brain, wm_mask=brain)
    r = {x["label"]: x for x in rows}[1]
    n = int((lab == 1).sum())
    assert r["n_voxels"] == n and r["volume_mm3"] == pytest.approx(1.5 * n)
    assert (r["centroid_i"], r["centroid_j"], r["centroid_k"]) == pytest.approx((10, 12, 10))
    assert (r["centroid_x_mm"], r["centroid_y_mm"], r["centroid_z_mm"]) == pytest.approx((-10, -18, 25))
    # constant lesion: all percentiles equal, SD 0
    assert r["chi_para_p5"] == r["chi_para_p95"] == pytest.approx(WM_PARA + 0.05) and r["chi_para_sd"] < 1e-12
    # global WM reference: same for every lesion, lesions and their 2 mm margin excluded
    d = ndi.distance_transform_edt(lab == 0, sampling=VS)
    ref = brain & (d > 2.0)
    assert all(x["reference"] == "wm" and x["ref_n_voxels"] == int(ref.sum()) for x in rows)
    assert r["chi_para_ref_median"] == pytest.approx(float(np.median(maps["chi_para"][ref])))
    assert [x["subtype"] for x in rows] == [truth[k][0] for k in range(1, 8)]


def test_thresholds_are_configurable(phantom):
    maps, lab, brain, _ = phantom
    rows = L.lesion_statistics(maps, lab, AFFINE, brain_mask=brain, min_diff=0.1)
    assert {r["subtype"] for r in rows} == {"neither"}          # every difference is below 0.1 ppm
    rows = L.lesion_statistics(maps, lab, AFFINE, brain_mask=brain, z_threshold=1e6)
    assert {r["subtype"] for r in rows} == {"neither"}
    assert L.classify(0.01, 3.0, 2.0, 0.005) == "hyper" and L.classify(-0.01, -3.0, 2.0, 0.005) == "hypo"
    assert L.classify(0.004, 30.0, 2.0, 0.005) == "iso" and L.classify(0.02, 1.5, 2.0, 0.005) == "iso"


def test_subtype_mapping():
    assert L.subtype_from_classes("hyper", "iso") == "iron"
    assert L.subtype_from_classes("iso", "hypo") == "demyelinated"
    assert L.subtype_from_classes("hyper", "hypo") == "both"
    assert L.subtype_from_classes("iso", "iso") == "neither"
    assert L.subtype_from_classes("hypo", "iso") == "other"
    assert L.subtype_from_classes("unclassified", "iso") == "unclassified"


def test_binary_mask_26_connectivity():
    m = np.zeros((8, 8, 8), bool)
    m[1, 1, 1] = m[2, 2, 2] = True     # corner neighbours: one lesion
    m[5, 5, 5] = True                   # a second one
    lab = L.label_lesions(m)
    assert lab.max() == 2 and lab[1, 1, 1] == lab[2, 2, 2] != lab[5, 5, 5]
    assert L.label_lesions(m.astype(np.float32) * 1.0).max() == 2     # 0/1 float mask is binary too
    labels = np.zeros((8, 8, 8), np.int16)
    labels[1, 1, 1], labels[5, 5, 5] = 3, 3
    assert L.label_lesions(labels).max() == 3 and L.label_lesions(labels, split="always").max() == 2
    with pytest.raises(InputError, match="non-integer"):
        L.label_lesions(m * 0.5)


def test_empty_mask_and_csv(tmp_path, phantom):
    maps, lab, brain, _ = phantom
    assert L.lesion_statistics(maps, np.zeros(SHAPE, np.uint8), AFFINE) == []
    p = L.write_lesion_csv([], tmp_path / "empty.csv")
    with open(p) as fh:
        rows = list(csv.reader(fh))
    assert len(rows) == 1 and rows[0][:2] == ["label", "subtype"]
    assert L.summary_counts([])["n_lesions"] == 0
    stats = L.lesion_statistics(maps, lab, AFFINE, brain_mask=brain)
    L.write_lesion_csv(stats, tmp_path / "t.csv")
    with open(tmp_path / "t.csv") as fh:
        back = list(csv.DictReader(fh))
    assert [r["subtype"] for r in back] == [r["subtype"] for r in stats]
    assert float(back[0]["chi_para_mean"]) == pytest.approx(stats[0]["chi_para_mean"], rel=1e-5)
    assert back[4]["rim"] == "1" and back[0]["rim"] == "0"


def test_grid_mismatch_and_nan(phantom):
    maps, lab, brain, _ = phantom
    with pytest.raises(InputError, match=r"shape .*resample"):
        L.lesion_statistics(maps, lab[:-1], AFFINE)
    shifted = AFFINE.copy()
    shifted[0, 3] += 2.0
    with pytest.raises(InputError, match="affine differs.*resample"):
        L.lesion_statistics(maps, lab, AFFINE, labels_affine=shifted)
    with pytest.raises(InputError, match="wm_mask shape"):
        L.lesion_statistics(maps, lab, AFFINE, wm_mask=brain[:, :, :-1])
    bad = dict(maps)
    bad["chi_dia"] = maps["chi_dia"].copy()
    bad["chi_dia"][3, 3, 3] = np.nan
    with pytest.raises(InputError, match="chi_dia contains 1 NaN"):
        L.lesion_statistics(bad, lab, AFFINE)


def test_cli(tmp_path, phantom, capsys):
    from chisep.cli import main
    from chisep.io import save_nifti
    maps, lab, brain, _ = phantom
    d = tmp_path / "maps"
    for k, v in maps.items():
        save_nifti(d / f"{k}.nii.gz", v, AFFINE)
    save_nifti(d / "mask.nii.gz", brain, AFFINE, dtype=np.uint8)
    save_nifti(tmp_path / "les.nii.gz", lab, AFFINE, dtype=np.int16)
    rc = main(["lesions", "--maps", str(d), "--lesions", str(tmp_path / "les.nii.gz"),
               "--out", str(tmp_path / "t.csv"), "--summary-json", str(tmp_path / "s.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "7 lesions (1 with a paramagnetic rim" in out and "iron          3" in out
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["subtypes"]["demyelinated"] == 2 and s["touches_border"] == 1
    # label map on another grid -> exit code 2 with a message
    save_nifti(tmp_path / "les2.nii.gz", lab[:, :, :-2], AFFINE, dtype=np.int16)
    rc = main(["lesions", "--maps", str(d), "--lesions", str(tmp_path / "les2.nii.gz"), "--out", str(tmp_path / "x.csv")])
    assert rc == 2 and "another grid" in capsys.readouterr().err
    save_nifti(tmp_path / "none.nii.gz", np.zeros(SHAPE), AFFINE, dtype=np.uint8)
    rc = main(["lesions", "--maps", str(d), "--lesions", str(tmp_path / "none.nii.gz"), "--out", str(tmp_path / "e.csv")])
    assert rc == 0 and "no lesion found" in capsys.readouterr().err and (tmp_path / "e.csv").exists()


def test_simulated_heads_truth_maps():
    """Must-show: with ground-truth maps of simulated heads, >= 98 % of lesions get their true class
    for both maps and the rims are found (NAWM reference: the simulation's white-matter mask)."""
    from chisep.simulate import TISSUE_LABELS, simulate_head
    n = para_ok = dia_ok = rim_found = rim_true = rim_false_pos = 0
    for seed in (1, 2):
        h = simulate_head(seed=seed, size="small", snr=0, n_lesions=12)
        T = h.truth
        rows = L.lesion_statistics({k: T[k] for k in ("chi_para", "chi_dia", "chi_total", "r2prime")},
                                   T["lesions"], h.affine, csf_mask=T["mask_csf"], brain_mask=T["mask"],
                                   wm_mask=T["tissue"] == TISSUE_LABELS["white_matter"])
        by = {r["label"]: r for r in rows}
        for t in h.lesion_table:
            r = by[t["label"]]
            n += 1
            para_ok += r["chi_para_class"] == ("hyper" if t["subtype"] in ("iron", "both") else "iso")
            dia_ok += r["chi_dia_class"] == ("hypo" if t["subtype"] in ("demyelinated", "both") else "iso")
            rim_true += t["rim"]
            rim_found += t["rim"] and r["rim"]
            rim_false_pos += (not t["rim"]) and r["rim"]
    print(f"simulated lesions: {n}; chi_para class {100 * para_ok / n:.1f} %, chi_dia class "
          f"{100 * dia_ok / n:.1f} %, rims found {rim_found}/{rim_true}, false rims {rim_false_pos}")
    assert n >= 20 and rim_true >= 2
    assert para_ok / n >= 0.98 and dia_ok / n >= 0.98
    assert rim_found == rim_true and rim_false_pos == 0
