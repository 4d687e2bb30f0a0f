"""chi-sepnet U-Net and weight files: published checkpoints, safetensors, ONNX, built-in lookup.

Tiny random-initialised networks test the machinery numerically (not trained accuracy).
"""
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from chisep.io import InputError  # noqa: E402
from common import ellipsoid_grid, untrained_net  # noqa: E402
from chisep.network import weights as W  # noqa: E402
from chisep.network.inference import predict_chisep  # noqa: E402
from chisep.network.unet import ChiSepUNet, fuse_batchnorm  # noqa: E402

torch.set_num_threads(2)

AUTHOR_NAMES = ["conv11", "conv12", "conv21", "conv22", "conv31", "conv32", "conv41", "conv42", "l_conv1",
                "l_conv2", "conv51", "conv52", "conv61", "conv62", "conv71", "conv72", "conv81", "conv82"]


def _net(cin=3, cout=2, width=4, seed=0):
    """A random net with non-trivial BatchNorm statistics, scale and shift, in eval mode."""
    return untrained_net(cin, cout, width, seed, random_bn_affine=True)


def _volume(shape=(40, 44, 36), seed=0):
    g, c, mask = ellipsoid_grid(shape)
    rng = np.random.default_rng(seed)
    f = (0.01 * np.sin(g[0] / 5) * np.cos(g[1] / 7) + 0.002 * rng.standard_normal(shape)).astype(np.float32)
    q = (2 * f + 0.01 * np.cos(g[2] / 6)).astype(np.float32)
    r2p = (6 + 3 * np.cos(g[2] / 6) + rng.standard_normal(shape)).astype(np.float32)
    return f, r2p, q, mask


def _ws(model, kind="chisepnet-r2prime"):
    return W.WeightSet(model, kind, dict(W.PUBLISHED_NORMALISATION), width=model.width)


