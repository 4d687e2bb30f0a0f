"""The options contract (chisep.options): every option is declared once, the command lines and the
Slicer module's arguments are built from it, and every option reaches the function that uses it.

The runs use a small synthetic acquisition (a 32x36x28 ellipsoid, three echoes) and tiny untrained
networks written in the project's weight format: the tests check which function received which
option and what report.json records, not accuracy. The consuming functions are wrapped by spies
that record their arguments and then call the real function.
"""
import argparse
import json
import pathlib
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from chisep import options as O  # noqa: E402
from chisep import pipeline  # noqa: E402
from chisep.cli import build_parser, main  # noqa: E402
from chisep.io import file_sha256, load_nifti, save_nifti  # noqa: E402
from chisep.network import inference as I  # noqa: E402
from chisep.network import weights as W  # noqa: E402
from common import ellipsoid_grid, untrained_net  # noqa: E402
from chisep.preprocess import pipeline as PP  # noqa: E402

MODULE_DIR = pathlib.Path(__file__).resolve().parents[1] / "ChiSeparation"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))          # ChiSeparationLib (the Slicer module's logic)
torch.set_num_threads(2)
SHAPE = (32, 36, 28)
TE = (0.005, 0.010, 0.015)
#: a memory budget (GiB) too small for one pass: the network runs on tiles
MEMORY_GIB = 0.002
NORM = dict(W.PUBLISHED_NORMALISATION, chi_para=(0.02, 0.03), chi_dia=(0.02, 0.03), qsm=(0.0, 0.03))


# --------------------------------------------------------------------------- declared once

def _subparser(name):
    sub = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)][0]
    return sub.choices[name]


def _actions(parser):
    return {a.dest: a for a in parser._actions}


@pytest.mark.parametrize("command,classes", [
    ("run", (O.AcquisitionOptions, O.RunOptions, O.OutputOptions)),
    ("preprocess", (O.PreprocessOptions, O.OutputOptions)),
    ("bids", ()),
])
def test_cli_choices_and_defaults_are_the_contract(command, classes):
    acts = _actions(_subparser(command))
    for cls in classes:
        for f in O.fields(cls):
            if f.name not in acts:
                continue
            a = acts[f.name]
            assert O.flag(f) in a.option_strings, f.name
            assert a.default == f.default, f.name
            assert a.help == f.metadata["help"], f.name
            if f.metadata["choices"] is not None:
                assert tuple(a.choices) == f.metadata["choices"], f.name
    # the choices each command offers are the contract's tuples
    want = {"bg_method": O.BG_METHODS, "unwrap": O.UNWRAP_METHODS, "phase_sign": O.PHASE_SIGNS,
            "method": O.METHODS, "precision": O.PRECISIONS, "device": O.DEVICES,
            "field_unit": O.FIELD_UNITS, "progress": O.PROGRESS_MODES}
    for dest, ch in want.items():
        if dest in acts:
            assert tuple(acts[dest].choices) == ch, (command, dest)
    if command == "run":
        assert {"bg_method", "unwrap", "phase_sign", "precision", "qsm_weights", "r2prime_weights",
                "field_unit", "b0_t", "tile_size", "max_memory_gb", "overwrite"} <= set(acts)
    if command == "bids":   # picks the method per subject: its one override
        assert acts["method"].default is None and tuple(acts["method"].choices) == O.METHODS


def test_core_checks_against_the_same_tuples():
    assert pipeline.METHODS is O.METHODS and I.PRECISIONS is O.PRECISIONS and PP.BG_METHODS is O.BG_METHODS
    with pytest.raises(O.OptionError, match="--bg-method 'sharp'"):
        O.PreprocessOptions(bg_method="sharp")
    with pytest.raises(O.OptionError, match="--precision"):
        O.RunOptions(precision="fp8")
    # to_argv is the inverse of the parser built by add_arguments
    p = argparse.ArgumentParser()
    for cls in (O.AcquisitionOptions, O.PreprocessOptions, O.RunOptions):
        O.add_arguments(p, cls)
    objs = (O.AcquisitionOptions(phase_sign=-1, b0_t=7.0, phase_unit="deg"),
            O.PreprocessOptions(bg_method="lbv-qsm", unwrap="laplacian", vsharp_radius_mm=8.5, bipolar=True),
            O.RunOptions(method="chisepnet-r2star", precision="bf16", tile_size=48, qsm_weights="q.safetensors"))
    args = p.parse_args([a for o in objs for a in O.to_argv(o)])
    assert tuple(O.from_args(type(o), args) for o in objs) == objs


