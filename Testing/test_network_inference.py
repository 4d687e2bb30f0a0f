"""chi-sepnet inference engine: input grids, padding, tiling, precision, the R2* pipeline and errors.

Tiny random-initialised networks test the numerics of the engine, not trained accuracy.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from chisep import physics as P  # noqa: E402
from chisep.io import InputError  # noqa: E402
from chisep.network import inference as I  # noqa: E402
from chisep.network import weights as W  # noqa: E402
from common import untrained_net  # noqa: E402

torch.set_num_threads(2)
MAPS = ("chi_para", "chi_dia", "chi_total")


#: output constants with mean 0 so that the comparisons are not dominated by the mean offset
NORM = dict(W.PUBLISHED_NORMALISATION, chi_para=(0.0, 0.03), chi_dia=(0.0, 0.03), r2prime_over_dr=(0.05, 0.07))


@pytest.fixture(scope="module")
def ws():
    return W.WeightSet(untrained_net(), "chisepnet-r2prime", dict(NORM), width=4)


def _inputs(shape, vs=(1, 1, 1), seed=0, shrink=0.84):
    g = np.meshgrid(*[np.arange(n) * d for n, d in zip(shape, vs)], indexing="ij")
    c = [(n - 1) * d / 2 for n, d in zip(shape, vs)]
    mask = sum(((a - cc) / (shrink * n * d / 2)) ** 2 for a, cc, n, d in zip(g, c, shape, vs)) < 1
    rng = np.random.default_rng(seed)
    f = (0.01 * np.sin(g[0] / 5) * np.cos(g[1] / 7) + 0.002 * rng.standard_normal(shape)).astype(np.float32)
    q = (2 * f + 0.01 * np.cos(g[2] / 6)).astype(np.float32)
    r2p = (6 + 3 * np.cos(g[2] / 6) + rng.standard_normal(shape)).astype(np.float32)
    return f * mask, r2p * mask, q * mask, mask


def _nrmse(a, b, m):
    return float(np.sqrt(np.mean((a - b)[m] ** 2) / np.mean(b[m] ** 2)))


def _check_maps(res, shape, mask):
    for k in MAPS:
        assert res[k].shape == shape and res[k].dtype == np.float32 and np.all(np.isfinite(res[k]))
        assert np.all(res[k][~mask] == 0)
    assert res["chi_para"].min() >= 0 and res["chi_dia"].min() >= 0
    assert np.allclose(res["chi_total"], res["chi_para"] - res["chi_dia"])
    assert np.mean(res["chi_para"][mask] > 0) > 0.5


ROT15 = np.array([[1, 0, 0], [0, np.cos(np.pi / 12), -np.sin(np.pi / 12)], [0, np.sin(np.pi / 12), np.cos(np.pi / 12)]])


@pytest.mark.parametrize("case", ["odd_1mm", "1x1x2mm", "oblique_15deg", "b0dir_15deg"])
def test_any_grid_comes_back_on_the_input_grid(ws, case):
    shape, vs = (45, 53, 41), (1.0, 1.0, 1.0)
    aff = np.eye(4)
    aff[:3, 3] = (-22, -30, -10)
    b0 = None
    if case == "1x1x2mm":
        vs, shape = (1.0, 1.0, 2.0), (45, 53, 24)
        aff[:3, :3] = np.diag(vs)
    elif case == "oblique_15deg":
        aff[:3, :3] = ROT15
    elif case == "b0dir_15deg":
        b0 = P.tilted_b0(15.0, "y")
    f, r2p, q, mask = _inputs(shape, vs)
    aff0 = aff.copy()
    res = I.predict_chisep(ws, f, r2p, q, mask, aff, b0_dir=b0, precision="fp32")
    _check_maps(res, shape, mask)
    assert np.array_equal(aff, aff0)
    run = I.run_chisepnet("chisepnet-r2prime", f, mask, aff, r2prime_hz=r2p, qsm_ppm=q, weights=ws,
                          precision="fp32", b0_dir=b0)
    for k in MAPS:
        assert np.max(np.abs(run[k] - res[k])) < 1e-6
    g = run["weights_info"]["network_grid"]
    assert g["identity"] == (case == "odd_1mm")
    if case in ("oblique_15deg", "b0dir_15deg"):
        assert abs(g["tilt_deg"] - 15) < 1e-6


def test_no_border_artefacts_from_padding(ws):
    """A volume and the same volume embedded in a larger empty background give the same maps."""
    shape = (45, 53, 41)
    f, r2p, q, mask = _inputs(shape, shrink=0.96)  # the mask nearly touches the borders
    big = (80, 96, 72)
    off = (7, 30, 16)
    sl = tuple(slice(o, o + n) for o, n in zip(off, shape))

    def embed(v):
        out = np.zeros(big, v.dtype)
        out[sl] = v
        return out

    a = I.predict_chisep(ws, f, r2p, q, mask, np.eye(4), precision="fp32")
    b = I.predict_chisep(ws, embed(f), embed(r2p), embed(q), embed(mask), np.eye(4), precision="fp32")
    for k in MAPS:
        assert np.all(b[k][sl][~mask] == 0) and np.count_nonzero(b[k]) == np.count_nonzero(b[k][sl])
        assert np.max(np.abs(b[k][sl] - a[k])[mask]) < 1e-4 * float(np.abs(a[k]).max())


def test_tiled_equals_whole(ws):
    f, r2p, q, mask = _inputs((48, 48, 44))
    a = I.predict_chisep(ws, f, r2p, q, mask, np.eye(4), precision="fp32")
    seen = []
    b = I.predict_chisep(ws, f, r2p, q, mask, np.eye(4), precision="fp32", tile_size=48, overlap=16,
                         progress=lambda fr, msg: seen.append(msg))
    assert any(m.startswith("tile ") for m in seen) and len(seen) >= 8
    for k in ("chi_para", "chi_dia"):
        assert _nrmse(b[k], a[k], mask) < 0.01
    # a memory budget picks the tile size: plenty -> whole volume; a small one -> the same 48^3 tiles
    _, win = I._window(mask, None)
    assert I.tile_for_memory(64.0, 4, "fp32", win) is None
    assert I.tile_for_memory(1e-6, 32, "fp32", win) == 32  # never below 32
    gb = next(g for g in np.linspace(0.002, 0.05, 97) if I.tile_for_memory(g, 4, "fp32", win) == 48)
    seen.clear()
    c = I.predict_chisep(ws, f, r2p, q, mask, np.eye(4), precision="fp32", max_memory_gb=gb, overlap=16,
                         progress=lambda fr, msg: seen.append(msg))
    assert any(m.startswith("tile ") for m in seen)
    for k in ("chi_para", "chi_dia"):  # the budget's tile shape need not be cubic: compare with the whole volume
        assert _nrmse(c[k], a[k], mask) < 0.01
    t = I.tile_shape_for_memory(gb, 4, "fp32", win, overlap=16)
    assert all(s % 16 == 0 for s in t) and np.prod(t) <= 48 ** 3 and any(s < w for s, w in zip(t, win))
    with pytest.raises(InputError, match="max_memory_gb"):
        I.tile_for_memory(-1, 4, "fp32", win)


def test_reduced_precision_within_one_percent(ws):
    f, r2p, q, mask = _inputs((40, 44, 36))
    a = I.predict_chisep(ws, f, r2p, q, mask, np.eye(4), precision="fp32")
    c = I.predict_chisep(ws, f, r2p, q, mask, np.eye(4), precision="channels_last")
    for k in MAPS:
        assert np.max(np.abs(c[k] - a[k])) < 1e-5
    if hasattr(torch.ops.mkldnn, "_convolution_pointwise"):  # fused conv+ReLU is what ran, and agrees
        assert I._runner(ws, "cpu", "channels_last").fused_relu
    if not I.cpu_bf16_supported():
        with pytest.raises(InputError, match="bf16"):
            I.predict_chisep(ws, f, r2p, q, mask, np.eye(4), precision="bf16", device="cpu")
        assert I.resolve_precision("auto", torch.device("cpu")) == "channels_last"
        return
    assert I.resolve_precision("auto", torch.device("cpu")) == "bf16"
    b = I.predict_chisep(ws, f, r2p, q, mask, np.eye(4), precision="bf16", device="cpu")
    for k in ("chi_para", "chi_dia"):
        assert _nrmse(b[k], a[k], mask) < 0.01


def test_r2star_pipeline_and_qsm_channel_sources(ws):
    shape = (40, 44, 36)
    f, r2p, q, mask = _inputs(shape)
    r2s = (r2p + 12) * mask
    rw = W.WeightSet(untrained_net(1, 1, 2, seed=5), "r2prime-from-r2star", dict(NORM), width=2)
    qw = W.WeightSet(untrained_net(1, 1, 2, seed=6), "qsm", dict(NORM), width=2)
    r2p_hat = I.predict_r2prime_from_r2star(rw, r2s, mask, np.eye(4), precision="fp32")
    assert r2p_hat.shape == shape and r2p_hat.min() >= 0 and np.all(r2p_hat[~mask] == 0)
    assert np.mean(r2p_hat[mask] > 0) > 0.5
    res = I.run_chisepnet("chisepnet-r2star", f, mask, np.eye(4), r2star_hz=r2s, qsm_ppm=q,
                          weights={"chisepnet": ws, "r2prime": rw}, precision="fp32")
    _check_maps(res, shape, mask)
    assert np.max(np.abs(res["r2prime"] - r2p_hat)) < 1e-5
    direct = I.predict_chisep(ws, f, r2p_hat, q, mask, np.eye(4), precision="fp32")
    for k in MAPS:
        assert np.max(np.abs(res[k] - direct[k])) < 1e-5
    assert res["weights_info"]["qsm_channel"] == "user" and res["device"] == "cpu"
    # QSM channel: closed form when none is given, a QSM net when one is
    cf = I.run_chisepnet("chisepnet-r2prime", f, mask, np.eye(4), r2prime_hz=r2p, weights={"chisepnet": ws},
                         precision="fp32")
    assert cf["weights_info"]["qsm_channel"] == "closed-form"
    from chisep.qsm import qsm_closed_form
    ref = I.predict_chisep(ws, f, r2p, qsm_closed_form(f, mask, (1, 1, 1), (0, 0, 1)), mask, np.eye(4), precision="fp32")
    assert np.max(np.abs(cf["chi_para"] - ref["chi_para"])) < 1e-5
    qn = I.run_chisepnet("chisepnet-r2prime", f, mask, np.eye(4), r2prime_hz=r2p, weights={"chisepnet": ws, "qsm": qw},
                         precision="fp32")
    assert qn["weights_info"]["qsm_channel"] == "qsm-net" and qn["qsm"].shape == shape
    ref = I.predict_chisep(ws, f, r2p, I.predict_qsm(qw, f, mask, np.eye(4), precision="fp32"), mask, np.eye(4),
                           precision="fp32")
    assert np.max(np.abs(qn["chi_dia"] - ref["chi_dia"])) < 1e-5


def test_errors(ws):
    f, r2p, q, mask = _inputs((16, 16, 16))
    with pytest.raises(InputError, match="precision"):
        I.predict_chisep(ws, f, r2p, q, mask, np.eye(4), precision="int8")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            I.predict_chisep(ws, f, r2p, q, mask, np.eye(4), device="cuda")
    with pytest.raises(InputError, match="empty"):
        I.predict_chisep(ws, f, r2p, q, np.zeros_like(mask), np.eye(4))
    with pytest.raises(InputError, match="shape"):
        I.predict_chisep(ws, f[:-1], r2p, q, mask, np.eye(4))
    with pytest.raises(InputError, match="R2'"):
        I.run_chisepnet("chisepnet-r2prime", f, mask, np.eye(4), weights=ws)
    with pytest.raises(InputError, match="needs chisepnet-r2prime"):
        I.predict_chisep(W.WeightSet(untrained_net(1, 1, 2), "qsm", NORM), f, r2p, q, mask, np.eye(4))


def test_engine_record_and_cpu_features(ws):
    """run_chisepnet records the engine and the CPU's features; on a CPU without native bf16 ``auto``
    timed torch against onnxruntime and kept the faster; maps agree with the fp32 reference."""
    f, r2p, q, mask = _inputs((40, 44, 36))
    res = I.run_chisepnet("chisepnet-r2prime", f, mask, np.eye(4), r2prime_hz=r2p, qsm_ppm=q,
                          weights={"chisepnet": ws}, device="cpu", precision="auto")
    eng = res["engine"]
    assert res["weights_info"]["engine"] == eng
    feats = eng["cpu"]
    for k in ("avx2", "avx512", "avx512_bf16", "amx", "bf16_native"):
        assert isinstance(feats[k], bool)
    assert feats["bf16_native"] == I.cpu_bf16_supported() and feats["model"]
    if I.cpu_bf16_supported():
        assert eng["engine"].startswith("torch-bf16")
    else:
        pytest.importorskip("onnxruntime")
        p = eng["probe_s"]
        faster = "onnxruntime" if p["onnxruntime"] < p["torch"] else "torch"
        assert eng["engine"].startswith(faster)
    ref = I.predict_chisep(ws, f, r2p, q, mask, np.eye(4), precision="fp32", device="cpu")
    tol = 0.01 if I.cpu_bf16_supported() else 1e-3
    for k in ("chi_para", "chi_dia"):
        assert _nrmse(res[k], ref[k], mask) < tol
