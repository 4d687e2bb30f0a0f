"""Preprocessing chain on simulated heads: mask, unwrapping, local field, R2*/R2, errors."""
import numpy as np
import pytest

from chisep.io import InputError
from chisep.preprocess import dice, erode, preprocess_gre, r2star_arlo, r2star_fit, unwrap_region_growing
from chisep.simulate import simulate_head, write_simulation


@pytest.fixture(scope="module")
def head():
    return simulate_head(seed=5, size="small", snr=100)


@pytest.fixture(scope="module")
def out(head):
    h = head
    return preprocess_gre(h.gre_mag, h.gre_phase, h.te_s, h.affine, h.b0_t, se_mag=h.se_mag, se_te_s=h.se_te_s)


def _tissue(T):
    return erode((T["mask"] > 0) & (T["mask_csf"] == 0) & (T["mask_vessels"] == 0), 1.0)


def test_mask_dice(head, out):
    assert dice(out["mask"], head.truth["mask"]) >= 0.95


def test_r2star_r2_within_5_percent(head, out):
    T = head.truth
    t = _tissue(T)
    for key in ("r2star", "r2"):
        err = np.median(np.abs(out[key][t] - T[key][t]) / T[key][t])
        assert err < 0.05, (key, err)
    np.testing.assert_allclose(out["r2prime"], np.maximum(out["r2star"] - out["r2"], 0) * out["mask"], atol=1e-5)


def test_wraps_unwrapped_without_jumps(head, out):
    T = head.truth
    tf = T["total_field"] * 127.732434
    m = erode(out["mask"] > 0, 2.0)
    # several cycles of phase at the last echo...
    assert np.ptp(tf[m]) * head.te_s[-1] > 3
    err = out["total_field_hz"][m] - tf[m]
    err -= np.median(err)
    # ...and no residual 2 pi jumps (half a cycle at the last echo) in the brain
    assert np.mean(np.abs(err) * head.te_s[-1] > 0.5) < 1e-3


def test_local_field_straight_b0(head, out):
    T = head.truth
    me = (out["mask_eroded"] > 0) & (T["mask"] > 0)
    lf, tl = out["local_field"][me], T["local_field"][me]
    assert np.corrcoef(lf, tl)[0, 1] > 0.85
    assert np.all(out["local_field"][out["mask_eroded"] == 0] == 0)


def test_arlo_matches_fit_on_exact_decay():
    te = np.array([0.005, 0.011, 0.017, 0.023, 0.029])
    r2s = np.linspace(5, 80, 50).reshape(50, 1, 1)
    mag = np.exp(-r2s[..., None] * te)
    np.testing.assert_allclose(r2star_arlo(mag, te)[:, 0, 0], r2s[:, 0, 0], rtol=5e-3)
    np.testing.assert_allclose(r2star_fit(mag, te)[:, 0, 0], r2s[:, 0, 0], rtol=1e-6)


def test_region_growing_unwraps_a_ramp():
    x = np.linspace(0, 6 * 2 * np.pi, 40)
    true = np.broadcast_to(x[:, None, None], (40, 20, 10)).copy()
    got = unwrap_region_growing(np.angle(np.exp(1j * true)))
    d = got - true
    assert np.ptp(d) < 1e-4 and abs(d.mean() / (2 * np.pi) - round(d.mean() / (2 * np.pi))) < 1e-4


def test_cli_preprocess_and_errors(head, tmp_path, capsys):
    import nibabel as nib
    from chisep.cli import main
    d = tmp_path / "d"
    write_simulation(head, d)
    out = tmp_path / "o"
    assert main(["preprocess", "--gre-mag", str(d / "gre_mag.nii.gz"), "--gre-phase", str(d / "gre_phase.nii.gz"),
                 "--se-mag", str(d / "se_mag.nii.gz"), "--out", str(out), "--progress", "none"]) == 0
    for f in ("local_field", "r2star", "r2", "r2prime", "mask"):
        img = nib.load(str(out / f"{f}.nii.gz"))
        np.testing.assert_allclose(img.affine, head.affine, atol=1e-5)
    bad = tmp_path / "bad"
    # mismatched echo counts
    img = nib.load(str(d / "gre_phase.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., :3], img.affine), str(tmp_path / "ph3.nii.gz"))
    assert main(["preprocess", "--gre-mag", str(d / "gre_mag.nii.gz"), "--gre-phase", str(tmp_path / "ph3.nii.gz"),
                 "--out", str(bad)]) == 2
    assert "ph3.nii.gz" in capsys.readouterr().err
    # missing echo times (no sidecar)
    mimg = nib.load(str(d / "gre_mag.nii.gz"))
    nib.save(mimg, str(tmp_path / "mag_nosidecar.nii.gz"))
    assert main(["preprocess", "--gre-mag", str(tmp_path / "mag_nosidecar.nii.gz"),
                 "--gre-phase", str(d / "gre_phase.nii.gz"), "--out", str(bad)]) == 2
    assert "EchoTime" in capsys.readouterr().err
    # all-zero phase
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine), str(tmp_path / "zero.nii.gz"))
    assert main(["preprocess", "--gre-mag", str(d / "gre_mag.nii.gz"), "--gre-phase", str(tmp_path / "zero.nii.gz"),
                 "--te", *map(str, head.te_s), "--out", str(bad)]) == 2
    assert "zero" in capsys.readouterr().err
    # NaNs
    a = np.asarray(mimg.dataobj).astype(np.float32)
    a[1, 1, 1, 0] = np.nan
    nib.save(nib.Nifti1Image(a, mimg.affine), str(tmp_path / "nan.nii.gz"))
    assert main(["preprocess", "--gre-mag", str(tmp_path / "nan.nii.gz"), "--gre-phase", str(d / "gre_phase.nii.gz"),
                 "--te", *map(str, head.te_s), "--out", str(bad)]) == 2
    assert "NaN" in capsys.readouterr().err
    assert not bad.exists() or not [p for p in bad.rglob("*") if p.is_file()]