def test_published_size_and_author_names():
    m = ChiSepUNet()
    n = sum(p.numel() for p in m.parameters())
    assert 22.4e6 < n < 22.8e6, n
    sd = m.state_dict()
    for name in AUTHOR_NAMES:
        for p in ("conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                  "bn.num_batches_tracked"):
            assert f"{name}.{p}" in sd
    for d in ("deconv4", "deconv3", "deconv2", "deconv1"):
        assert f"{d}.deconv.weight" in sd and f"{d}.deconv.bias" in sd
    assert sd["out.conv.weight"].shape == (2, 32, 1, 1, 1)
    assert sd["conv11.conv.weight"].shape == (32, 3, 3, 3, 3) and sd["l_conv2.conv.weight"].shape[0] == 512


def test_forward_shapes_and_bn_fusion():
    m = _net(1, 1, 2)
    x = torch.randn(2, 1, 16, 32, 48)
    with torch.no_grad():
        y = m(x)
        import copy
        yf = fuse_batchnorm(copy.deepcopy(m))(x)
    assert y.shape == (2, 1, 16, 32, 48)
    assert torch.allclose(y, yf, atol=1e-5)


def _save_published_checkpoint(model, path, epoch=0, module_prefix=False):
    """Write ``model`` the way the published code saves it: ``{'epoch', 'state_dict'}``."""
    sd = {("module." if module_prefix else "") + k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save({"epoch": int(epoch), "state_dict": sd}, str(path))
    return path


@pytest.mark.parametrize("prefix,suffix", [(False, ".pth"), (True, ".pth.tar")])
def test_published_checkpoint_reproduces_outputs(tmp_path, prefix, suffix):
    m = _net(width=4, seed=1)
    p = _save_published_checkpoint(m, tmp_path / f"chisepnet{suffix}", epoch=7, module_prefix=prefix)
    raw = torch.load(p, map_location="cpu", weights_only=True)
    assert raw["epoch"] == 7 and all(k.startswith("module.") == prefix for k in raw["state_dict"])
    ws = W.load_weights(p)
    assert ws.kind == "chisepnet-r2prime" and ws.width == 4 and ws.meta["format"] == "published-pth"
    assert ws.norm == W.PUBLISHED_NORMALISATION and len(ws.sha256) == 64
    x = torch.randn(1, 3, 32, 32, 16)
    with torch.no_grad():
        assert torch.allclose(m(x), ws.model(x), atol=1e-5)
    f, r2p, q, mask = _volume()
    a = predict_chisep(_ws(m), f, r2p, q, mask, np.eye(4), precision="fp32")
    b = predict_chisep(ws, f, r2p, q, mask, np.eye(4), precision="fp32")
    for k in ("chi_para", "chi_dia", "chi_total"):
        assert np.max(np.abs(a[k] - b[k])) < 1e-5


def test_bare_state_dict_and_r2prime_kind(tmp_path):
    m = _net(1, 1, 2, seed=2)
    torch.save(m.state_dict(), tmp_path / "r2p.pth")
    with pytest.raises(InputError, match="r2prime-from-r2star"):
        W.load_weights(tmp_path / "r2p.pth")  # 1 -> 1 is ambiguous without a kind
    ws = W.load_weights(tmp_path / "r2p.pth", kind="r2prime-from-r2star")
    assert ws.kind == "r2prime-from-r2star" and ws.width == 2
    with pytest.raises(InputError, match="3 -> 2"):
        W.load_weights(tmp_path / "r2p.pth", kind="chisepnet-r2prime")


def test_mismatched_checkpoint_names_keys_and_shapes(tmp_path):
    m = _net(width=4)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd.pop("conv52.bn.running_var")
    sd["decoder.extra.weight"] = torch.zeros(3)
    sd["conv61.conv.weight"] = torch.zeros(16, 31, 3, 3, 3)
    torch.save({"epoch": 1, "state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(InputError) as e:
        W.load_weights(tmp_path / "bad.pth")
    msg = str(e.value)
    assert "missing keys: conv52.bn.running_var" in msg
    assert "unexpected keys: decoder.extra.weight" in msg
    assert "conv61.conv.weight: file (16, 31, 3, 3, 3) vs network (16, 32, 3, 3, 3)" in msg
    torch.save({"epoch": 1, "state_dict": {"foo.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="conv11.conv.weight"):
        W.load_weights(tmp_path / "other.pth")


def test_safetensors_round_trip(tmp_path):
    m = _net(width=4, seed=3)
    norm = {k: (0.01 * i, 0.1 + 0.01 * i) for i, k in enumerate(["qsm", "field", "r2prime_over_dr", "chi_para", "chi_dia"])}
    p32 = W.save_weights(m, tmp_path / "w32.safetensors", "chisepnet-r2prime", norm, {"trained_by": "test"},
                         dtype=torch.float32)
    ws = W.load_weights(p32)
    assert ws.kind == "chisepnet-r2prime" and ws.width == 4 and ws.norm == norm and ws.dr == 114.0
    assert ws.meta["trained_by"] == "test" and ws.info()["provenance"] == "test"
    for k, v in m.state_dict().items():
        assert torch.equal(v, ws.model.state_dict()[k]), k
    p16 = W.save_weights(m, tmp_path / "w16.safetensors", "chisepnet-r2prime", norm)
    assert p16.stat().st_size < 0.6 * p32.stat().st_size
    x = torch.randn(1, 3, 16, 16, 16)
    with torch.no_grad():
        y, y16 = m(x), W.load_weights(p16).model(x)
    assert torch.sqrt(torch.mean((y - y16) ** 2)) / torch.sqrt(torch.mean(y ** 2)) < 5e-3
    with pytest.raises(InputError, match="lack"):
        W.save_weights(m, tmp_path / "x.safetensors", "chisepnet-r2prime", {"qsm": (0, 1)})
    with pytest.raises(InputError, match="channels"):
        W.save_weights(_net(1, 1, 2), tmp_path / "x.safetensors", "chisepnet-r2prime", norm)
    with pytest.raises(InputError, match="r2prime-from-r2star weights are needed"):
        W.load_weights(p32, kind="r2prime-from-r2star")


def test_missing_builtin_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CHISEP_WEIGHTS_DIR", str(tmp_path))
    assert W.builtin_weights_dir() == tmp_path
    for kind in ("chisepnet-r2prime", "r2prime-from-r2star", "qsm"):
        with pytest.raises(InputError) as e:
            W.load_builtin(kind)
        msg = str(e.value)
        assert msg.startswith(f"no trained weights installed for {kind}:")
        assert "chisep train" in msg and "--weights PATH" in msg and W.BUILTIN_FILES[kind] in msg
    from chisep.network.inference import run_chisepnet
    f, r2p, q, mask = _volume((16, 16, 16))
    with pytest.raises(InputError, match="no trained weights installed for chisepnet-r2prime"):
        run_chisepnet("chisepnet-r2prime", f, mask, np.eye(4), r2prime_hz=r2p, qsm_ppm=q)
    # once a file is installed it is found, with its model card
    W.save_weights(_net(width=2), tmp_path / "chisepnet_r2prime.safetensors", "chisepnet-r2prime",
                   W.PUBLISHED_NORMALISATION, {"provenance": "unit test"})
    (tmp_path / "chisepnet_r2prime.md").write_text("# model card\n")
    ws = W.load_builtin("chisepnet-r2prime")
    assert ws.width == 2 and ws.info()["model_card"].endswith("chisepnet_r2prime.md")


def test_r2star_pipeline_uses_its_own_builtin_chisepnet_when_installed(tmp_path, monkeypatch):
    from chisep.network.inference import resolve_weights

    monkeypatch.setenv("CHISEP_WEIGHTS_DIR", str(tmp_path))
    norm = W.PUBLISHED_NORMALISATION
    W.save_weights(_net(width=2, seed=1), tmp_path / W.BUILTIN_FILES["chisepnet-r2prime"], "chisepnet-r2prime", norm)
    W.save_weights(_net(1, 1, width=2), tmp_path / W.BUILTIN_FILES["r2prime-from-r2star"], "r2prime-from-r2star", norm)
    # without the variant both pipelines share the chi-sepnet
    a = resolve_weights("chisepnet-r2star")["chisepnet"]
    assert Path(a.path).name == W.BUILTIN_FILES["chisepnet-r2prime"]
    W.save_weights(_net(width=2, seed=2), tmp_path / W.BUILTIN_R2STAR_CHISEPNET, "chisepnet-r2prime", norm)
    assert Path(resolve_weights("chisepnet-r2star")["chisepnet"].path).name == W.BUILTIN_R2STAR_CHISEPNET
    assert Path(resolve_weights("chisepnet-r2prime")["chisepnet"].path).name == W.BUILTIN_FILES["chisepnet-r2prime"]
    # weights the user gives win over both built-ins
    own = tmp_path / "own.safetensors"
    W.save_weights(_net(width=2, seed=3), own, "chisepnet-r2prime", norm)
    assert Path(resolve_weights("chisepnet-r2star", {"chisepnet": own})["chisepnet"].path) == own


def test_default_builtin_dir_is_package_data(monkeypatch):
    import chisep

    monkeypatch.delenv("CHISEP_WEIGHTS_DIR", raising=False)
    d = W.builtin_weights_dir()
    assert d == Path(chisep.__file__).resolve().parent / "weights"
    # every built-in file is there, with the model card its report cites
    for name in list(W.BUILTIN_FILES.values())[:2] + [W.BUILTIN_R2STAR_CHISEPNET]:
        assert (d / name).is_file(), name
    assert (d / "MODEL_CARD.md").is_file()


@pytest.mark.parametrize("dynamic", [True, False])
def test_onnx_agrees_with_torch(tmp_path, dynamic):
    pytest.importorskip("onnxruntime")
    m = _net(width=4, seed=4)
    p = W.export_onnx(m, tmp_path / "net.onnx", dynamic=dynamic, shape=(32, 32, 32),
                      kind="chisepnet-r2prime" if dynamic else None,
                      norm=W.PUBLISHED_NORMALISATION if dynamic else None)
    ws = W.load_weights(p)
    assert isinstance(ws.model, W.OnnxNet) and ws.kind == "chisepnet-r2prime"
    assert ws.model.fixed_shape == (None if dynamic else (32, 32, 32))
    shapes = [(32, 32, 32), (16, 48, 32)] if dynamic else [(32, 32, 32)]
    for s in shapes:
        x = torch.randn((1, 3) + s)
        with torch.no_grad():
            y = m(x).numpy()
        assert np.max(np.abs(ws.model(x.numpy()) - y)) < 1e-4
    # through the whole inference chain (a fixed-shape model is tiled to its shape)
    f, r2p, q, mask = _volume((40, 44, 36))
    tile = None if dynamic else 32
    a = predict_chisep(_ws(m), f, r2p, q, mask, np.eye(4), precision="fp32", tile_size=tile)
    b = predict_chisep(ws, f, r2p, q, mask, np.eye(4), tile_size=tile)
    for k in ("chi_para", "chi_dia"):
        assert np.max(np.abs(a[k] - b[k])) < 1e-4 * max(1.0, float(np.abs(a[k]).max()))
