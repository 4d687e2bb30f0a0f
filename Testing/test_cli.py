"""`chisep` command line end to end on a small simulated head: demo, run (raw and processed), errors."""
import json

import nibabel as nib
import numpy as np
import pytest

from chisep.cli import main

MAPS = ("chi_para", "chi_dia", "chi_total")


# every shipped method, always: missing or unloadable built-in weights fail these tests (loudly, in
# test_builtin_weights_load first) instead of silently dropping the network methods
METHODS = ["chisepnet-r2prime", "chisepnet-r2star", "regularized"]


def test_builtin_weights_load():
    from chisep.network.weights import load_builtin

    for kind in ("chisepnet-r2prime", "r2prime-from-r2star"):
        ws = load_builtin(kind)      # raises InputError naming the missing file
        assert ws.kind == kind and ws.sha256


def _load(path):
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    rc = main(["demo", "--out", str(out), "--size", "small", "--seed", "3", "--progress", "none",
               "--methods", *METHODS])
    assert rc == 0
    return out


def test_demo_writes_everything(demo_dir):
    for f in ("report.json", "figure.png", "lesions.csv", "data/gre_mag.nii.gz", "data/gre_phase.nii.gz",
              "data/se_mag.nii.gz", "data/truth/chi_para.nii.gz"):
        assert (demo_dir / f).exists(), f
    rep = json.loads((demo_dir / "report.json").read_text())
    assert set(rep["accuracy"]) == set(METHODS)
    for m in METHODS:
        for f in MAPS + ("local_field", "mask", "report"):
            assert (demo_dir / m / (f + (".json" if f == "report" else ".nii.gz"))).exists()
        acc = rep["accuracy"][m]
        # real accuracy against the simulation's truth (noisy small head, whole chain from raw data);
        # the demo's head is test_accuracy.py's "straight" head: measured NRMSE 22-34 %, SSIM >= 0.58
        # (tight per-method bounds live in test_accuracy.py's MEASURED table)
        assert 0 < acc["chi_para"]["nrmse"] < 35 and 0 < acc["chi_dia"]["nrmse"] < 40
        assert acc["chi_para"]["ssim"] > 0.75 and acc["chi_dia"]["ssim"] > 0.5
    assert rep["versions"]["chisep"]
    assert rep["lesions"]["truth"]["subtype_agreement_pct"] >= 90
    assert "simulate" in rep["timings_s"] and "total" in rep["timings_s"]
    # figure is a real image of sensible size
    from PIL import Image
    w, h = Image.open(demo_dir / "figure.png").size
    assert w > 1000 and h > 500
    # outputs keep the input grid and affine
    ref = nib.load(str(demo_dir / "data" / "gre_mag.nii.gz"))
    out = nib.load(str(demo_dir / METHODS[0] / "chi_para.nii.gz"))
    assert out.shape == ref.shape[:3]
    np.testing.assert_allclose(out.affine, ref.affine, atol=1e-5)
    para = _load(demo_dir / METHODS[0] / "chi_para.nii.gz")
    dia = _load(demo_dir / METHODS[0] / "chi_dia.nii.gz")
    assert para.min() >= 0 and dia.min() >= 0
    np.testing.assert_allclose(_load(demo_dir / METHODS[0] / "chi_total.nii.gz"), para - dia, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_run_on_raw_files_matches_demo(demo_dir, tmp_path, method):
    d = demo_dir / "data"
    out = tmp_path / "raw"
    args = ["run", "--gre-mag", str(d / "gre_mag.nii.gz"), "--gre-phase", str(d / "gre_phase.nii.gz"),
            "--out", str(out), "--method", method, "--progress", "none"]
    if method != "chisepnet-r2star":
        args[5:5] = ["--se-mag", str(d / "se_mag.nii.gz")]
    assert main(args) == 0
    for f in MAPS:
        np.testing.assert_allclose(_load(out / f"{f}.nii.gz"), _load(demo_dir / method / f"{f}.nii.gz"),
                                   atol=1e-5)
    rep = json.loads((out / "report.json").read_text())
    assert rep["method"] == method and "total" in rep["timings_s"]


@pytest.mark.parametrize("method", METHODS)
def test_run_on_processed_maps_matches_demo(demo_dir, tmp_path, method):
    src = demo_dir / method
    out = tmp_path / "proc"
    args = ["run", "--local-field", str(src / "local_field.nii.gz"), "--field-unit", "ppm",
            "--r2star", str(src / "r2star.nii.gz"), "--mask", str(src / "mask.nii.gz"),
            "--out", str(out), "--method", method, "--progress", "none"]
    if method != "chisepnet-r2star":
        args += ["--r2prime", str(src / "r2prime.nii.gz")]
    if method == "regularized":
        args += ["--field-weight", str(src / "field_weight.nii.gz"), "--magnitude", str(src / "magnitude.nii.gz")]
    assert main(args) == 0
    for f in MAPS:
        np.testing.assert_allclose(_load(out / f"{f}.nii.gz"), _load(src / f"{f}.nii.gz"), atol=1e-5)


def test_field_units_give_the_same_maps(demo_dir, tmp_path):
    """A local field given in Hz gives the same regularized maps as the same field in ppm."""
    from chisep import physics
    src = demo_dir / "regularized"
    img = nib.load(str(src / "local_field.nii.gz"))
    hz = physics.ppm_to_hz(np.asarray(img.dataobj, dtype=np.float64), 3.0)
    nib.save(nib.Nifti1Image(hz.astype(np.float32), img.affine), str(tmp_path / "field_hz.nii.gz"))
    out = tmp_path / "hz"
    assert main(["run", "--local-field", str(tmp_path / "field_hz.nii.gz"), "--field-unit", "hz", "--b0", "3",
                 "--r2prime", str(src / "r2prime.nii.gz"), "--mask", str(src / "mask.nii.gz"),
                 "--field-weight", str(src / "field_weight.nii.gz"), "--magnitude", str(src / "magnitude.nii.gz"),
                 "--out", str(out), "--method", "regularized", "--progress", "none"]) == 0
    np.testing.assert_allclose(_load(out / "chi_para.nii.gz"), _load(src / "chi_para.nii.gz"), atol=2e-4)


def test_run_progress_json_lines(demo_dir, tmp_path, capsys):
    src = demo_dir / "regularized"
    assert main(["run", "--local-field", str(src / "local_field.nii.gz"), "--field-unit", "ppm",
                 "--r2prime", str(src / "r2prime.nii.gz"), "--mask", str(src / "mask.nii.gz"),
                 "--out", str(tmp_path / "o"), "--method", "regularized", "--progress", "json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    fr = [x["progress"] for x in lines]
    assert len(fr) >= 3 and fr[-1] == 1.0 and all(0 <= f <= 1 for f in fr)
    assert fr == sorted(fr)


def _no_outputs(d):
    return not d.exists() or not [p for p in d.rglob("*") if p.is_file()]


def test_bad_inputs_exit_2_and_write_nothing(demo_dir, tmp_path, capsys):
    src = demo_dir / "regularized"
    out = tmp_path / "bad"
    # no input at all
    assert main(["run", "--out", str(out)]) == 2
    assert "no input" in capsys.readouterr().err
    # missing unit
    assert main(["run", "--local-field", str(src / "local_field.nii.gz"), "--mask", str(src / "mask.nii.gz"),
                 "--r2prime", str(src / "r2prime.nii.gz"), "--out", str(out)]) == 2
    assert "--field-unit" in capsys.readouterr().err
    # mismatched grid
    img = nib.load(str(src / "r2prime.nii.gz"))
    small = np.asarray(img.dataobj)[:-2]
    nib.save(nib.Nifti1Image(small, img.affine), str(tmp_path / "r2p_small.nii.gz"))
    assert main(["run", "--local-field", str(src / "local_field.nii.gz"), "--field-unit", "ppm",
                 "--mask", str(src / "mask.nii.gz"), "--r2prime", str(tmp_path / "r2p_small.nii.gz"),
                 "--out", str(out), "--method", "regularized"]) == 2
    err = capsys.readouterr().err
    assert "r2p_small" in err and "resample" in err
    # NaNs
    field = np.asarray(nib.load(str(src / "local_field.nii.gz")).dataobj).copy()
    field[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(field, img.affine), str(tmp_path / "nan.nii.gz"))
    assert main(["run", "--local-field", str(tmp_path / "nan.nii.gz"), "--field-unit", "ppm",
                 "--mask", str(src / "mask.nii.gz"), "--r2prime", str(src / "r2prime.nii.gz"),
                 "--out", str(out), "--method", "regularized"]) == 2
    assert "NaN" in capsys.readouterr().err
    # unreadable file
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti")
    assert main(["run", "--local-field", str(tmp_path / "junk.nii.gz"), "--field-unit", "ppm",
                 "--mask", str(src / "mask.nii.gz"), "--r2prime", str(src / "r2prime.nii.gz"),
                 "--out", str(out)]) == 2
    assert "junk.nii.gz" in capsys.readouterr().err
    # raw: GRE without SE asks for R2' with chi-sepnet-R2'
    d = demo_dir / "data"
    assert main(["run", "--gre-mag", str(d / "gre_mag.nii.gz"), "--gre-phase", str(d / "gre_phase.nii.gz"),
                 "--out", str(out), "--method", "chisepnet-r2prime", "--progress", "none"]) == 2
    assert "chisepnet-r2star" in capsys.readouterr().err
    assert _no_outputs(out)


def test_help_explains_units(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "ppm" in text and "Hz" in text
    for cmd in ("simulate", "run", "demo", "lesions"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "--out" in capsys.readouterr().out
