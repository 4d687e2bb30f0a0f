"""Every widget binding of ChiSeparation.ui is accepted by Slicer's parameter-node GUI connectors.

Slicer creates every connector before connecting any (``parameterNodeWrapper/wrapper.py``), so one
refused binding leaves the whole panel unbound (Apply never enables). Two layers:

- Always: the .ui's ``SlicerParameterName`` bindings and the parameter node's annotations
  (``ChiSeparationLib/parameters.py``) against the connector rules restated in
  ``Testing/slicer_connectors.py``, read from Slicer v5.6.0, v5.8.1, v5.10.0 and main
  (``SLICER_VERSIONS_READ``). A stand-in supplies the four trivial validator classes
  (WithinRange, Minimum, Maximum, Choice) and an identity decorator, only to evaluate annotations.
- With a Slicer source tree (``SLICER_SOURCE_DIR``: a git clone of Slicer/Slicer; versions from
  ``SLICER_REFS``, default v5.6.0 v5.8.1 v5.10.0 HEAD): Slicer's REAL parameterNodeWrapper code
  wraps the parameter node on a real MRML scene and binds the .ui (``slicer_pnw_probe.py``; only Qt
  widgets are stand-ins), and the rule table must agree with it.

Both layers also feed deliberately wrong pairs and must see them refused. With the Slicer source,
the module file's own self-test also runs on Slicer's real ScriptedLoadableModule.py.
"""
import dataclasses
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import types
import typing

import pytest

slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("slicer-core wheel without MRML", allow_module_level=True)

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "ChiSeparation"
UI = MODULE_DIR / "Resources" / "UI" / "ChiSeparation.ui"
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import slicer_connectors as sc  # noqa: E402


# --------------------------------------------------------------------------- annotations

@dataclasses.dataclass
class WithinRange:
    minimum: float
    maximum: float


@dataclasses.dataclass
class Minimum:
    minimum: float


@dataclasses.dataclass
class Maximum:
    maximum: float


@dataclasses.dataclass
class Choice:
    choices: list