def test_slicer_panel_choices_are_the_contract(monkeypatch):
    pytest.importorskip("slicer")
    import test_slicer_bindings as tb

    mod, hints = tb.load_parameter_hints(monkeypatch)
    choice = {k: [a for a in getattr(v, "__metadata__", ()) if isinstance(a, tb.Choice)] for k, v in hints.items()}
    assert choice["bgMethod"][0].choices == list(O.BG_METHODS)
    assert choice["unwrap"][0].choices == list(O.UNWRAP_METHODS)
    assert choice["precision"][0].choices == list(O.PRECISIONS)
    assert choice["phaseSign"][0].choices == ["auto", "+1", "-1"]
    node = mod.ChiSeparationParameterNode
    assert (node.bgMethod, node.unwrap, node.precision, node.method, node.device) == (
        "vsharp", "region-growing", "auto", "chisepnet-r2prime", "auto")


# --------------------------------------------------------------------------- reaching the consumer

@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """A three-echo GRE of an ellipsoid, phase with sign -1, plus tiny chi-sepnet, R2' and QSM nets."""
    d = tmp_path_factory.mktemp("opts")
    g, c, mask = ellipsoid_grid(SHAPE)
    f_hz = 40.0 * (g[0] - c[0]) / SHAPE[0] + 3.0 * np.sin(g[1] / 4) * np.cos(g[2] / 5)
    r2s = 20 + 5 * np.cos(g[2] / 6)
    te = np.asarray(TE)
    mag = (1000 * np.exp(-r2s[..., None] * te) * (0.05 + mask[..., None])).astype(np.float32)
    phase = np.angle(np.exp(-1j * 2 * np.pi * f_hz[..., None] * te)).astype(np.float32)
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    files = {"mag": save_nifti(d / "mag.nii.gz", mag, aff), "phase": save_nifti(d / "phase.nii.gz", phase, aff),
             "mask": save_nifti(d / "mask.nii.gz", mask.astype(np.float32), aff)}
    files["chisepnet"] = W.save_weights(untrained_net(3, 2, width=2, seed=1), d / "cs.safetensors", "chisepnet-r2prime", NORM,
                                        {"provenance": "untrained, test"}, dtype=torch.float32)
    files["r2prime_net"] = W.save_weights(untrained_net(1, 1, width=2, seed=3), d / "r2p.safetensors", "r2prime-from-r2star", NORM,
                                          {"provenance": "untrained, test"}, dtype=torch.float32)
    files["qsm_net"] = W.save_weights(untrained_net(1, 1, width=2, seed=2), d / "qsm.safetensors", "qsm", NORM,
                                      {"provenance": "untrained, test"}, dtype=torch.float32)
    return d, files


@pytest.fixture
def spies(monkeypatch):
    """Record the arguments each consuming function receives, then call the real one."""
    calls = {"unwrap": [], "combine": [], "bg": [], "net": [], "memory": []}

    def wrap(module, name, record):
        real = getattr(module, name)

        def spy(*a, **k):
            record(a, k)
            return real(*a, **k)
        monkeypatch.setattr(module, name, spy)

    wrap(PP, "unwrap_echoes", lambda a, k: calls["unwrap"].append(k["method"]))
    wrap(PP, "combine_echoes", lambda a, k: calls["combine"].append(a[4]))
    for bg in ("vsharp", "lbv", "lbv_qsm", "pdf"):
        wrap(PP, bg, lambda a, k, bg=bg: calls["bg"].append(bg))
    wrap(I, "_net_pass", lambda a, k: calls["net"].append((a[0].kind, str(a[0].path), a[4])))
    wrap(I, "tile_for_memory", lambda a, k: calls["memory"].append(a[0]))
    return calls


