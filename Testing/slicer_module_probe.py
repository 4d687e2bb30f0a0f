"""Run the module file's own self-test (ChiSeparation.py: ChiSeparationTest) on Slicer's REAL
``ScriptedLoadableModule.py`` and ``parameterNodeWrapper`` (read from a Slicer source tree at one
version) over a real MRML scene (slicer-core).

Stand-ins only for what needs the Qt application: the ``qt``/``ctk`` modules (see
slicer_pnw_probe.py), ``slicer.app`` (its temporary folder and signal connections), ``slicer.i18n.tr``
and the three ``slicer.util`` helpers that drive on-screen views (delayDisplay,
setSliceViewerLayers, resetSliceViews). Prints one JSON object.

Usage: python slicer_module_probe.py <folder with ScriptedLoadableModule.py and parameterNodeWrapper/>
       <module dir> <temporary folder>
"""
import importlib.util
import json
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slicer_pnw_probe as pnw_probe  # noqa: E402


def main(slicer_py, module_dir, tmp):
    import slicer
    import slicer.util
    pnw_probe.install_qt_standins(slicer)
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    sys.modules["slicer.i18n"] = i18n
    slicer.i18n = i18n
    slicer.mrmlScene = slicer.vtkMRMLScene()
    connections = []
    slicer.app = types.SimpleNamespace(temporaryPath=tmp, connect=lambda *a: connections.append(a),
                                       processEvents=lambda: None)
    slicer.modules = types.SimpleNamespace()
    shown = []
    slicer.util.delayDisplay = lambda message, msec=None, **kw: shown.append(message)
    slicer.util.setSliceViewerLayers = lambda *a, **kw: None
    slicer.util.resetSliceViews = lambda *a, **kw: None
    pnw_probe.load_pnw(Path(slicer_py) / "parameterNodeWrapper")
    spec = importlib.util.spec_from_file_location("slicer.ScriptedLoadableModule",
                                                  str(Path(slicer_py) / "ScriptedLoadableModule.py"))
    slm = importlib.util.module_from_spec(spec)
    sys.modules["slicer.ScriptedLoadableModule"] = slm
    spec.loader.exec_module(slm)
    slicer.ScriptedLoadableModule = slm
    sys.path.insert(0, str(module_dir))
    spec = importlib.util.spec_from_file_location("ChiSeparation", str(Path(module_dir) / "ChiSeparation.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ChiSeparation"] = mod
    spec.loader.exec_module(mod)

    test = mod.ChiSeparationTest()
    test.runTest()
    logic = mod.ChiSeparationLogic()
    p = logic.getParameterNode()
    out = {"self_test": "passed", "shown": shown,
           "parameter_node_class": type(p).__name__,
           "mrml_node": p.parameterNode.GetClassName(),
           "module_name": p.parameterNode.GetAttribute("ModuleName"),
           "singleton": slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode"),
           "outputs": sorted(logic.output_nodes(p)),
           "echoTimes": p.echoTimes, "fieldStrength": p.fieldStrength,
           "weightsPath": str(p.weightsPath), "method": p.method,
           "lesionLabels": p.lesionLabels.GetClassName() if p.lesionLabels is not None else None,
           "lesion_table_rows": logic.lesion_table_node(p).GetNumberOfRows(),
           "temporary_left": [str(x) for x in Path(tmp).iterdir()]}
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])
