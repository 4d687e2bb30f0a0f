"""The files Slicer's build and the Extensions index read: CMake, .s4ext, catalog JSON, .ui, icon.

Checks that the .ui is valid Qt Designer XML with every widget ChiSeparation.py looks up, that the
CMake packaging lists every .py of the module folder, and that the metadata agree with each other.
"""
import ast
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MOD = ROOT / "ChiSeparation"


def cmake_set(text, name):
    m = re.search(r"set\(\s*" + re.escape(name) + r"\s+(.*?)\)", text, re.S)
    assert m, f"set({name} ...) missing"
    return m.group(1)


def cmake_str(text, name):
    m = re.search(r"set\(\s*" + re.escape(name) + r'\s+"([^"]*)"\s*\)', text)
    assert m, f'set({name} "...") missing'
    return m.group(1)


def s4ext_fields():
    out = {}
    for line in (ROOT / "ChiSeparation.s4ext").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            out[key] = value.strip()
    return out


# ----------------------------------------------------------------------------- CMake

def test_top_level_cmake_follows_the_extension_template():
    t = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"^project\(ChiSeparation\)", t, re.M)
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS",
                "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS",
                "EXTENSION_DEPENDS"):
        assert cmake_str(t, key), key
    assert cmake_str(t, "EXTENSION_CATEGORY") == "Quantification"
    assert cmake_str(t, "EXTENSION_DEPENDS") == "PyTorch"
    order = [t.index(s) for s in ("project(ChiSeparation)", "find_package(Slicer REQUIRED)",
                                  "include(${Slicer_USE_FILE})", "add_subdirectory(ChiSeparation)",
                                  "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                                  "include(${Slicer_EXTENSION_CPACK})")]
    assert order == sorted(order)


def packaged_scripts():
    t = (MOD / "CMakeLists.txt").read_text()
    return t, cmake_set(t, "MODULE_PYTHON_SCRIPTS").split()


def test_module_cmake_lists_every_python_file():
    t, listed = packaged_scripts()
    on_disk = sorted(str(p.relative_to(MOD)).replace("\\", "/") for p in MOD.rglob("*.py")
                     if "__pycache__" not in p.parts and not any(x.endswith(".egg-info") for x in p.parts))
    missing = sorted(set(on_disk) - set(listed))
    assert not missing, f"add to MODULE_PYTHON_SCRIPTS in ChiSeparation/CMakeLists.txt: {missing}"
    stale = sorted(set(listed) - set(on_disk))
    assert not stale, f"listed but not on disk: {stale}"
    assert len(listed) == len(set(listed))
    assert "ChiSeparation.py" in listed and "ChiSeparationLib/mrml.py" in listed
    assert "chisep/__init__.py" in listed
    # only the module itself at the folder's top: Slicer loads every top-level .py as a module
    assert [p.name for p in MOD.glob("*.py")] == ["ChiSeparation.py"]


def test_module_cmake_builds_resources_weights_and_tests():
    t, _ = packaged_scripts()
    assert re.search(r"set\(MODULE_NAME ChiSeparation\)", t)
    assert "slicerMacroBuildScriptedModule(" in t
    for key in ("NAME ${MODULE_NAME}", "SCRIPTS ${MODULE_PYTHON_SCRIPTS}", "RESOURCES ${MODULE_PYTHON_RESOURCES}"):
        assert key in t
    res = cmake_set(t, "MODULE_PYTHON_RESOURCES").split()
    assert res == ["Resources/Icons/${MODULE_NAME}.png", "Resources/UI/${MODULE_NAME}.ui",
                   "Resources/SampleData/${MODULE_NAME}SampleHead.npz"]
    for r in res:
        assert (MOD / r.replace("${MODULE_NAME}", "ChiSeparation")).is_file()
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in t
    # the built-in weights are package data of chisep and are installed beside its scripts
    assert "${CMAKE_CURRENT_SOURCE_DIR}/chisep/weights" in t
    assert "DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/chisep" in t
    assert any((MOD / "chisep" / "weights").glob("*.safetensors"))


# ----------------------------------------------------------------------------- index metadata

def test_s4ext_fields_match_cmake():
    f = s4ext_fields()
    for key in ("scm", "scmurl", "depends", "build_subdirectory", "homepage", "contributors",
                "category", "iconurl", "status", "description", "screenshoturls", "enabled"):
        assert f.get(key), key
    t = (ROOT / "CMakeLists.txt").read_text()
    assert f["scm"] == "git" and f["scmurl"].endswith(".git")
    assert f["depends"] == "PyTorch" and f["build_subdirectory"] == "." and f["enabled"] == "1"
    assert f["category"] == cmake_str(t, "EXTENSION_CATEGORY")
    assert f["homepage"] == cmake_str(t, "EXTENSION_HOMEPAGE")
    assert f["iconurl"] == cmake_str(t, "EXTENSION_ICONURL")
    assert f["contributors"] == cmake_str(t, "EXTENSION_CONTRIBUTORS")
    assert f["description"] == cmake_str(t, "EXTENSION_DESCRIPTION")
    assert f["iconurl"].endswith("Resources/Icons/ChiSeparation.png")


def test_catalog_json_matches_project_and_s4ext():
    j = json.loads((ROOT / "ChiSeparation.json").read_text())
    assert re.match(r"https://raw\.githubusercontent\.com/Slicer/Slicer/main/Schemas/"
                    r"slicer-extension-catalog-entry-schema-v\d+\.\d+\.\d+\.json#?$", j["$schema"])
    for key in ("build_dependencies", "category", "scm_revision", "scm_url", "tier"):
        assert key in j, key
    f = s4ext_fields()
    assert j["build_dependencies"] == ["PyTorch"] == f["depends"].split()
    assert j["category"] == f["category"] == "Quantification"
    assert j["scm_url"] == f["scmurl"] and j["scm_revision"] == f["scmrevision"]
    assert j["tier"] in (1, 3, 5)
    # schema v1.0.2 (Slicer/Schemas): no other keys (additionalProperties false), these types
    schema_keys = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
                   "build_dependencies": list, "dicom_support_rule": str, "build_subdirectory": str,
                   "enabled": bool, "tier": int}
    assert set(j) <= set(schema_keys), set(j) - set(schema_keys)
    assert all(isinstance(v, schema_keys[k]) for k, v in j.items())
    assert j.get("scm_type", "git") == f["scm"] and j.get("build_subdirectory", ".") == f["build_subdirectory"]
    assert j.get("enabled", True) == (f["enabled"] == "1")
    # the file names and project() agree
    t = (ROOT / "CMakeLists.txt").read_text()
    name = re.search(r"^project\((\w+)", t, re.M).group(1)
    assert (ROOT / f"{name}.s4ext").exists() and (ROOT / f"{name}.json").exists()


def test_license_is_bsd3():
    t = (ROOT / "LICENSE").read_text()
    assert "BSD 3-Clause License" in t and "ChiSeparation contributors" in t
    assert "Neither the name of the copyright holder" in t


def test_icons_are_128_rgba_warm_left_cool_right():
    from PIL import Image
    a = (MOD / "Resources" / "Icons" / "ChiSeparation.png").read_bytes()
    assert a == (ROOT / "Resources" / "Icons" / "ChiSeparation.png").read_bytes()
    img = np.asarray(Image.open(MOD / "Resources" / "Icons" / "ChiSeparation.png").convert("RGBA")).astype(float)
    assert img.shape == (128, 128, 4)
    inside = img[..., 3] > 0
    left, right = inside.copy(), inside.copy()
    left[:, 64:] = False
    right[:, :64] = False
    lm, rm = img[left].mean(0), img[right].mean(0)
    assert lm[0] > lm[2] + 50 and rm[2] > rm[0] + 50   # warm (red) left, cool (blue) right
    assert img[0, 0, 3] == 0 and inside.mean() > 0.4   # transparent corners, a filled brain


# ----------------------------------------------------------------------------- .ui and module

def ui_tree():
    return ET.parse(MOD / "Resources" / "UI" / "ChiSeparation.ui").getroot()


def ui_widgets():
    return {w.get("name"): w.get("class") for w in ui_tree().iter("widget")}


def module_ast():
    return ast.parse((MOD / "ChiSeparation.py").read_text(encoding="utf-8"))


def test_ui_is_valid_designer_xml():
    root = ui_tree()
    assert root.tag == "ui" and root.get("version") == "4.0"
    assert root.findtext("class") == "ChiSeparation"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "ChiSeparation"
    widgets = list(root.iter("widget"))
    names = [w.get("name") for w in widgets]
    assert len(names) == len(set(names)), "duplicate widget names"
    classes = {w.get("class") for w in widgets}
    custom = {c.findtext("class"): c for c in root.find("customwidgets").findall("customwidget")}
    qt_builtin = {"QWidget", "QLabel", "QPushButton", "QComboBox", "QLineEdit", "QRadioButton",
                  "QGroupBox", "QProgressBar", "QDoubleSpinBox"}
    for c in classes - qt_builtin:
        assert c in custom, f"{c} missing from <customwidgets>"
        assert custom[c].findtext("header") == f"{c}.h" and custom[c].findtext("extends")
    assert {"ctkCollapsibleButton", "qMRMLNodeComboBox"} <= classes
    assert sum(1 for w in widgets if w.get("class") == "ctkCollapsibleButton") >= 3
    # every node combo box gets the scene
    combos = {w.get("name") for w in widgets if w.get("class") in ("qMRMLNodeComboBox", "qMRMLTableView")}
    receivers = {c.findtext("receiver") for c in root.find("connections").findall("connection")
                 if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert combos == receivers
    for w in widgets:
        if w.get("class") == "qMRMLNodeComboBox":
            types = [s.text for s in w.find("property[@name='nodeTypes']").iter("string")]
            assert types and all(t.startswith("vtkMRML") for t in types)


def test_weights_chooser_accepts_every_supported_format():
    w = next(w for w in ui_tree().iter("widget") if w.get("name") == "weightsPathLineEdit")
    assert w.get("class") == "ctkPathLineEdit"
    filters = [s.text for s in w.find("property[@name='nameFilters']").iter("string")]
    for ext in ("*.safetensors", "*.pth", "*.pth.tar", "*.onnx"):
        assert ext in filters[0].split("(")[1].rstrip(")").split(), ext
    assert "ctkPathLineEdit::Files" in w.find("property[@name='filters']").findtext("set")


def test_every_widget_the_module_uses_is_in_the_ui():
    used = {n.attr for n in ast.walk(module_ast()) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Attribute) and n.value.attr == "ui"
            and isinstance(n.value.value, ast.Name) and n.value.value.id == "self"}
    widgets = ui_widgets()
    assert len(used) >= 15
    missing = sorted(used - set(widgets))
    assert not missing, f"self.ui.<name> not in ChiSeparation.ui: {missing}"


def parameter_annotations():
    """Field name -> annotation source of ChiSeparationLib/parameters.py's parameter node."""
    tree = ast.parse((MOD / "ChiSeparationLib" / "parameters.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "ChiSeparationParameterNode":
            return {s.target.id: ast.unparse(s.annotation) for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError("ChiSeparationParameterNode not found")


def test_parameter_bindings_name_real_parameters():
    params = set(parameter_annotations())
    assert {"greMagnitude", "grePhase", "echoTimes", "seMagnitude", "r2Map", "localField",
            "fieldUnit", "r2starMap", "r2primeMap", "mask", "fieldStrength", "method",
            "weightsPath", "device", "b0Direction", "overlayOpacity", "lesionLabels"} <= params
    bound = {}
    for w in ui_tree().iter("widget"):
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                bound[w.get("name")] = p.findtext("string")
    assert bound and set(bound.values()) <= params
    assert bound["greMagnitudeSelector"] == "greMagnitude" and bound["echoTimesLineEdit"] == "echoTimes"
    # the module file uses the Lib's parameter node (one definition, checked by test_slicer_bindings)
    src = (MOD / "ChiSeparation.py").read_text(encoding="utf-8")
    assert "from ChiSeparationLib.parameters import ChiSeparationParameterNode" in src
    assert "class ChiSeparationParameterNode" not in src


def test_module_classes_and_metadata():
    tree = module_ast()
    classes = {n.name: [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in n.bases]
               for n in tree.body if isinstance(n, ast.ClassDef)}
    assert set(classes) == {"ChiSeparation", "ChiSeparationLogic", "ChiSeparationWidget", "ChiSeparationTest"}
    assert classes["ChiSeparation"] == ["ScriptedLoadableModule"]
    assert "ScriptedLoadableModuleWidget" in classes["ChiSeparationWidget"]
    assert classes["ChiSeparationLogic"] == ["ScriptedLoadableModuleLogic"]
    assert classes["ChiSeparationTest"] == ["ScriptedLoadableModuleTest"]
    src = (MOD / "ChiSeparation.py").read_text(encoding="utf-8")
    assert 'self.parent.title = "χ-Separation"' in src
    assert 'self.parent.categories = ["Quantification"]' in src
    assert 'self.resourcePath("UI/ChiSeparation.ui")' in src
    # torch through the PyTorch extension, pip only for allowed requirements, after asking
    assert "PyTorchUtils.PyTorchUtilsLogic().installTorch(" in src
    assert "slicer.util.confirmOkCancelDisplay(" in src
    for call in re.findall(r"pip_install\(([^)]*)\)", src):
        assert call.strip() == "req"
    assert "dependencies.pip_requirement_is_allowed(req)" in src
    import sys
    sys.path.insert(0, str(MOD))
    try:
        from ChiSeparationLib import dependencies
    finally:
        sys.path.remove(str(MOD))
    reqs = {r.split(">")[0].lower() for _, r, _ in dependencies.PIP_REQUIREMENTS}
    assert not reqs & {"numpy", "vtk", "simpleitk", "scipy", "torch"}
    assert dependencies.NEVER_PIP >= {"numpy", "vtk", "simpleitk"}
    # the module file stays thin: the logic lives in ChiSeparationLib
    assert len(src.splitlines()) < 420


def test_module_uses_only_functions_the_lib_has():
    """ChiSeparation.py only runs inside Slicer: check statically that every ``mrml.X``,
    ``runner.X``, ``dependencies.X`` and ``self.logic.X`` it uses exists in ChiSeparationLib."""
    import sys
    sys.path.insert(0, str(MOD))
    try:
        from ChiSeparationLib import dependencies, logic, mrml, runner
    finally:
        sys.path.remove(str(MOD))
    libs = {"mrml": mrml, "runner": runner, "dependencies": dependencies}
    tree = module_ast()
    used = {(n.value.id, n.attr) for n in ast.walk(tree) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name) and n.value.id in libs}
    missing = sorted(f"{m}.{a}" for m, a in used if not hasattr(libs[m], a))
    assert not missing, missing
    # self.logic.X: the module's logic class (its own methods) or the Lib logic's
    own = {f.name for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ChiSeparationLogic"
           for f in n.body if isinstance(f, ast.FunctionDef)}
    calls = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
             and isinstance(n.value, ast.Attribute) and n.value.attr == "logic"
             and isinstance(n.value.value, ast.Name) and n.value.value.id == "self"}
    assert len(calls) >= 10
    import slicer
    instance = logic.ChiSeparationLogic(slicer.vtkMRMLScene())
    missing = sorted(a for a in calls if a not in own and not hasattr(instance, a))
    assert not missing, missing


def test_mrml_lib_imports_no_qt():
    for p in (MOD / "ChiSeparationLib").glob("*.py"):
        tree = ast.parse(p.read_text(encoding="utf-8"))
        mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        mods |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not mods & {"qt", "PythonQt", "ctk", "PyQt5", "PySide2"}, p.name
    core = MOD / "chisep"
    for p in core.rglob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+(slicer|qt)\b", p.read_text(encoding="utf-8"), re.M), p


def test_repository_name_and_urls_follow_the_extensions_index_rules():
    """The index wants the repository named "Slicer..." (extension and module stay ChiSeparation),
    and every icon/screenshot URL must point at a file of this repository."""
    f = s4ext_fields()
    j = json.loads((ROOT / "ChiSeparation.json").read_text())
    t = (ROOT / "CMakeLists.txt").read_text()
    repo = re.match(r"https://github\.com/([^/]+)/([^/.]+)\.git$", j["scm_url"])
    assert repo and repo.group(2).startswith("Slicer") and repo.group(2) == "SlicerChiSeparation"
    assert f["scmurl"] == j["scm_url"]
    assert f["homepage"] == cmake_str(t, "EXTENSION_HOMEPAGE") == j["scm_url"][:-4]
    raw = f"https://raw.githubusercontent.com/{repo.group(1)}/{repo.group(2)}/{j['scm_revision']}/"
    urls = f["screenshoturls"].split() + [f["iconurl"]]
    assert cmake_str(t, "EXTENSION_SCREENSHOTURLS").split() == f["screenshoturls"].split()
    for url in urls:
        assert url.startswith(raw), url
        path = ROOT / url[len(raw):]
        assert path.is_file(), f"{url} points to a missing file {path}"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    shot = Image.open(ROOT / "Resources" / "Screenshots" / "ChiSeparation-1.png")
    assert shot.size[0] >= 600 and shot.size[1] >= 300
    # the panel's help links the same repository and its issue tracker
    src = (MOD / "ChiSeparation.py").read_text(encoding="utf-8")
    assert j["scm_url"][:-4] + "/issues" in src
