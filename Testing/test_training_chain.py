"""The training-data chain for real on tiny heads (no stand-in): a cache built by
``chisep train-cache`` (:func:`chisep.training.data.build_cache`) from simulated 64^3 heads through the inference chain, checked
against the simulation's truth and against the inference pipeline; then ``chisep train`` on it and
``chisep train --evaluate``, whose numbers are recomputed here."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from chisep.training import data as D  # noqa: E402

TRAIN_SEED, VAL_SEED, N_LESIONS = 1010, 900, 9


def _nrmse(a, t, m):
    return 100.0 * np.linalg.norm((a - t)[m]) / np.linalg.norm(t[m])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("cache")
    from chisep.cli import main

    assert main(["train-cache", "--out", str(d), "--heads", str(TRAIN_SEED), "--val", str(VAL_SEED),
                 "--size", "small", "--workers", "1", "--lesions", str(N_LESIONS)]) == 0
    return d


def test_cache_files_and_lesion_counts(cache):
    assert sorted(p.name for p in cache.glob("*.npz")) == [f"head_{TRAIN_SEED:05d}.npz", f"val_{VAL_SEED:05d}.npz"]
    meta = {p.stem: json.loads(str(np.load(p)["meta"])) for p in cache.glob("*.npz")}
    # --lesions reaches the training heads only; validation heads keep their per-seed count
    assert meta[f"head_{TRAIN_SEED:05d}"]["n_lesions"] == N_LESIONS
    assert meta[f"val_{VAL_SEED:05d}"]["n_lesions"] == D.head_params(VAL_SEED)["n_lesions"] != N_LESIONS
    # every input came from the inference chain, not the stand-in
    assert all(m["chain"] == "preprocess_gre" for m in meta.values())


def test_cached_head_is_the_inference_chain_and_the_truth(cache):
    """The cached inputs equal what `chisep run` computes from the same acquisition (crop and fp16
    aside), and the labels are the simulation's truth."""
    from chisep import physics
    from chisep.options import PreprocessOptions
    from chisep.pipeline import preprocess_raw
    from chisep.qsm import qsm_closed_form
    from chisep.simulate import simulate_head

    z = np.load(cache / f"head_{TRAIN_SEED:05d}.npz")
    meta = json.loads(str(z["meta"]))
    p = D.head_params(TRAIN_SEED)
    h = simulate_head(seed=TRAIN_SEED, size="small", snr=p["snr"], n_lesions=N_LESIONS)
    sl = tuple(slice(a, b) for a, b in zip(meta["crop_lo"], meta["crop_hi"]))
    # the chain the cache is built on (D.BG_METHOD), as `chisep run --bg-method` runs it
    maps = preprocess_raw(h.gre_mag, h.gre_phase, h.te_s, h.affine, b0_t=h.b0_t, se_mag=h.se_mag,
                          se_te_s=h.se_te_s, options=PreprocessOptions(bg_method=D.BG_METHOD))
    # the QSM channel chi-sepnet computes when no QSM map or net is given (network.inference)
    qsm = qsm_closed_form(np.asarray(maps.local_field, np.float32), maps.mask,
                          physics.voxel_size_from_affine(maps.affine), maps.b0_dir)
    m = (maps.mask > 0)[sl]
    assert np.array_equal(z["mask"] > 0, m)
    f16 = dict(rtol=2e-3, atol=2e-5)
    np.testing.assert_allclose(z["field"].astype(np.float32), (maps.local_field * (maps.mask > 0))[sl], **f16)
    np.testing.assert_allclose(z["qsm"].astype(np.float32), (qsm * (maps.mask > 0))[sl], **f16)
    np.testing.assert_allclose(z["r2p"].astype(np.float32), (maps.r2prime / physics.DR_CHISEPNET * (maps.mask > 0))[sl],
                               **f16)
    # labels: the truth
    np.testing.assert_allclose(z["para"].astype(np.float32), (h.truth["chi_para"] * (maps.mask > 0))[sl], **f16)
    np.testing.assert_allclose(z["dia"].astype(np.float32), (h.truth["chi_dia"] * (maps.mask > 0))[sl], **f16)
    np.testing.assert_allclose(z["r2p_true"].astype(np.float32),
                               z["para"].astype(np.float32) + z["dia"].astype(np.float32), rtol=3e-3, atol=3e-5)
    assert int((z["lesion"] > 0).sum()) > 0 and np.array_equal(z["lesion"] > 0,
                                                               ((h.truth["lesions"] > 0) & (maps.mask > 0))[sl])
    # and the measured inputs follow the truth (not zeros, not another head)
    em = z["emask"] > 0
    assert _nrmse(z["field"].astype(np.float64), h.truth["local_field"][sl], em) < 40
    assert _nrmse(z["r2p"].astype(np.float64), z["r2p_true"].astype(np.float64), em) < 40
    assert np.corrcoef(z["qsm"][em], (h.truth["chi_total"][sl])[em])[0, 1] > 0.6


def test_normalisation_from_the_cache(cache):
    vols = D.load_cache(cache, "train")
    norm = D.normalisation_from_volumes(vols)
    v = vols[0]
    m = v.masks["mask"] > 0
    for name, key in D.NORM_SOURCE.items():
        x = v.maps[key].astype(np.float64)[m]
        assert norm[name][0] == pytest.approx(x.mean(), rel=1e-4, abs=1e-7), name
        assert norm[name][1] == pytest.approx(x.std(), rel=1e-3), name


def test_train_then_evaluate_on_the_cache(cache, tmp_path):
    from chisep.cli import main
    from chisep.training import loop

    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--cache", str(cache), "--width", "2", "--patch", "16",
                 "--steps", "4", "--threads", "1", "--val-every", "2", "--ckpt-every", "2", "--p-shapes", "0"]) == 0
    assert (out / "ckpt_best.pt").exists()
    assert main(["train", "--out", str(out), "--cache", str(cache), "--evaluate", "--device", "cpu"]) == 0
    res = json.loads((out / "evaluation.json").read_text())
    assert list(res) == [f"val_{VAL_SEED:05d}"]
    got = res[f"val_{VAL_SEED:05d}"]
    # recompute the NRMSE of the evaluated checkpoint on the validation head by hand
    model, ck = loop.model_from_checkpoint(out / "ckpt_best.pt")
    import contextlib
    vol = D.load_cache(cache, "val")[0]
    pred = loop.infer_volume(model, vol, "chisepnet-r2prime", ck["norm"], "cpu", contextlib.nullcontext)
    em = vol.masks["emask"] > 0
    for c, key in (("chi_para", "para"), ("chi_dia", "dia")):
        mine = _nrmse(pred[c][0].astype(np.float64), vol.maps[key].astype(np.float64), em)
        assert got[c]["nrmse"] == pytest.approx(mine, rel=1e-3), c
        assert 0 < mine < 1000
