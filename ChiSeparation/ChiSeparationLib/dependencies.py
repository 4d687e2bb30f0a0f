"""What the core needs beyond what Slicer ships, and what the module installs (no Qt).

Slicer's Python ships numpy, scipy, pydicom, SimpleITK, vtk, Pillow and requests (and pip). The
core needs, depending on the choices of the panel:

- ``nibabel``: always (inputs go to the background process as NIfTI files);
- ``scikit-image``: raw GRE inputs (the default phase unwrapping, region growing);
- ``safetensors``: chi-sepnet with the built-in weights or ``.safetensors`` weights;
- ``onnxruntime``: ONNX weights;
- ``torch``: chi-sepnet; installed through the PyTorch extension (``PyTorchUtils``), never pip.

The widget asks before installing them with ``slicer.util.pip_install``. Never numpy, vtk, SimpleITK
or scipy: Slicer ships its own builds and a PyPI copy breaks them.
"""
import importlib.util
import os

from chisep.options import NETWORK_METHODS

#: Top-level modules of what Slicer's Python ships (Slicer 5.6 - 5.10).
SLICER_SHIPS = ("numpy", "scipy", "pydicom", "SimpleITK", "vtk", "vtkmodules", "PIL", "requests",
                "pip", "setuptools")
#: (import name, pip requirement, when it is needed: "always" | "raw" | "safetensors" | "onnx")
PIP_REQUIREMENTS = (
    ("nibabel", "nibabel>=5.0", "always"),
    ("skimage", "scikit-image>=0.21", "raw"),
    ("safetensors", "safetensors>=0.4", "safetensors"),
    ("onnxruntime", "onnxruntime>=1.16", "onnx"),
)
NEVER_PIP = frozenset({"numpy", "vtk", "simpleitk", "scipy"})
#: Everything the module may install: the pip requirements plus torch (PyTorch extension).
MODULE_INSTALLS = tuple(r[0] for r in PIP_REQUIREMENTS) + ("torch",)


def weights_argument(path):
    """The ``--weights`` value for the panel's path: None (built-in weights) when it is empty, "."
    (what an empty ``ctkPathLineEdit`` reads as) or a folder."""
    if path is None:
        return None
    text = str(path).strip()
    if text in ("", ".") or os.path.isdir(text):
        return None
    return text


def needs(method: str, raw_inputs: bool, weights=None) -> list:
    """Import names the core needs for these choices (torch included)."""
    weights = weights_argument(weights)
    chisepnet = method in NETWORK_METHODS
    out = []
    for name, _req, when in PIP_REQUIREMENTS:
        if when == "always" or (when == "raw" and raw_inputs):
            out.append(name)
        elif when == "safetensors" and chisepnet and (weights is None or weights.endswith(".safetensors")):
            out.append(name)
        elif when == "onnx" and chisepnet and weights is not None and weights.endswith(".onnx"):
            out.append(name)
    if chisepnet:
        out.append("torch")
    return out


def missing(method: str, raw_inputs: bool, weights=None, find_spec=importlib.util.find_spec) -> list:
    """``(import name, pip requirement or None for torch)`` of what is needed and not importable."""
    reqs = {name: req for name, req, _ in PIP_REQUIREMENTS}
    out = []
    for name in needs(method, raw_inputs, weights):
        try:
            spec = find_spec(name)
        except (ImportError, ValueError):   # a broken or refused package counts as missing
            spec = None
        if spec is None:
            out.append((name, reqs.get(name)))
    return out


def pip_requirement_is_allowed(requirement: str) -> bool:
    name = requirement.split(">")[0].split("=")[0].split("<")[0].strip().lower()
    return name not in NEVER_PIP