def load_parameter_hints(monkeypatch):
    """The parameter class's annotations, evaluated with the validator stand-ins (Slicer's
    parameterNodeWrapper needs Qt; only these value holders are read here)."""
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.WithinRange, pnw.Minimum, pnw.Maximum, pnw.Choice = WithinRange, Minimum, Maximum, Choice
    pnw.parameterNodeWrapper = lambda cls: cls
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", pnw)
    spec = importlib.util.spec_from_file_location(
        "chisep_test_parameters", MODULE_DIR / "ChiSeparationLib" / "parameters.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, typing.get_type_hints(mod.ChiSeparationParameterNode, include_extras=True)


@pytest.fixture
def hints(monkeypatch):
    return load_parameter_hints(monkeypatch)[1]


def test_rule_table_states_the_versions_it_was_read_from():
    assert sc.SLICER_VERSIONS_READ[:3] == ("v5.6.0", "v5.8.1", "v5.10.0")
    assert sc.SLICER_VERSIONS_READ[3].startswith("main")
    assert all(v in (sc.__doc__ or "") for v in ("v5.6.0", "v5.8.1", "v5.10.0", "main"))


def test_every_ui_binding_is_accepted_by_slicer_connectors(hints):
    bindings = sc.ui_bindings(UI)
    problems, details = sc.check_all(bindings, hints, slicer.vtkMRMLNode)
    print("bindings checked:", {p: b[1] for p, b in sorted(bindings.items())})
    assert problems == []
    # every parameter a user sets in the panel is bound (outputs and modes are set by code)
    assert set(bindings) == set(hints) - {"inputMode", "fieldUnit", "method", "device"}
    # the selectors list label maps (mask, lesions) and segmentations (lesions)
    assert details["mask"]["nodeTypes"] == ["vtkMRMLLabelMapVolumeNode", "vtkMRMLScalarVolumeNode"]
    assert set(details["lesionLabels"]["nodeTypes"]) == {
        "vtkMRMLLabelMapVolumeNode", "vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode"}
    # the connector overwrites the .ui's nodeTypes and ranges: they must say the same thing
    for pname, (wname, wclass, props) in bindings.items():
        if wclass == "qMRMLNodeComboBox":
            ui_types = [t for t in props["nodeTypes"] if hasattr(slicer, t)]
            assert ui_types == details[pname]["nodeTypes"], wname
        if wclass in ("QDoubleSpinBox", "ctkSliderWidget"):
            assert (props["minimum"], props["maximum"]) == (details[pname]["minimum"],
                                                            details[pname]["maximum"]), wname
    assert (details["fieldStrength"]["minimum"], details["fieldStrength"]["maximum"]) == (0.0, 21.0)
    assert (details["overlayOpacity"]["minimum"], details["overlayOpacity"]["maximum"]) == (0.0, 1.0)


WRONG_PAIRS = [
    ("ctkPathLineEdit", str, "binds Path"),
    ("ctkSliderWidget", float, "unbounded"),
    ("ctkSliderWidget", typing.Annotated[float, Minimum(0.0)], "unbounded"),
    ("QDoubleSpinBox", str, "binds float"),
    ("qMRMLNodeComboBox", float, "vtkMRMLNode class"),
    ("qMRMLNodeComboBox", typing.Optional[str], "vtkMRMLNode class"),
    ("QLineEdit", pathlib.Path, "binds str"),
    ("QComboBox", str, "Choice"),
    ("ctkDoubleSpinBoxSubclass", float, "no connector"),
]


@pytest.mark.parametrize("widget,annotation,why", WRONG_PAIRS)
def test_rule_table_refuses_wrong_pairs(widget, annotation, why):
    problem, _ = sc.check_binding(widget, annotation, slicer.vtkMRMLNode)
    print(f"{widget} <-> {annotation}: {problem}")
    assert problem is not None and why in problem


def test_a_wrong_binding_in_the_module_fails_the_check(hints):
    """The state the module was in before this fix (str path, unbounded opacity, lesions as scalar
    volumes only) must be reported, binding by binding."""
    wrong = dict(hints)
    wrong["weightsPath"] = str
    wrong["overlayOpacity"] = float
    problems, details = sc.check_all(sc.ui_bindings(UI), wrong, slicer.vtkMRMLNode)
    print("\n".join(problems))
    assert len(problems) == 2
    assert any("weightsPathLineEdit (ctkPathLineEdit) <-> weightsPath" in p and "not 'str'" in p
               for p in problems)
    assert any("overlayOpacitySlider (ctkSliderWidget) <-> overlayOpacity" in p and "unbounded" in p
               for p in problems)
    wrong = dict(hints, lesionLabels=slicer.vtkMRMLScalarVolumeNode)
    _, details = sc.check_all(sc.ui_bindings(UI), wrong, slicer.vtkMRMLNode)
    assert details["lesionLabels"]["nodeTypes"] == ["vtkMRMLScalarVolumeNode"]  # no label maps listed


# --------------------------------------------------------------------------- Slicer's real code

SOURCE = os.environ.get("SLICER_SOURCE_DIR")
REFS = os.environ.get("SLICER_REFS", "v5.6.0 v5.8.1 v5.10.0 HEAD").split()
PNW = "Base/Python/slicer/parameterNodeWrapper"


def extract_pnw(source, ref, dest):
    """Slicer's parameterNodeWrapper package at ``ref`` of the git repository ``source``."""
    names = subprocess.run(["git", "-C", source, "ls-tree", "--name-only", f"{ref}:{PNW}"],
                           capture_output=True, text=True, check=True).stdout.split()
    dest.mkdir(parents=True)
    for n in names:
        text = subprocess.run(["git", "-C", source, "show", f"{ref}:{PNW}/{n}"],
                              capture_output=True, text=True, check=True).stdout
        (dest / n).write_text(text)
    return dest


def _run_probe(script, *args, timeout):
    """Run a probe script of this folder with the module folder on the path; its last stdout line
    is the JSON result."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(MODULE_DIR), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(pathlib.Path(__file__).parent / script), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not SOURCE, reason="set SLICER_SOURCE_DIR to a Slicer git clone to run Slicer's "
                                       "own parameterNodeWrapper code")
@pytest.mark.parametrize("ref", REFS)
def test_slicer_real_parameter_node_wrapper_binds_the_panel(ref, tmp_path, hints):
    pnw = extract_pnw(SOURCE, ref, tmp_path / "parameterNodeWrapper")
    r = _run_probe("slicer_pnw_probe.py", pnw, UI, MODULE_DIR, timeout=300)
    print(ref, json.dumps(r, indent=1))
    bindings = sc.ui_bindings(UI)
    assert set(r["bound"]) == set(bindings)                     # connectGui bound every widget
    _, details = sc.check_all(bindings, hints, slicer.vtkMRMLNode)
    for pname, types_ in r["nodeTypes"].items():                # the table predicts Slicer's nodeTypes
        assert types_ == details[pname]["nodeTypes"], pname
    for pname, (lo, hi) in r["ranges"].items():                 # ... and ranges
        assert (lo, hi) == (details[pname]["minimum"], details[pname]["maximum"]), pname
    assert "vtkMRMLLabelMapVolumeNode" in r["listed"]["mask"]
    assert {"vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode"} <= set(r["listed"]["lesionLabels"])
    w = r["written"]                                            # the user's choices reach the node
    assert w["mask"] == "vtkMRMLLabelMapVolumeNode" and w["lesionLabels"] == "vtkMRMLSegmentationNode"
    assert w["greMagnitude"] == "vtkMRMLSequenceNode"
    assert w["echoTimes"] == "0.005 0.011" and w["fieldStrength"] == 7.0 and w["overlayOpacity"] == 0.25
    assert w["weightsPath"] == "/data/w.safetensors" and w["weightsPathType"].endswith("Path")
    assert w["fieldStrengthWidgetAfterClear"] == 0.0
    # the Advanced combo boxes list the options contract's choices, show its defaults and write the
    # chosen one (the last item here)
    from chisep import options as O
    want = {"bgMethod": (O.BG_METHODS, "vsharp"), "unwrap": (O.UNWRAP_METHODS, "region-growing"),
            "precision": (O.PRECISIONS, "auto"), "phaseSign": (("auto", "+1", "-1"), "auto")}
    assert set(r["items"]) == set(want)
    for pname, (choices, default) in want.items():
        assert r["items"][pname] == [str(c) for c in choices], pname
        assert r["shown"][pname] == default and w[pname] == choices[-1], pname
    assert r["defaultWeightsPath"] == "."                       # empty path reads as "." (built-in)
    assert all(v is not None for v in r["refused"].values()), r["refused"]
    assert r["wrongConnectGui"] is not None
    # the rule table refuses what Slicer refuses
    for label in r["refused"]:
        widget = {"weightsPath": "ctkPathLineEdit", "overlayOpacity": "ctkSliderWidget",
                  "fieldStrength": "QDoubleSpinBox", "mask": "qMRMLNodeComboBox",
                  "echoTimes": "MyLineEdit"}[label.split(":")[0]]
        tp = {"weightsPath": str, "overlayOpacity": float, "fieldStrength": str, "mask": float,
              "echoTimes": str}[label.split(":")[0]]
        assert sc.check_binding(widget, tp, slicer.vtkMRMLNode)[0] is not None, label


@pytest.mark.skipif(not SOURCE, reason="set SLICER_SOURCE_DIR to a Slicer git clone to run Slicer's "
                                       "own ScriptedLoadableModule and parameterNodeWrapper code")
@pytest.mark.parametrize("ref", REFS)
def test_module_self_test_on_slicer_real_scripted_module_code(ref, tmp_path):
    """ChiSeparation.py's own self-test (sample -> background run -> overlay -> lesion table)
    through the module's logic class, on Slicer's real ScriptedLoadableModule.py and
    parameterNodeWrapper of ``ref`` and a real MRML scene; only Qt and slicer.app are stand-ins."""
    folder = tmp_path / "slicer-python"
    extract_pnw(SOURCE, ref, folder / "parameterNodeWrapper")
    (folder / "ScriptedLoadableModule.py").write_text(subprocess.run(
        ["git", "-C", SOURCE, "show", f"{ref}:Base/Python/slicer/ScriptedLoadableModule.py"],
        capture_output=True, text=True, check=True).stdout)
    work = tmp_path / "slicer-temporary"
    work.mkdir()
    r = _run_probe("slicer_module_probe.py", folder, MODULE_DIR, work, timeout=600)
    print(ref, r)
    assert r["self_test"] == "passed" and r["shown"][-1] == "Test passed"
    assert r["parameter_node_class"] == "ChiSeparationParameterNode" and r["module_name"] == "ChiSeparation"
    assert r["singleton"] == 1
    assert r["outputs"] == ["chi_dia", "chi_para", "chi_total", "r2prime"]
    assert r["echoTimes"] == "0.005 0.011 0.017 0.023 0.029" and r["fieldStrength"] == 3.0
    assert r["lesionLabels"] == "vtkMRMLLabelMapVolumeNode" and r["lesion_table_rows"] == 6
    assert r["temporary_left"] == []
