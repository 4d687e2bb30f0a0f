"""The module in a Python that imports only what Slicer's Python has (+ what the module installs).

A ``sitecustomize.py`` (Testing/slicer_env.py) blocks every top-level import outside Slicer's set
(numpy, scipy, pydicom, SimpleITK, vtk, Pillow, requests; MRML from slicer-core) and, in the second
case, the module's declared installs (ChiSeparationLib.dependencies.MODULE_INSTALLS, with what
pip would bring along). The interpreter is ``.venv-slicer58`` (numpy 1.26.4, scipy 1.13.1, as Slicer
5.8 ships; ``.ci/run`` builds it with ``python Testing/slicer_env.py make-venv .venv-slicer58``) or,
where it is absent, the test interpreter (then the test says which numpy ran).

1. Before anything is installed: "Load sample data" works (numpy only), and the module reports
   exactly what the default raw-GRE chi-sepnet run needs (nibabel, scikit-image, safetensors, torch).
2. With the module's installs: sample -> raw GRE + SE -> maps with the default method, in the
   background process (the same blocker is inherited through PYTHONPATH), against the truth.
"""
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("slicer")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "ChiSeparation"))
import slicer_env  # noqa: E402
from ChiSeparationLib import dependencies  # noqa: E402

VENV = Path(os.environ.get("SLICER_ENV_VENV", ROOT / ".venv-slicer58"))
PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run_probe(tmp_path, mode, installs):
    site = slicer_env.write_sitecustomize(tmp_path / "site", installs)
    work = tmp_path / "slicer-temporary"
    work.mkdir()
    python = str(PYTHON) if PYTHON.exists() else sys.executable
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT / "ChiSeparation")])
    env["CHISEP_IMPORT_LOG"] = str(tmp_path / "imports")
    env["PYTHONNOUSERSITE"] = "1"
    proc = subprocess.run([python, str(HERE / "slicer_env_probe.py"), mode, str(work)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    imported = set()
    for f in glob.glob(str(tmp_path / "imports.*")):
        imported |= set(json.loads(Path(f).read_text()))
    result["imported_by_all_processes"] = sorted(imported)
    result["leftover_temporary_files"] = os.listdir(work)
    print(json.dumps({k: v for k, v in result.items() if k != "report"}, indent=1))
    return result, set(slicer_env.allowed_modules(installs))


def check_versions(r):
    if PYTHON.exists():
        assert (r["numpy"], r["scipy"]) == ("1.26.4", "1.13.1")     # Slicer 5.8's
    else:
        print(f"NOTE: {PYTHON} absent: ran with numpy {r['numpy']}, scipy {r['scipy']}")


def test_sample_data_loads_in_slicer_python_before_anything_is_installed(tmp_path):
    r, allowed = run_probe(tmp_path, "sample-only", ())
    check_versions(r)
    assert all(r["blocked"].values()), r["blocked"]     # nilearn, matplotlib, skimage, nibabel, torch ...
    assert r["sample"]["gre"] == 5 and r["sample"]["lesions"] == 6
    assert r["sample"]["echoTimes"] == "0.005 0.011 0.017 0.023 0.029" and r["sample"]["fieldStrength"] == 3.0
    # what the default raw-GRE chi-sepnet run needs is declared, and only that is missing
    assert r["missing"] == ["nibabel", "skimage", "safetensors", "torch"]
    assert set(r["missing"]) <= set(dependencies.MODULE_INSTALLS)
    assert set(r["imported_by_all_processes"]) <= allowed


def test_default_raw_gre_run_in_slicer_python_with_the_module_installs(tmp_path):
    r, allowed = run_probe(tmp_path, "run", dependencies.MODULE_INSTALLS)
    check_versions(r)
    assert r["blocked"] == {"nilearn": True, "matplotlib": True, "sklearn": True, "pandas": True,
                            "skimage": False, "nibabel": False, "torch": False}
    assert r["missing"] == []
    assert r["outputs"] == ["chi_dia", "chi_para", "chi_total", "r2prime"]
    assert r["r_chi_para"] > 0.5 and r["r_chi_dia"] > 0.2
    assert r["lesion_rows"] == 6
    assert r["leftover_temporary_files"] == []
    # every process (this one and the background chisep run) imported only allowed packages
    assert set(r["imported_by_all_processes"]) <= allowed
    assert {"numpy", "scipy", "nibabel", "torch"} <= set(r["imported_by_all_processes"])