def _cli_argv(f):
    """``chisep run`` written by hand from the contract's flags."""
    flag = {name: O.flag(O.get_field(cls, name)) for cls, name in (
        (O.PreprocessOptions, "bg_method"), (O.PreprocessOptions, "unwrap"), (O.AcquisitionOptions, "phase_sign"),
        (O.AcquisitionOptions, "b0_t"), (O.RunOptions, "precision"), (O.RunOptions, "r2prime_weights"),
        (O.RunOptions, "qsm_weights"), (O.RunOptions, "method"), (O.RunOptions, "weights"),
        (O.RunOptions, "device"), (O.RunOptions, "max_memory_gb"), (O.OutputOptions, "progress"))}
    return ["run", "--gre-mag", str(f["mag"]), "--gre-phase", str(f["phase"]), "--mask", str(f["mask"]),
            "--te", *map(str, TE), flag["b0_t"], "3", flag["method"], "chisepnet-r2star",
            flag["weights"], str(f["chisepnet"]), flag["r2prime_weights"], str(f["r2prime_net"]),
            flag["qsm_weights"], str(f["qsm_net"]), flag["device"], "cpu", flag["precision"], "fp32",
            flag["bg_method"], "pdf", flag["unwrap"], "laplacian", flag["phase_sign"], "-1",
            flag["max_memory_gb"], str(MEMORY_GIB), flag["progress"], "none"]


def _slicer_argv(f):
    """What the Slicer module runs: the panel's Advanced choices -> parameters -> runner arguments."""
    pytest.importorskip("slicer")
    from ChiSeparationLib import logic, runner

    panel = types.SimpleNamespace(bgMethod="pdf", unwrap="laplacian", phaseSign="-1", precision="fp32")
    params = dict(logic.advanced_options(panel), gre_mag=str(f["mag"]), gre_phase=str(f["phase"]),
                  mask=str(f["mask"]), te=list(TE), b0=3.0, method="chisepnet-r2star",
                  weights=str(f["chisepnet"]), r2prime_weights=str(f["r2prime_net"]),
                  qsm_weights=str(f["qsm_net"]), device="cpu", max_memory_gb=MEMORY_GIB)
    argv = runner.build_run_args(params)
    assert argv[0] == "run" and argv[-2:] == ["--progress", "json"]
    return argv


@pytest.mark.parametrize("source", ["cli", "slicer"])
def test_every_option_reaches_the_function_that_uses_it(raw, spies, source, tmp_path):
    d, f = raw
    argv = (_cli_argv if source == "cli" else _slicer_argv)(f)
    out = tmp_path / "out"
    assert main(argv + ["--out", str(out)]) == 0
    # preprocessing: the unwrapping, phase sign and background removal asked for, and nothing else
    assert spies["unwrap"] == ["laplacian"]
    assert spies["combine"] == [-1]
    assert spies["bg"] == ["pdf"]
    # network: the R2' net, the QSM net and chi-sepnet given, each at fp32
    used = {kind: (path, prec) for kind, path, prec in spies["net"]}
    assert used == {"r2prime-from-r2star": (str(f["r2prime_net"]), "fp32"),
                    "qsm": (str(f["qsm_net"]), "fp32"),
                    "chisepnet-r2prime": (str(f["chisepnet"]), "fp32")}
    # the memory budget sizes the tiles of every network pass
    assert spies["memory"] == [MEMORY_GIB] * 3
    rep = json.loads((out / "report.json").read_text())
    assert rep["precision"] == "fp32" and rep["device"] == "cpu"
    assert rep["weights"]["qsm_channel"] == "qsm-net"
    assert rep["weights"]["qsm"]["sha256"] == file_sha256(f["qsm_net"])
    assert rep["weights"]["r2prime"]["sha256"] == file_sha256(f["r2prime_net"])
    # report.json's options: what was used (dr belongs to the regularized method: not recorded)
    o = rep["options"]
    assert (o["bg_method"], o["unwrap"], o["phase_sign"], o["precision"], o["method"]) == (
        "pdf", "laplacian", -1, "fp32", "chisepnet-r2star")
    assert o["qsm_weights"] == str(f["qsm_net"]) and o["r2prime_weights"] == str(f["r2prime_net"])
    assert o["max_memory_gb"] == MEMORY_GIB
    assert "dr" not in o and "field_unit" not in o
    assert not set(rep["inputs"]) & {"bg_method", "unwrap", "precision", "qsm_weights"}
    assert rep["acquisition"]["phase_sign"] == -1


