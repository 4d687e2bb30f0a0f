"""A Python environment that imports only what Slicer's Python has (plus what the module installs).

Slicer's own Python ships numpy, scipy, pydicom, SimpleITK, vtk, Pillow and requests (and pip,
setuptools); the ChiSeparation module installs ``ChiSeparationLib.dependencies.MODULE_INSTALLS``
(pip, after asking; torch through the PyTorch extension). :func:`write_sitecustomize` writes a
``sitecustomize.py`` that refuses every other top-level import (ModuleNotFoundError), so a
subprocess with that folder first on PYTHONPATH behaves like Slicer's Python in what it can import.
The MRML classes come from the slicer-core wheel (``slicer``, ``slicer_core``), Slicer's own.

Slicer 5.8 ships numpy 1.26.4 and scipy 1.13.1; :func:`make_venv` builds a virtual environment
with exactly those two, which sees the base environment's other packages (vtk, slicer-core,
torch, ...) only *after* its own (a ``.pth`` line), so numpy and scipy are Slicer 5.8's:

    python Testing/slicer_env.py make-venv .venv-slicer58
"""
import importlib.metadata as md
import os
import re
import subprocess
import sys
from pathlib import Path

SLICER58_PINS = ("numpy==1.26.4", "scipy==1.13.1")
#: Distributions Slicer's Python ships (5.6-5.10), by distribution name.
SLICER_DISTRIBUTIONS = ("numpy", "scipy", "pydicom", "SimpleITK", "vtk", "pillow", "requests",
                        "pip", "setuptools", "slicer-core")
#: Distributions whose own dependencies Slicer ships too (requests' certifi, idna, ...); vtk's
#: PyPI dependency on matplotlib is not part of Slicer's VTK.
WITH_DEPENDENCIES = ("requests",)
MODULE_OWN = ("chisep", "ChiSeparationLib")


def _requirement_names(dist):
    from packaging.requirements import Requirement
    out = []
    for r in md.distribution(dist).requires or []:
        req = Requirement(r)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        out.append(req.name)
    return out


def closure(dists):
    """The distributions and all their (non-extra) dependencies that are installed."""
    seen, todo = set(), list(dists)
    while todo:
        d = todo.pop()
        key = re.sub(r"[-_.]+", "-", d).lower()
        if key in seen:
            continue
        try:
            md.distribution(d)
        except md.PackageNotFoundError:
            continue
        seen.add(key)
        todo += _requirement_names(d)
    return seen


def top_level_names(dists):
    """Top-level import names provided by the (normalised) distribution names ``dists``."""
    by_dist = {}
    for module, ds in md.packages_distributions().items():
        for d in ds:
            by_dist.setdefault(re.sub(r"[-_.]+", "-", d).lower(), set()).add(module)
    out = set()
    for d in dists:
        out |= by_dist.get(d, set())
    return out


def allowed_modules(module_installs=()):
    """Top-level names importable in Slicer's Python after the module installed ``module_installs``
    (import names, e.g. "skimage", "torch")."""
    slicer = {re.sub(r"[-_.]+", "-", d).lower() for d in SLICER_DISTRIBUTIONS}
    slicer |= closure(WITH_DEPENDENCIES)
    names = top_level_names(slicer)
    dist_of = md.packages_distributions()
    installs = set()
    for name in module_installs:
        installs |= {re.sub(r"[-_.]+", "-", d).lower() for d in dist_of.get(name, [])}
    names |= top_level_names(closure(installs))
    names |= set(MODULE_OWN) | set(module_installs)
    return sorted(names)


SITECUSTOMIZE = '''"""Written by Testing/slicer_env.py: only what Slicer's Python can import is importable."""
import atexit
import json
import os
import sys

ALLOWED = frozenset({allowed!r})
_STD = frozenset(sys.stdlib_module_names) | frozenset(sys.builtin_module_names)


class _SlicerPythonOnly:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in ALLOWED or top in _STD or top.startswith("_") or top == "sitecustomize":
            return None
        raise ModuleNotFoundError(f"No module named {{top!r}} (not in Slicer's Python; blocked)", name=top)


sys.meta_path.insert(0, _SlicerPythonOnly())


def _log():
    path = os.environ.get("CHISEP_IMPORT_LOG")
    if path:
        with open(f"{{path}}.{{os.getpid()}}", "w") as fh:
            loaded = {{m.partition(".")[0] for m in list(sys.modules)}}
            loaded -= {{"sitecustomize", "cython_runtime"}}   # this file; Cython's internal module
            json.dump(sorted(m for m in loaded if m not in _STD and not m.startswith("_")), fh)


atexit.register(_log)
'''


def write_sitecustomize(folder, module_installs=()):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE.format(allowed=allowed_modules(module_installs)))
    return folder


def make_venv(target, base_python=sys.executable):
    """A venv with Slicer 5.8's numpy and scipy that sees ``base_python``'s other packages after
    its own. Returns the venv's python."""
    target = Path(target).resolve()
    subprocess.run([base_python, "-m", "venv", str(target)], check=True)
    py = target / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    subprocess.run([str(py), "-m", "pip", "install", "-q", *SLICER58_PINS], check=True)
    base_site = subprocess.run([base_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip()
    own_site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    # a .pth line appends the base packages after the venv's own (numpy, scipy stay 1.26.4/1.13.1)
    (Path(own_site) / "zz_base_environment.pth").write_text(base_site + "\n")
    return py


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "make-venv":
        print(make_venv(sys.argv[2]))
    else:
        sys.exit(__doc__)
