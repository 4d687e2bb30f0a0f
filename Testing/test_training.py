"""Training: the published loss on analytic cases, physics-exact augmentations, the patch cache, and a
tiny network that learns (loss falls), checkpoints that reload to identical outputs and resume."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from chisep import physics  # noqa: E402
from chisep.training import data as D  # noqa: E402
from chisep.training import losses as L  # noqa: E402
from chisep.training import loop  # noqa: E402


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]


@pytest.fixture(scope="module")
def patch():
    return loop.shapes_patch(7, 32)


def test_dipole_convolution_is_the_forward_model():
    rng = np.random.default_rng(0)
    chi = np.zeros((24, 20, 28))
    chi[6:14, 5:12, 9:20] = rng.uniform(0, 0.1, (8, 7, 11))
    f = physics.forward_field(chi, (1, 1, 1.5), physics.tilted_b0(20), pad_factor=2.0)
    ft = L.dipole_convolve(_t(chi), (1, 1, 1.5), physics.tilted_b0(20), pad=2.0)[0, 0].numpy()
    assert np.abs(ft - f).max() < 1e-6 * np.abs(f).max() + 1e-9


def test_loss_terms_zero_for_the_truth(patch):
    p = patch
    norm = {"chi_para": [0.02, 0.03], "chi_dia": [0.01, 0.02]}
    m = _t(p["mask"])
    yz = torch.cat([(_t(p["para"]) - 0.02) / 0.03, (_t(p["dia"]) - 0.01) / 0.02], 1) * m
    total, parts = L.chisep_loss(yz, yz, m, (norm["chi_para"], norm["chi_dia"]),
                                 field_ppm=_t(p["field"]), qsm_ppm=_t(p["para"] - p["dia"]),
                                 r2p_over_dr_ppm=_t(p["r2p_true"]))
    assert parts["l1"] == 0 and parts["gdl"] == 0
    scale = float(np.abs(p["field"]).mean())
    assert parts["field"] < 1e-5 * scale and parts["qsm"] < 1e-7 and parts["r2p"] < 1e-7
    # a wrong prediction costs in every term; the field term measures the field error in ppm
    wrong = yz.clone()
    wrong[:, 0] += 0.5 * m[:, 0]
    _, parts2 = L.chisep_loss(wrong, yz, m, (norm["chi_para"], norm["chi_dia"]),
                              field_ppm=_t(p["field"]), qsm_ppm=_t(p["para"] - p["dia"]),
                              r2p_over_dr_ppm=_t(p["r2p_true"]))
    assert parts2["l1"] == pytest.approx(0.25, rel=1e-5)   # 0.5 on one of the two channels
    assert parts2["qsm"] == pytest.approx(0.5 * 0.03, rel=1e-4)
    assert parts2["r2p"] == pytest.approx(0.5 * 0.03, rel=1e-4)
    assert parts2["field"] > 100 * parts["field"] + 1e-6


def test_gradient_difference_loss():
    rng = np.random.default_rng(1)
    a = _t(rng.standard_normal((12, 12, 12)))
    assert float(L.gradient_difference_loss(a, a)) == 0
    assert float(L.gradient_difference_loss(a + 3.0, a)) == pytest.approx(0, abs=1e-6)  # offsets are free
    ramp = _t(np.broadcast_to(np.arange(12.0)[:, None, None], (12, 12, 12)))
    # a unit ramp along one axis: forward differences differ by 1 on that axis, 0 on the others
    assert float(L.gradient_difference_loss(ramp, torch.zeros_like(ramp))) == pytest.approx(1 / 3)


def test_augmentations_are_exact_for_the_physics(patch):
    rng = np.random.default_rng(3)
    for _ in range(4):
        p = D.augment({k: v.copy() for k, v in patch.items()}, rng, (0.5, 2.0), True)
        f = L.dipole_convolve(_t(p["para"] - p["dia"]))[0, 0].numpy()
        m = p["mask"] > 0
        assert np.abs(f - p["field"])[m].max() < 1e-4 * np.abs(p["field"]).max()
        assert np.allclose(p["r2p_true"], p["para"] + p["dia"], atol=1e-6)


def test_cache_volume_and_sampler_are_deterministic(tmp_path):
    vols = []
    for i in range(2):
        arrays = {k: v.astype(np.float16) for k, v in loop.shapes_patch(20 + i, 32).items()
                  if k in D.MAP_KEYS}
        for k in D.MASK_KEYS:
            arrays[k] = (loop.shapes_patch(20 + i, 32)["mask"] > 0).astype(np.uint8)
        arrays["meta"] = np.array(json.dumps({"kind": "head" if i == 0 else "shapes", "seed": 20 + i}))
        D._save_atomic(tmp_path / f"{'head' if i == 0 else 'shapes'}_{i:05d}.npz", arrays)
    vols = D.load_cache(tmp_path, "train")
    assert {v.kind for v in vols} == {"head", "shapes"}
    s = D.PatchSampler(vols, patch=16, p_shapes=0.5, seed=4)
    a, b = s.batch(7, 2), s.batch(7, 2)
    assert a["field"].shape == (2, 1, 16, 16, 16)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["field"], s.batch(8, 2)["field"])
    norm = D.normalisation_from_volumes(vols)
    m = np.concatenate([v.masks["mask"].ravel() > 0 for v in vols])
    x = np.concatenate([v.maps["para"].ravel().astype(np.float64) for v in vols])[m]
    assert norm["chi_para"][0] == pytest.approx(x.mean(), rel=1e-6)
    assert norm["chi_para"][1] == pytest.approx(x.std(), rel=1e-4)


def _cfg(tmp_path, **kw):
    base = dict(out=str(tmp_path / "run"), kind="chisepnet-r2prime", width=4, steps=30, batch=2,
                patch=16, lr=2e-3, seed=1, threads=1, val_every=0, ckpt_every=10, log_every=5,
                shapes_only=True, shapes_pool=2, scale_min=1.0, scale_max=1.0, flips=False)
    base.update(kw)
    return loop.TrainConfig(**base)


def test_tiny_net_learns_checkpoints_reload_and_resume(tmp_path):
    pytest.importorskip("chisep.network.unet")
    cfg = _cfg(tmp_path)
    s = loop.train(cfg, log=lambda m: None)
    losses = s["last_losses"]
    assert len(losses) == 30 and s["step"] == 30
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    # a checkpoint reloads (weights_only) to identical outputs
    ck = tmp_path / "run" / "ckpt_last.pt"
    m1, c1 = loop.model_from_checkpoint(ck)
    m2, _ = loop.model_from_checkpoint(ck)
    x = torch.randn(1, 3, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(m1(x), m2(x))
    assert c1["step"] == 30 and set(c1["norm"]) >= {"field", "qsm", "r2prime_over_dr", "chi_para", "chi_dia"}
    # resume continues the step count, and the resumed run equals an uninterrupted one
    loop.train(_cfg(tmp_path, steps=40, resume=True), log=lambda m: None)
    _, c2 = loop.model_from_checkpoint(ck)
    assert c2["step"] == 40
    loop.train(_cfg(tmp_path, out=str(tmp_path / "straight"), steps=40), log=lambda m: None)
    _, c3 = loop.model_from_checkpoint(tmp_path / "straight" / "ckpt_last.pt")
    for k in c2["model"]:
        assert torch.allclose(c2["model"][k].float(), c3["model"][k].float(), atol=1e-5), k
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["event"] == "train"][-1] == 40


def test_r2prime_net_and_cli_export(tmp_path):
    pytest.importorskip("chisep.network.unet")
    pytest.importorskip("chisep.network.weights")
    from chisep.cli import main
    from chisep.network.weights import load_weights

    out = tmp_path / "r2p"
    assert main(["train", "--out", str(out), "--kind", "r2prime-from-r2star", "--width", "2",
                 "--patch", "16", "--steps", "4", "--threads", "1", "--val-every", "2", "--ckpt-every", "2"]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(x["event"] == "val" and "r2prime_over_dr" in x["nrmse"] for x in lines)
    dst = tmp_path / "w.safetensors"
    assert main(["train", "--out", str(out), "--export", str(dst)]) == 0
    w = load_weights(dst)
    assert dst.stat().st_size < 1_000_000
    _, ck = loop.model_from_checkpoint(out / "ckpt_best.pt")
    assert w.kind == "r2prime-from-r2star"
    for c in ("r2star_over_dr", "r2prime_over_dr"):
        assert tuple(w.norm[c]) == pytest.approx(tuple(ck["norm"][c]), rel=1e-12)
    # the exported (fp16) network gives the checkpoint's outputs
    x = torch.randn(1, 1, 16, 16, 16)
    m_ck, _ = loop.model_from_checkpoint(out / "ckpt_best.pt")
    with torch.no_grad():
        a = m_ck(x)
        b = w.model.float().eval()(x)
    assert torch.allclose(a, b, atol=2e-2 * float(a.abs().max()) + 1e-6)


# the cache builder is tested for real (simulated heads through the inference chain, lesion counts)
# in test_training_chain.py


def _lesioned_cache(tmp_path, n=32):
    """A one-head cache whose 'lesion' is a 3x3x3 cube at the mask's edge, plus r2p_pred."""
    p = loop.shapes_patch(31, n)
    arrays = {k: v.astype(np.float16) for k, v in p.items() if k in D.MAP_KEYS}
    for k in D.MASK_KEYS:
        arrays[k] = (p["mask"] > 0).astype(np.uint8)
    les = np.zeros((n, n, n), np.uint8)
    c = np.argwhere(arrays["mask"] > 0)
    c = c[np.argmax(np.abs(c - n // 2).sum(1))]      # the mask voxel farthest from the centre
    les[tuple(slice(max(a - 1, 0), a + 2) for a in c)] = 1
    arrays["lesion"] = les & arrays["mask"]
    arrays["r2p_pred"] = (2.0 * p["r2p"]).astype(np.float16)
    arrays["meta"] = np.array(json.dumps({"kind": "head", "seed": 31}))
    D._save_atomic(tmp_path / "head_00031.npz", arrays)
    return arrays


def test_lesion_centred_sampling_and_lesion_weighted_loss(tmp_path):
    arrays = _lesioned_cache(tmp_path)
    assert arrays["lesion"].sum() > 0
    vols = D.load_cache(tmp_path, "train")
    assert len(vols[0].lesion_centres) == int(arrays["lesion"].sum())
    keys = D.keys_for("chisepnet-r2prime", lesion=True)
    s = D.PatchSampler(vols, patch=16, p_shapes=0.0, seed=2, keys=keys, p_lesion=1.0, flips=False,
                       scale_range=None)
    b = s.batch(0, 8)
    # every patch is centred within a quarter patch of a lesion voxel, so it holds lesion voxels
    assert all(b["lesion"][i].sum() > 0 for i in range(8))
    s0 = D.PatchSampler(vols, patch=16, p_shapes=0.0, seed=2, keys=keys, p_lesion=0.0)
    frac0 = np.mean([s0.batch(k, 4)["lesion"].sum(axis=(1, 2, 3, 4)) > 0 for k in range(5)])
    assert frac0 < 1.0
    # a head without lesions cannot serve lesion-centred sampling
    with pytest.raises(ValueError, match="add-lesions"):
        D.PatchSampler([v for v in vols if False] + [D.Volume({k: a for k, a in arrays.items() if k != "lesion"})],
                       p_lesion=0.5)
    # the lesion voxels count lesion_weight times in the L1 term: a weighted mean
    m = torch.ones(1, 1, 4, 4, 4)
    les = torch.zeros_like(m)
    les[..., :2, :, :] = 1                     # half the voxels
    pred = torch.zeros(1, 2, 4, 4, 4)
    tgt = torch.zeros_like(pred)
    tgt[:, :, :2] = 1.0                        # error 1 in lesion voxels, 0 elsewhere
    nrm = ((0.0, 1.0), (0.0, 1.0))
    w = L.LossWeights(1.0, 0.0, 0.0, 0.0, 0.0)
    _, p1 = L.chisep_loss(pred, tgt, m, nrm, weights=w)
    _, p3 = L.chisep_loss(pred, tgt, m, nrm, weights=w, lesion=les, lesion_weight=3.0)
    assert p1["l1"] == pytest.approx(0.5)
    assert p3["l1"] == pytest.approx(3.0 / 4.0)  # (3 * 32) / (3 * 32 + 32)


def test_r2star_chisepnet_trains_on_the_predicted_r2prime(tmp_path):
    arrays = _lesioned_cache(tmp_path)
    vols = D.load_cache(tmp_path, "train")
    keys = D.keys_for("chisepnet-r2prime", r2prime_key="r2p_pred")
    assert "r2p_pred" in keys and "r2p" not in keys
    b = D.PatchSampler(vols, patch=16, p_shapes=0.0, seed=1, keys=keys, scale_range=None,
                       flips=False).batch(0, 1)
    norm = {c: [0.0, 1.0] for c in D.CHISEP_INPUTS + D.CHISEP_OUTPUTS}
    x, _, t = loop.to_tensors(b, "chisepnet-r2prime", norm, "cpu", r2prime_key="r2p_pred")
    m = b["mask"][0, 0] > 0
    # the third input channel and the physics term's R2' are the predicted map
    assert np.allclose(x[0, 2].numpy()[m], b["r2p_pred"][0, 0].astype(np.float32)[m])
    assert np.allclose(t["r2p"][0, 0].numpy(), b["r2p_pred"][0, 0].astype(np.float32))
    # and a training run reads it from the cache
    cfg = loop.TrainConfig(out=str(tmp_path / "run"), cache=str(tmp_path), width=4, steps=4, batch=2,
                           patch=16, threads=1, val_every=0, ckpt_every=0, log_every=2, p_shapes=0.0,
                           r2prime_key="r2p_pred", p_lesion=0.5, lesion_weight=4.0, snapshot_every=2)
    s = loop.train(cfg, log=lambda m: None)
    assert s["step"] == 4 and (tmp_path / "run" / "ckpt_step2.pt").exists()
    with pytest.raises(KeyError, match="r2p_pred"):
        D.Volume({k: a for k, a in arrays.items() if k != "r2p_pred"}).patch((8, 8, 8), 8, ("r2p_pred",))


def test_no_fallback_chain_failures_are_loud():
    """The cache is made by the inference chain only: no stand-in, no catch-all."""
    from chisep.io import InputError

    assert not hasattr(D, "_fallback_chain") and not hasattr(D, "CHAIN")
    mag = np.ones((8, 8, 8, 3), np.float32)
    with pytest.raises((InputError, ValueError)):
        # echo times that do not match the echoes: preprocess_gre refuses, and so does the cache
        D._preprocess_and_qsm(mag, np.zeros_like(mag), (0.005, 0.01), np.eye(4), 3.0, None, None)
    assert D.BG_METHOD == "lbv-qsm"


def test_fine_tuning_starts_from_the_weights_exactly(tmp_path):
    """--init-weights: the step-0 checkpoint holds the weights' network (BatchNorm statistics too) and
    normalisation, so the first forward pass of the fine-tuning equals inference with the weights."""
    pytest.importorskip("safetensors")
    from chisep.network.weights import load_weights

    cfg = _cfg(tmp_path, out=str(tmp_path / "src"), steps=3)
    loop.train(cfg, log=lambda m: None)
    wfile = tmp_path / "w.safetensors"
    loop.export_weights(tmp_path / "src" / "ckpt_last.pt", wfile, dtype="float32")
    ft = _cfg(tmp_path, out=str(tmp_path / "ft"), steps=3)
    ck = loop.init_checkpoint_from_weights(wfile, tmp_path / "ft", ft)
    m, c = loop.model_from_checkpoint(ck)
    ws = load_weights(wfile, kind=ft.kind)
    x = torch.randn(1, 3, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(m(x), ws.model.float()(x))
    assert c["step"] == 0 and c["optim"] == {}
    for k, v in ws.norm.items():
        assert c["norm"][k] == pytest.approx(list(v))
    with pytest.raises(FileExistsError):
        loop.init_checkpoint_from_weights(wfile, tmp_path / "ft", ft)


def test_warmup_ramps_the_learning_rate():
    cfg = loop.TrainConfig(out="x", lr=1e-4, warmup_steps=10)
    assert [loop._lr_at(cfg, s) for s in (0, 4, 9, 10, 50)] == pytest.approx([1e-5, 5e-5, 1e-4, 1e-4, 1e-4])


def test_widened_acquisitions_cover_the_requested_ranges():
    from chisep.training.widen import acquisition

    acqs = [acquisition(s) for s in range(2000, 2300)]
    assert {a["b0_t"] for a in acqs} == {1.5, 3.0, 7.0}
    assert {len(a["te_s"]) for a in acqs} == set(range(3, 9))
    te1 = [a["te_s"][0] for a in acqs]
    dte = [a["te_s"][1] - a["te_s"][0] for a in acqs]
    assert 0.002 <= min(te1) and max(te1) <= 0.006 and 0.002 <= min(dte) and max(dte) <= 0.008
    ip = [a["voxel_size"][0] for a in acqs]
    sl = [a["voxel_size"][2] for a in acqs]
    assert 0.6 <= min(ip) < 0.7 and 1.4 < max(ip) <= 1.5 and 1.0 <= min(sl) < 1.2 and 2.8 < max(sl) <= 3.0
    tilts = [a["tilt_deg"] for a in acqs]
    assert min(tilts) == 0.0 and 25 < max(tilts) <= 30 and sum(t > 0 for t in tilts) > 150
    snr = [a["snr"] for a in acqs]
    assert 20 <= min(snr) < 25 and 170 < max(snr) <= 200
    assert {a["phase_sign"] for a in acqs} == {1, -1}
    assert acquisition(2000) == acquisition(2000)
    full = [acquisition(s, "full")["voxel_size"] for s in range(2000, 2100)]
    assert {v[2] for v in full} == {1.0, 2.0, 3.0} and {v[0] for v in full} == {1.0}