def test_qsm_weights_change_the_qsm_channel(raw, spies, tmp_path):
    """The same run without --qsm-weights feeds chi-sepnet the closed-form QSM: the QSM channel and
    the maps differ, and the report says which it was."""
    d, f = raw
    argv = _cli_argv(f)
    i = argv.index("--qsm-weights")
    without = argv[:i] + argv[i + 2:]
    a, b = tmp_path / "net", tmp_path / "closed"
    assert main(argv + ["--out", str(a)]) == 0
    assert main(without + ["--out", str(b)]) == 0
    mask = load_nifti(f["mask"], ndim=3)[0] > 0
    qa, qb = (load_nifti(x / "qsm.nii.gz", ndim=3)[0] for x in (a, b))
    assert np.sqrt(np.mean((qa - qb)[mask] ** 2) / np.mean(qb[mask] ** 2)) > 0.3
    ra, rb = (json.loads((x / "report.json").read_text()) for x in (a, b))
    assert ra["weights"]["qsm_channel"] == "qsm-net" and rb["weights"]["qsm_channel"] == "closed-form"
    assert "qsm" not in rb["weights"] and "qsm_weights" not in {k for k, v in rb["options"].items() if v}
    assert [k for k, _, _ in spies["net"]].count("qsm") == 1


def test_processed_maps_record_no_preprocessing_and_refuse_its_options(raw, tmp_path, capsys):
    d, f = raw
    # a processed run: the regularized method records no network options and no preprocessing
    base = tmp_path / "pre"
    assert main(["preprocess", "--gre-mag", str(f["mag"]), "--gre-phase", str(f["phase"]), "--mask", str(f["mask"]),
                 "--te", *map(str, TE), "--b0", "3", "--phase-sign", "-1", "--bg-method", "pdf",
                 "--unwrap", "laplacian", "--progress", "none", "--out", str(base)]) == 0
    rp = json.loads((base / "report.json").read_text())["options"]
    assert (rp["bg_method"], rp["unwrap"], rp["phase_sign"], rp["vsharp_radius_mm"]) == ("pdf", "laplacian", -1, 12.0)
    proc = ["run", "--local-field", str(base / "local_field.nii.gz"), "--field-unit", "ppm",
            "--r2star", str(base / "r2star.nii.gz"), "--mask", str(base / "mask.nii.gz"),
            "--method", "regularized", "--progress", "none"]
    out = tmp_path / "reg"
    assert main(proc + ["--out", str(out)]) == 0
    o = json.loads((out / "report.json").read_text())["options"]
    assert set(o) == {"field_unit", "b0_t", "method", "dr"}
    # preprocessing options with processed maps would go unused: refused (exit 2, nothing written)
    bad = tmp_path / "bad"
    assert main(proc + ["--bg-method", "lbv", "--out", str(bad)]) == 2
    assert "--bg-method" in capsys.readouterr().err and not bad.exists()


def test_panel_devices_are_the_contract_and_an_absent_gpu_is_reported():
    pytest.importorskip("slicer")
    from ChiSeparationLib.logic import ChiSeparationLogic

    for device in O.DEVICES:
        msg = ChiSeparationLogic.device_problem(device)
        usable = {"cuda": torch.cuda.is_available(),
                  "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())}
        if usable.get(device, True):
            assert msg is None, device
        else:
            assert "CPU" in msg, device
