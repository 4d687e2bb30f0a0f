"""Where chi-sepnet's QSM channel comes from, end to end through ``chisep run``, and what report.json
says about it: the closed-form QSM by default, the QSM net of ``--qsm-weights`` when given (it used
to be computed and then ignored while the report listed it), the user's map with ``--qsm``.
Also: a demo that cannot run a method it was asked for exits 2 instead of leaving it out.

Tiny untrained networks written in the project's weight format stand in for trained ones: the
test checks which network and which channel were used, not trained accuracy.
"""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from chisep.cli import main  # noqa: E402
from chisep.io import file_sha256, load_nifti, save_nifti  # noqa: E402
from chisep.network import inference as I  # noqa: E402
from chisep.network import weights as W  # noqa: E402
from common import ellipsoid_grid, untrained_net  # noqa: E402
from chisep.qsm import qsm_closed_form  # noqa: E402

torch.set_num_threads(2)
SHAPE = (32, 36, 28)
#: output constants: QSM with mean 0 so that its differences are not hidden under an offset, chi
#: with a positive mean so that an untrained net gives maps that are not all clipped to 0
NORM = dict(W.PUBLISHED_NORMALISATION, chi_para=(0.02, 0.03), chi_dia=(0.02, 0.03), qsm=(0.0, 0.03))


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("qsmch")
    g, c, mask = ellipsoid_grid(SHAPE)
    rng = np.random.default_rng(0)
    field = ((0.01 * np.sin(g[0] / 5) * np.cos(g[1] / 7) + 0.002 * rng.standard_normal(SHAPE)) * mask)
    r2p = (6 + 3 * np.cos(g[2] / 6)) * mask
    user_qsm = (0.05 * np.cos(g[2] / 4)) * mask
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    files = {}
    for name, arr in (("field", field), ("r2prime", r2p), ("mask", mask), ("user_qsm", user_qsm)):
        files[name] = save_nifti(d / f"{name}.nii.gz", arr.astype(np.float32), aff)
    files["chisepnet"] = W.save_weights(untrained_net(3, 2, width=2, seed=1), d / "cs.safetensors", "chisepnet-r2prime", NORM,
                                        {"provenance": "untrained, test"}, dtype=torch.float32)
    files["qsm_net"] = W.save_weights(untrained_net(1, 1, width=2, seed=2), d / "qsm.safetensors", "qsm", NORM,
                                      {"provenance": "untrained, test"}, dtype=torch.float32)
    return d, files


def _run(case, out, *extra):
    d, f = case
    argv = ["run", "--local-field", str(f["field"]), "--field-unit", "ppm", "--r2prime", str(f["r2prime"]),
            "--mask", str(f["mask"]), "--weights", str(f["chisepnet"]), "--device", "cpu",
            "--precision", "fp32", "--progress", "none", "--out", str(d / out), *extra]
    return main(argv), d / out


def _maps(out):
    return {k: load_nifti(out / f"{k}.nii.gz", ndim=3)[0] for k in ("qsm", "chi_para", "chi_dia")}


def test_qsm_weights_change_the_qsm_channel_and_report_says_so(case):
    d, f = case
    field, aff = load_nifti(f["field"], ndim=3)
    r2p, _ = load_nifti(f["r2prime"], ndim=3)
    mask = load_nifti(f["mask"], ndim=3)[0] > 0
    cs = W.load_weights(f["chisepnet"])
    qnet = W.load_weights(f["qsm_net"])

    rc, a = _run(case, "closed")
    assert rc == 0
    rc, b = _run(case, "net", "--qsm-weights", str(f["qsm_net"]))
    assert rc == 0
    ma, mb = _maps(a), _maps(b)

    # default: the closed-form QSM of the local field
    ref_cf = qsm_closed_form(field, mask, (1, 1, 1), (0, 0, 1))
    assert np.max(np.abs(ma["qsm"] - ref_cf)) < 1e-6
    # --qsm-weights: that net's QSM, which differs from the closed form ...
    ref_net = I.predict_qsm(qnet, field, mask, aff, precision="fp32", device="cpu")
    assert np.max(np.abs(mb["qsm"] - ref_net)) < 1e-5
    diff = np.sqrt(np.mean((mb["qsm"] - ma["qsm"])[mask] ** 2) / np.mean(ma["qsm"][mask] ** 2))
    assert diff > 0.5
    # ... and is what chi-sepnet was fed
    ref_chi = I.predict_chisep(cs, field, r2p, ref_net, mask, aff, precision="fp32", device="cpu")
    # (same fp32 path: agreement to rounding, ~1e-9 ppm; the closed-form run differs by ~1e-4)
    for k in ("chi_para", "chi_dia"):
        assert np.mean(mb[k][mask] > 0) > 0.5
        assert np.max(np.abs(mb[k] - ref_chi[k])) < 1e-7
        assert np.max(np.abs(mb[k] - ma[k])) > 1e-5

    # report.json records what was used, and only that
    ra = json.loads((a / "report.json").read_text())["weights"]
    rb = json.loads((b / "report.json").read_text())["weights"]
    assert ra["qsm_channel"] == "closed-form" and "qsm" not in ra
    assert rb["qsm_channel"] == "qsm-net"
    assert rb["qsm"]["sha256"] == file_sha256(f["qsm_net"]) and rb["qsm"]["kind"] == "qsm"
    assert ra["chisepnet"]["sha256"] == rb["chisepnet"]["sha256"] == file_sha256(f["chisepnet"])


def test_user_qsm_map_is_used_and_a_map_plus_a_net_is_refused(case, capsys):
    d, f = case
    rc, u = _run(case, "user", "--qsm", str(f["user_qsm"]))
    assert rc == 0
    user_qsm = load_nifti(f["user_qsm"], ndim=3)[0]
    assert np.array_equal(_maps(u)["qsm"], user_qsm)
    rep = json.loads((u / "report.json").read_text())["weights"]
    assert rep["qsm_channel"] == "user" and "qsm" not in rep
    # both a map and a net: one would go unused, so it is a user error (exit 2, nothing written)
    rc, both = _run(case, "both", "--qsm", str(f["user_qsm"]), "--qsm-weights", str(f["qsm_net"]))
    assert rc == 2 and not any(both.rglob("*"))
    assert "--qsm-weights" in capsys.readouterr().err


def test_demo_without_weights_fails_instead_of_skipping(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(W.WEIGHTS_DIR_ENV, str(tmp_path / "empty"))
    out = tmp_path / "demo"
    rc = main(["demo", "--size", "small", "--progress", "none", "--methods", "chisepnet-r2prime",
               "--out", str(out)])
    assert rc == 2 and not any(out.rglob("*"))  # nothing written
    err = capsys.readouterr().err
    assert "no trained weights installed for chisepnet-r2prime" in err
