"""Run inside a Slicer-like Python (see slicer_env.py): "Load sample data" and, with the module's
installs present, the default raw-GRE run in the background. Prints one JSON object.

Usage: python slicer_env_probe.py <"sample-only" | "run"> <temporary folder>
"""
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import scipy

import slicer
from ChiSeparationLib import dependencies, mrml
from ChiSeparationLib.logic import ChiSeparationLogic


def main(mode, tmp):
    out = {"numpy": np.__version__, "scipy": scipy.__version__, "python": sys.executable}
    blocked = {}
    for name in ("nilearn", "matplotlib", "sklearn", "pandas", "skimage", "nibabel", "torch"):
        try:
            __import__(name)
            blocked[name] = False
        except ModuleNotFoundError:
            blocked[name] = True
    out["blocked"] = blocked
    scene = slicer.vtkMRMLScene()
    logic = ChiSeparationLogic(scene, temporary_dir=tmp)
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "ChiSeparation")
    p = types.SimpleNamespace(inputMode="raw", greMagnitude=None, grePhase=None, echoTimes="",
                              seMagnitude=None, seEchoTimes="", r2Map=None, localField=None,
                              fieldUnit="ppm", r2starMap=None, r2primeMap=None, mask=None,
                              fieldStrength=0.0, b0Direction="", method="chisepnet-r2prime",
                              weightsPath=Path(""), device="auto", overlayOpacity=0.6,
                              lesionLabels=None, parameterNode=node)
    t0 = time.time()
    sample = logic.load_sample_data(p)
    out["sample_s"] = time.time() - t0
    out["sample"] = {"echoTimes": p.echoTimes, "fieldStrength": p.fieldStrength,
                     "gre": sample["gre_mag"].GetNumberOfDataNodes(),
                     "lesions": int(mrml.array_from_volume_node(sample["lesions"])[0].max())}
    out["missing"] = [name for name, _ in logic.missing_requirements(p)]
    if mode == "run":
        t0 = time.time()
        nodes = logic.run(p, timeout=600)
        out["run_s"] = time.time() - t0
        head = sample["head"]
        m = head.mask > 0
        para = mrml.array_from_volume_node(nodes["chi_para"])[0]
        dia = mrml.array_from_volume_node(nodes["chi_dia"])[0]
        out["outputs"] = sorted(nodes)
        out["r_chi_para"] = float(np.corrcoef(para[m], head.truth["chi_para"][m])[0, 1])
        out["r_chi_dia"] = float(np.corrcoef(dia[m], head.truth["chi_dia"][m])[0, 1])
        table, rows = logic.lesion_table(p)
        out["lesion_rows"] = table.GetNumberOfRows()
        out["report"] = json.loads((Path(tmp) / "report.json").read_text()) if (Path(tmp) / "report.json").exists() else None
    out["imported"] = sorted({m.partition(".")[0] for m in sys.modules} - set(sys.stdlib_module_names)
                             - {m for m in sys.modules if m.startswith("_")})
    out["declared_installs"] = list(dependencies.MODULE_INSTALLS)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
