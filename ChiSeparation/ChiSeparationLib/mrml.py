"""MRML nodes <-> numpy arrays, output volumes, colour tables, display, overlays, lesion tables.

No Qt here: everything works on a bare ``slicer.vtkMRMLScene`` (the ``slicer-core`` wheel) as well as
inside the Slicer application.

Conventions
-----------
- Arrays are in NIfTI order ``(i, j, k)`` (multi-echo ``(i, j, k, echo)``) with a 4x4 voxel -> RAS
  ``affine`` in mm, exactly as ``chisep`` uses them. (Slicer's own ``slicer.util.arrayFromVolume``
  returns ``(k, j, i)``; the conversion is done here.)
- An MRML volume's IJKToRAS matrix *is* that affine (direction cosines times spacing, plus origin),
  so oblique and anisotropic grids survive a round trip exactly (to float64 rounding).
- Susceptibility maps are in ppm (``chi_dia`` the positive magnitude), R2' in Hz.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer

# --------------------------------------------------------------------------- output maps

@dataclass(frozen=True)
class MapDisplay:
    """How one output map is named and shown."""
    key: str              # file stem in the chisep output folder
    suffix: str           # node name = "<input name> <suffix>"
    colormap: str         # one of COLORMAPS
    window_min: float     # display range (map unit)
    window_max: float
    unit: str
    title: str            # colour legend title


#: Output maps loaded into the scene after a run, in display order.
OUTPUT_MAPS = {
    "chi_para": MapDisplay("chi_para", "chi_para", "para", 0.0, 0.15, "ppm", "\u03c7para (ppm)"),
    "chi_dia": MapDisplay("chi_dia", "chi_dia", "dia", 0.0, 0.10, "ppm", "|\u03c7dia| (ppm)"),
    "chi_total": MapDisplay("chi_total", "chi_total", "total", -0.10, 0.15, "ppm", "\u03c7total (ppm)"),
    "r2prime": MapDisplay("r2prime", "r2prime", "total", 0.0, 20.0, "Hz", "R2\u2032 (Hz)"),
}
#: Further maps that can be loaded on request.
EXTRA_MAPS = {
    "local_field": MapDisplay("local_field", "local_field", "total", -0.05, 0.05, "ppm", "local field (ppm)"),
    "r2star": MapDisplay("r2star", "r2star", "total", 0.0, 60.0, "Hz", "R2* (Hz)"),
    "qsm": MapDisplay("qsm", "qsm", "total", -0.10, 0.15, "ppm", "QSM (ppm)"),
}

#: Colour maps as RGB control points (position 0..1, r, g, b in 0..1), linearly interpolated.
#: ``para``: warm, black -> purple -> red -> orange -> pale yellow (inferno-like);
#: ``dia``: cool, black -> navy -> blue -> cyan -> pale cyan; ``total``: grey ramp.
COLORMAPS = {
    "para": [(0.0, 0.0, 0.0, 0.016), (0.25, 0.341, 0.063, 0.431), (0.5, 0.737, 0.216, 0.329),
             (0.75, 0.976, 0.557, 0.035), (1.0, 0.988, 1.0, 0.643)],
    "dia": [(0.0, 0.0, 0.0, 0.0), (0.33, 0.0, 0.157, 0.588), (0.66, 0.0, 0.588, 0.902),
            (1.0, 0.706, 1.0, 1.0)],
    "total": [(0.0, 0.0, 0.0, 0.0), (1.0, 1.0, 1.0, 1.0)],
}
COLOR_NODE_NAMES = {"para": "ChiSep chi_para (warm)", "dia": "ChiSep chi_dia (cool)",
                    "total": "ChiSep chi_total (grey)"}
N_COLORS = 256


def colormap_rgb(kind: str, n: int = N_COLORS) -> np.ndarray:
    """(n, 3) RGB in 0..1 of colour map ``kind`` (see :data:`COLORMAPS`)."""
    pts = np.asarray(COLORMAPS[kind], dtype=float)
    x = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(x, pts[:, 0], pts[:, c]) for c in (1, 2, 3)], axis=1)


# --------------------------------------------------------------------------- arrays <-> nodes

def _vtk_matrix(a) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r][c]))
    return m


def _np_matrix(m: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def ijk_to_ras(node, world: bool = True) -> np.ndarray:
    """4x4 voxel (i, j, k) -> RAS (mm) matrix of a volume node.

    With ``world`` (the default) a linear parent transform (e.g. a registration the user applied
    without hardening) is included, so the matrix places voxels where the views show them. A
    non-linear parent transform raises ValueError: the volume must be resampled (hardened) first.
    """
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    a = _np_matrix(m)
    parent = node.GetParentTransformNode() if (world and hasattr(node, "GetParentTransformNode")) else None
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise ValueError(f"volume {node.GetName()!r} is under a non-linear transform "
                             f"({parent.GetName()!r}); harden the transform first (Data module, "
                             "right-click the transform, 'Harden transform')")
        t = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(t)
        a = _np_matrix(t) @ a
    return a


def check_affine(affine) -> np.ndarray:
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {a.shape}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise ValueError("affine is singular (zero voxel size or collinear axes)")
    return a


def _image_from_array(array: np.ndarray) -> vtk.vtkImageData:
    arr = np.asarray(array)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    img = vtk.vtkImageData()
    img.SetDimensions(*[int(s) for s in arr.shape[:3]])
    # VTK stores x (= i) fastest: Fortran order of (i, j, k) == C order of (k, j, i).
    flat = np.ascontiguousarray(arr.reshape(arr.shape[:3] + (-1,)).transpose(2, 1, 0, 3))
    ncomp = flat.shape[-1]
    vtk_arr = numpy_support.numpy_to_vtk(flat.reshape(-1, ncomp) if ncomp > 1 else flat.ravel(),
                                         deep=1)
    img.GetPointData().SetScalars(vtk_arr)
    return img


def find_node(scene, name: str, class_name: str = "vtkMRMLScalarVolumeNode"):
    """First node of ``class_name`` (or a subclass) called ``name``, else None."""
    for i in range(scene.GetNumberOfNodesByClass(class_name)):
        n = scene.GetNthNodeByClass(i, class_name)
        if n.GetName() == name:
            return n
    return None


def volume_node_from_array(scene, array, affine, name: str, node=None,
                           class_name: str = "vtkMRMLScalarVolumeNode", replace: bool = True):
    """Create (or update in place) a volume node holding ``array`` (i, j, k) on ``affine``.

    With ``replace`` the first existing node of ``class_name`` called ``name`` is updated instead of
    adding a new one, so repeated runs do not duplicate nodes. Display nodes are created.
    """
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected a 3-D (i, j, k) array, got shape {arr.shape}")
    a = check_affine(affine)
    if node is None and replace:
        node = find_node(scene, name, class_name)
    if node is None:
        node = scene.AddNewNodeByClass(class_name, name)
    if node.GetTransformNodeID():
        node.SetAndObserveTransformNodeID(None)  # ``affine`` is already in world (RAS) coordinates
    node.SetIJKToRASMatrix(_vtk_matrix(a))
    node.SetAndObserveImageData(_image_from_array(arr))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    disp = node.GetDisplayNode()
    if disp is not None and (not disp.GetColorNodeID() or scene.GetNodeByID(disp.GetColorNodeID()) is None):
        # Slicer's volumes logic would pick Grey; a bare scene has no default, so set it here.
        grey = scene.GetNodeByID("vtkMRMLColorTableNodeGrey") or ensure_color_node(scene, "total")
        disp.SetAndObserveColorNodeID(grey.GetID())
    node.Modified()
    return node


def array_from_volume_node(node, copy: bool = True):
    """``(array (i, j, k[, c]), affine)`` of a volume node; ``c`` for multi-component images."""
    img = node.GetImageData()
    if img is None or img.GetPointData().GetScalars() is None:
        raise ValueError(f"volume {node.GetName()!r} has no image data")
    dims = img.GetDimensions()
    sc = img.GetPointData().GetScalars()
    nc = sc.GetNumberOfComponents()
    kji = numpy_support.vtk_to_numpy(sc).reshape(dims[2], dims[1], dims[0], nc)
    arr = kji.transpose(2, 1, 0, 3)
    if nc == 1:
        arr = arr[..., 0]
    return (np.array(arr) if copy else arr), ijk_to_ras(node)


def sequence_available() -> bool:
    return hasattr(slicer, "vtkMRMLSequenceNode")


def volumes_from_4d(scene, array4d, affine, name: str, as_sequence: bool = True,
                    index_values=None, index_name: str = "echo", index_unit: str = "s"):
    """Put an (i, j, k, echo) array into the scene.

    Returns a ``vtkMRMLSequenceNode`` named ``name`` holding one scalar volume per echo (index values
    e.g. echo times) when sequences are available and ``as_sequence``; else a list of scalar volume
    nodes ``"<name> echo <n>"`` (n from 1). Existing nodes of the same names are replaced.
    """
    arr = np.asarray(array4d)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise ValueError(f"{name}: expected (i, j, k, echo), got shape {arr.shape}")
    n = arr.shape[3]
    vals = list(index_values) if index_values is not None else list(range(1, n + 1))
    if len(vals) != n:
        raise ValueError(f"{name}: {len(vals)} index values for {n} echoes")
    if as_sequence and sequence_available():
        seq = find_node(scene, name, "vtkMRMLSequenceNode")
        if seq is None:
            seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
        seq.RemoveAllDataNodes()
        seq.SetIndexName(index_name)
        seq.SetIndexUnit(index_unit)
        seq.SetIndexType(seq.NumericIndex)
        for e in range(n):
            tmp = slicer.vtkMRMLScalarVolumeNode()
            tmp.SetName(f"{name} echo {e + 1}")
            tmp.SetIJKToRASMatrix(_vtk_matrix(check_affine(affine)))
            tmp.SetAndObserveImageData(_image_from_array(arr[..., e]))
            seq.SetDataNodeAtValue(tmp, f"{vals[e]:g}" if isinstance(vals[e], float) else str(vals[e]))
        return seq
    return [volume_node_from_array(scene, arr[..., e], affine, f"{name} echo {e + 1}") for e in range(n)]


def array_from_input(nodes):
    """``(array, affine, index_values)`` from what a user picks as a multi-echo input.

    ``nodes``: a sequence node (one volume per echo), a multi-component volume (multivolume), a
    scalar volume (one echo; 3-D) or a list of scalar volumes (one per echo, same grid).
    The array is (i, j, k, echo) for several echoes, (i, j, k) for one. ``index_values`` are the
    sequence index values as floats where they parse (e.g. echo times), else None.
    """
    if isinstance(nodes, (list, tuple)):
        if len(nodes) == 1:
            return array_from_input(nodes[0])
        arrs, affs = zip(*[array_from_volume_node(n) for n in nodes])
        _check_same_grid(arrs, affs, [n.GetName() for n in nodes])
        return np.stack(arrs, axis=-1), affs[0], None
    if nodes.IsA("vtkMRMLSequenceNode"):
        count = nodes.GetNumberOfDataNodes()
        if count == 0:
            raise ValueError(f"sequence {nodes.GetName()!r} is empty")
        vols = [nodes.GetNthDataNode(i) for i in range(count)]
        arrs, affs = zip(*[array_from_volume_node(v) for v in vols])
        _check_same_grid(arrs, affs, [f"{nodes.GetName()}[{i}]" for i in range(count)])
        vals = []
        for i in range(count):
            try:
                vals.append(float(nodes.GetNthIndexValue(i)))
            except ValueError:
                vals = None
                break
        arr = np.stack(arrs, axis=-1) if count > 1 else arrs[0]
        return arr, affs[0], vals
    arr, aff = array_from_volume_node(nodes)
    return arr, aff, None


def _check_same_grid(arrs, affs, names):
    for a, f, n in zip(arrs[1:], affs[1:], names[1:]):
        if a.shape != arrs[0].shape or not np.allclose(f, affs[0], atol=1e-4):
            raise ValueError(f"{n} is not on the grid of {names[0]}: every echo must share one grid")


def save_input_nifti(nodes, path, sidecar: dict | None = None) -> str:
    """Write a node (or sequence / list of echo volumes) as NIfTI for the ``chisep`` command."""
    from chisep.io import save_nifti
    arr, aff, _ = array_from_input(nodes)
    save_nifti(path, arr, aff, sidecar=sidecar)
    return str(path)


# --------------------------------------------------------------------------- input metadata

#: Echo-time index names/units that identify a sequence indexed by echo time.
_TE_RANGE_S = (1e-4, 0.5)   # plausible echo times in seconds (GRE and SE)

_ECHO_NAME = re.compile(r"^(?P<stem>.*?)(?P<sep>[ _-]?(?:echo|e)[ _-]?)(?P<n>\d+)$", re.I)


def _storage_file(node):
    st = node.GetStorageNode() if node is not None and hasattr(node, "GetStorageNode") else None
    return st.GetFileName() if st is not None and st.GetFileName() else None


def sidecar_for_node(node) -> dict | None:
    """The dcm2niix-style JSON sidecar beside the file a node was loaded from, if there is one."""
    path = _storage_file(node)
    if not path:
        return None
    for ext in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".seq.nrrd"):
        if path.lower().endswith(ext):
            cand = path[: -len(ext)] + ".json"
            break
    else:
        cand = os.path.splitext(path)[0] + ".json"
    if not os.path.isfile(cand):
        return None
    try:
        with open(cand, encoding="utf-8") as fh:
            obj = json.load(fh)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _plausible_te(vals) -> list | None:
    try:
        vals = [float(v) for v in vals]
    except (TypeError, ValueError):
        return None
    if vals and all(_TE_RANGE_S[0] <= v <= _TE_RANGE_S[1] for v in vals):
        return vals
    return None


def _te_from_single(node) -> list | None:
    sc = sidecar_for_node(node)
    if sc and sc.get("EchoTime") is not None:
        te = sc["EchoTime"]
        te = _plausible_te(te if isinstance(te, (list, tuple)) else [te])
        if te:
            return te
    own = node.GetAttribute("ChiSeparation.EchoTimes")
    if own:
        te = _plausible_te(own.replace(",", " ").split())
        if te:
            return te
    labels = node.GetAttribute("MultiVolume.FrameLabels")
    tag = node.GetAttribute("MultiVolume.FrameIdentifyingDICOMTagName") or ""
    if labels and "EchoTime" in tag:   # DICOM EchoTime is in ms
        te = _plausible_te([float(v) / 1000.0 for v in labels.split(",")])
        if te:
            return te
    for key in ("EchoTime", "DICOM.EchoTime"):
        v = node.GetAttribute(key)
        if v:
            x = float(v)
            te = _plausible_te([x / 1000.0 if x > _TE_RANGE_S[1] else x])  # DICOM gives ms
            if te:
                return te
    return None


def echo_times_from_node(node) -> list | None:
    """Echo times in seconds of a multi-echo input, from the data where present, else None.

    Looked for, in order: the JSON sidecar beside the loaded file (``EchoTime``, s), the attribute
    ``ChiSeparation.EchoTimes``, a sequence's index values (index name with "echo" or unit s/ms),
    multivolume frame labels of a DICOM EchoTime series (ms), the ``EchoTime`` attribute (one
    echo), and for a list of per-echo volumes, each volume's own echo time. Implausible values
    (outside 0.1 ms .. 0.5 s, e.g. the frame numbers of a 4-D NIfTI) give None.
    """
    if node is None:
        return None
    if isinstance(node, (list, tuple)):
        per = [echo_times_from_node(n) for n in node]
        if all(p is not None and len(p) == 1 for p in per):
            return [p[0] for p in per]
        return None
    if node.IsA("vtkMRMLSequenceNode"):
        te = _te_from_single(node)
        if te:
            return te
        n = node.GetNumberOfDataNodes()
        try:
            vals = [float(node.GetNthIndexValue(i)) for i in range(n)]
        except ValueError:
            vals = []
        unit = (node.GetIndexUnit() or "").strip().lower()
        name = (node.GetIndexName() or "").strip().lower()
        if vals and (unit == "ms" or (not unit and "echo" in name and max(vals) > _TE_RANGE_S[1])):
            vals = [v / 1000.0 for v in vals]
        if vals and (unit in ("s", "ms") or "echo" in name):
            te = _plausible_te(vals)
            if te:
                return te
        per = [_te_from_single(node.GetNthDataNode(i)) for i in range(n)]
        if n and all(p is not None and len(p) == 1 for p in per):
            return [p[0] for p in per]
        return None
    return _te_from_single(node)


def field_strength_from_node(node) -> float | None:
    """Field strength in tesla from the sidecar (``MagneticFieldStrength``) or node attributes."""
    if isinstance(node, (list, tuple)):
        node = node[0] if node else None
    if node is None:
        return None
    sc = sidecar_for_node(node) or {}
    cands = [sc.get("MagneticFieldStrength")]
    cands += [node.GetAttribute(k) for k in ("MagneticFieldStrength", "DICOM.MagneticFieldStrength")]
    if sc.get("ImagingFrequency"):
        try:
            cands.append(float(sc["ImagingFrequency"]) / 42.577478)
        except (TypeError, ValueError):
            pass
    for v in cands:
        try:
            b0 = float(v)
        except (TypeError, ValueError):
            continue
        if 0.05 <= b0 <= 20.0:
            return b0
    return None


def b0_direction_from_node(node) -> np.ndarray | None:
    """Unit B0 direction in the volume's array frame (i, j, k).

    A sidecar ``B0Direction`` (array frame) wins; else it follows from the geometry (B0 along
    world S, tilted into the array frame by the IJK->RAS rotation), as ``chisep`` computes it.
    """
    if isinstance(node, (list, tuple)):
        node = node[0] if node else None
    if node is None:
        return None
    sc = sidecar_for_node(node) or {}
    if sc.get("B0Direction") is not None:
        v = np.asarray(sc["B0Direction"], dtype=float)
        if v.shape == (3,) and np.linalg.norm(v) > 0:
            return v / np.linalg.norm(v)
    vol = background_volume(node)
    if vol is None or not vol.IsA("vtkMRMLVolumeNode"):
        return None
    from chisep.physics import b0_direction_from_affine
    return np.asarray(b0_direction_from_affine(ijk_to_ras(vol)), dtype=float)


def parse_b0_direction(text) -> np.ndarray | None:
    """``"0 0 1"`` / ``"0, 0.1, 0.99"`` -> unit vector; empty -> None (use the geometry)."""
    if text is None or not str(text).strip():
        return None
    try:
        v = np.array([float(x) for x in str(text).replace(",", " ").split()], dtype=float)
    except ValueError:
        raise ValueError(f"B0 direction must be three numbers, got {text!r}") from None
    if v.shape != (3,) or not np.all(np.isfinite(v)) or np.linalg.norm(v) == 0:
        raise ValueError(f"B0 direction must be three numbers, not all zero, got {text!r}")
    return v / np.linalg.norm(v)


def echo_volumes(scene, node) -> list:
    """The echoes of a "one volume per echo" input, gathered from the name of one of them.

    ``node`` named like ``"GRE_e2"`` / ``"GRE echo 2"`` / ``"GRE-echo3"`` gives every scalar volume
    of the scene with the same stem and separator, ordered by echo number (missing numbers are an
    error). Any other node gives ``[node]``.
    """
    m = _ECHO_NAME.match(node.GetName() or "") if node is not None else None
    if m is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        return [node] if node is not None else []
    found = {}
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        n = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
        mm = _ECHO_NAME.match(n.GetName() or "")
        if mm and mm.group("stem") == m.group("stem") and mm.group("sep").lower() == m.group("sep").lower() \
                and not n.IsA("vtkMRMLLabelMapVolumeNode"):
            found.setdefault(int(mm.group("n")), n)
    nums = sorted(found)
    if nums != list(range(nums[0], nums[0] + len(nums))):
        raise ValueError(f"echo volumes {m.group('stem')}{m.group('sep')}N: numbers {nums} have gaps")
    return [found[k] for k in nums]


# --------------------------------------------------------------------------- colours and display

def ensure_color_node(scene, kind: str):
    """The colour table for ``kind`` (para, dia, total), created once per scene and reused."""
    name = COLOR_NODE_NAMES[kind]
    node = find_node(scene, name, "vtkMRMLColorTableNode")
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    node.SetTypeToUser()
    node.SetNumberOfColors(N_COLORS)
    rgb = colormap_rgb(kind)
    for i, (r, g, b) in enumerate(rgb):
        node.SetColor(i, float(r), float(g), float(b), 1.0)
    node.GetLookupTable().SetRange(0, N_COLORS - 1)
    node.SetAttribute("Category", "ChiSeparation")
    return node


def lookup_color(color_node, value: float, window_min: float, window_max: float) -> np.ndarray:
    """RGBA (0..255) of ``value`` with ``color_node`` stretched over ``[window_min, window_max]``.

    The mapping of Slicer's scalar volume display: the window is mapped linearly onto the table
    (``index = floor(t * (N - 1))``, ``t`` clamped to 0..1), so the ends take the first/last colour.
    """
    lut = color_node.GetLookupTable()
    n = lut.GetNumberOfTableValues()
    t = (float(value) - float(window_min)) / (float(window_max) - float(window_min))
    idx = int(np.floor(min(max(t, 0.0), 1.0) * (n - 1)))
    return np.rint(np.array(lut.GetTableValue(idx), dtype=float) * 255.0)


def apply_display(scene, volume_node, spec: MapDisplay):
    """Attach the colour node of ``spec`` and set the window/level range (in the map's unit)."""
    color = ensure_color_node(scene, spec.colormap)
    disp = volume_node.GetDisplayNode()
    if disp is None:
        volume_node.CreateDefaultDisplayNodes()
        disp = volume_node.GetDisplayNode()
    disp.SetAndObserveColorNodeID(color.GetID())
    disp.AutoWindowLevelOff()
    disp.SetWindowLevelMinMax(spec.window_min, spec.window_max)
    disp.SetInterpolate(1)
    volume_node.SetAttribute("ChiSeparation.map", spec.key)
    volume_node.SetAttribute("ChiSeparation.unit", spec.unit)
    return disp


LEGEND_CLASS = "vtkMRMLColorLegendDisplayNode"


def color_legend_available() -> bool:
    return hasattr(slicer, LEGEND_CLASS)


def color_legend(volume_node):
    """The colour legend display node of a volume, or None."""
    for i in range(volume_node.GetNumberOfDisplayNodes()):
        d = volume_node.GetNthDisplayNode(i)
        if d is not None and d.IsA(LEGEND_CLASS):
            return d
    return None


def setup_color_legend(scene, volume_node, title: str, visible: bool = True, label_format: str = "%.3f"):
    """Create (once) or update the colour legend of ``volume_node`` (what Slicer's Colors module does
    for "Show color legend"): primary display = the volume's scalar display, the map's title and
    unit, shown in the slice views. Returns the legend node, or None where MRML has no legends."""
    if not color_legend_available():
        return None
    legend = color_legend(volume_node)
    if legend is None:
        if not scene.IsNodeClassRegistered(LEGEND_CLASS):  # Slicer's Colors module registers it
            scene.RegisterNodeClass(getattr(slicer, LEGEND_CLASS)())
        legend = scene.AddNewNodeByClass(LEGEND_CLASS, f"{volume_node.GetName()} legend")
        legend.SetAndObservePrimaryDisplayNode(volume_node.GetDisplayNode())
        volume_node.AddAndObserveDisplayNodeID(legend.GetID())
    legend.SetTitleText(title)
    legend.SetLabelFormat(label_format)
    legend.SetVisibility(bool(visible))
    legend.SetVisibility2D(True)
    legend.SetVisibility3D(False)
    return legend


def show_only_legend_of(nodes, shown) -> int:
    """Show the legend of ``shown`` and hide those of the other ``nodes``; returns how many shown."""
    count = 0
    for node in nodes:
        legend = color_legend(node) if node is not None else None
        if legend is not None:
            vis = shown is not None and node.GetID() == shown.GetID()
            legend.SetVisibility(vis)
            count += int(vis)
    return count


def output_node_name(input_name: str, key: str) -> str:
    spec = OUTPUT_MAPS.get(key) or EXTRA_MAPS.get(key)
    return f"{input_name} {spec.suffix if spec else key}"


def show_maps(scene, maps: dict, affine, input_name: str) -> dict:
    """Create or replace output volumes from arrays ``maps`` (key -> (i, j, k)); returns key -> node."""
    nodes = {}
    for key, arr in maps.items():
        spec = OUTPUT_MAPS.get(key) or EXTRA_MAPS.get(key)
        node = volume_node_from_array(scene, arr, affine, output_node_name(input_name, key))
        if spec is not None:
            apply_display(scene, node, spec)
            setup_color_legend(scene, node, spec.title, visible=False)
        nodes[key] = node
    return nodes


def load_outputs(scene, out_dir, input_name: str, keys=None) -> dict:
    """Load the maps written by ``chisep run`` in ``out_dir`` as output volumes (created or replaced).

    ``keys`` defaults to :data:`OUTPUT_MAPS` (those present). Returns key -> node.
    """
    from chisep.io import load_nifti
    keys = list(keys) if keys is not None else list(OUTPUT_MAPS)
    maps, affine = {}, None
    for key in keys:
        path = os.path.join(str(out_dir), f"{key}.nii.gz")
        if not os.path.exists(path):
            continue
        data, aff = _load(load_nifti, path)
        if affine is None:
            affine = aff
        maps[key] = data
    if not maps:
        raise FileNotFoundError(f"no output maps ({', '.join(keys)}) found in {out_dir}")
    return show_maps(scene, maps, affine, input_name)


def _load(load_nifti, path):
    res = load_nifti(path)
    if isinstance(res, tuple):
        return np.asarray(res[0]), np.asarray(res[1])
    return np.asarray(res.data), np.asarray(res.affine)


# --------------------------------------------------------------------------- overlays

@dataclass
class OverlaySettings:
    """What the slice views show: background (e.g. GRE magnitude echo 1), foreground map, opacity."""
    background_id: str | None
    foreground_id: str | None
    opacity: float = 0.6
    legend_node_ids: list = field(default_factory=list)


def overlay_settings(background_node, foreground_node, opacity: float = 0.6) -> OverlaySettings:
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in 0..1, got {opacity}")
    return OverlaySettings(background_node.GetID() if background_node is not None else None,
                           foreground_node.GetID() if foreground_node is not None else None,
                           float(opacity))


def apply_overlay(composite_node, settings: OverlaySettings):
    """Apply ``settings`` to one vtkMRMLSliceCompositeNode."""
    composite_node.SetBackgroundVolumeID(settings.background_id)
    composite_node.SetForegroundVolumeID(settings.foreground_id)
    composite_node.SetForegroundOpacity(settings.opacity)
    return composite_node


def apply_overlay_to_scene(scene, settings: OverlaySettings) -> int:
    """Apply ``settings`` to every slice composite node of the scene; returns how many."""
    n = scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")
    for i in range(n):
        apply_overlay(scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode"), settings)
    return n


def sequence_browser(scene, sequence_node):
    """The first sequence browser of the scene that plays ``sequence_node``, or None."""
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode")):
        b = scene.GetNthNodeByClass(i, "vtkMRMLSequenceBrowserNode")
        if b.IsSynchronizedSequenceNodeID(sequence_node.GetID(), True):  # True: the master counts
            return b
    return None


_PRIVATE_SEQUENCES_LOGIC = {}


def _sequences_logic(scene):
    """One private sequences logic per bare scene (inside Slicer pass the application's)."""
    key = scene.GetAddressAsString("vtkMRMLScene") if hasattr(scene, "GetAddressAsString") else id(scene)
    entry = _PRIVATE_SEQUENCES_LOGIC.get(key)
    if entry is None or entry[0] is not scene:
        logic = slicer.vtkSlicerSequencesLogic()
        logic.SetMRMLScene(scene)
        entry = _PRIVATE_SEQUENCES_LOGIC[key] = (scene, logic)
    return entry[1]


def browse_sequence(scene, sequence_node, sequences_logic=None):
    """``(browser, proxy volume)`` showing a sequence in the views (what Slicer does on loading a
    4-D file): reuses a browser (and its proxy) that already plays it, else creates them.
    ``sequences_logic``: the application's (``slicer.modules.sequences.logic()``); on a bare scene a
    private one is made once."""
    browser = sequence_browser(scene, sequence_node)
    if browser is not None and browser.GetProxyNode(sequence_node) is not None:
        return browser, browser.GetProxyNode(sequence_node)
    logic = sequences_logic if sequences_logic is not None else _sequences_logic(scene)
    if browser is None:
        browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", sequence_node.GetName() + " browser")
        browser.SetAndObserveMasterSequenceNodeID(sequence_node.GetID())
    logic.UpdateProxyNodesFromSequences(browser)
    return browser, browser.GetProxyNode(sequence_node)


def sequence_of_proxy(scene, node):
    """The sequence whose browser shows ``node`` as its proxy (a 4-D file loaded in Slicer appears as
    such a volume in the node selectors), or None."""
    if node is None:
        return None
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode")):
        b = scene.GetNthNodeByClass(i, "vtkMRMLSequenceBrowserNode")
        if b.IsProxyNodeID(node.GetID()):
            seq = b.GetSequenceNode(node)
            if seq is not None:
                return seq
    return None


def display_volume(scene, nodes, sequences_logic=None):
    """A volume of the scene to show under the maps: a sequence's proxy (browsed if needed), the first
    of a list of echoes, or the node itself."""
    if isinstance(nodes, (list, tuple)):
        return nodes[0] if nodes else None
    if nodes is not None and nodes.IsA("vtkMRMLSequenceNode"):
        return browse_sequence(scene, nodes, sequences_logic)[1]
    return nodes


def background_volume(nodes):
    """A 3-D volume to show under the maps: the first echo of a sequence / list, or the node itself."""
    if isinstance(nodes, (list, tuple)):
        return nodes[0] if nodes else None
    if nodes is not None and nodes.IsA("vtkMRMLSequenceNode"):
        return nodes.GetNthDataNode(0) if nodes.GetNumberOfDataNodes() else None
    return nodes


# --------------------------------------------------------------------------- lesion statistics

LESION_COLUMNS = [
    ("label", "int"), ("voxels", "int"), ("volume_mm3", "double"),
    ("chi_para_mean", "double"), ("chi_dia_mean", "double"), ("chi_total_mean", "double"),
    ("r2prime_mean", "double"), ("chi_para_class", "string"), ("chi_dia_class", "string"),
    ("class", "string"), ("rim", "string"),
]


def lesion_rows(maps: dict, labels, affine, wm_mask=None, csf_mask=None, brain_mask=None) -> list:
    """Rows of :func:`chisep.lesions.lesion_statistics` for the given maps and lesion labels."""
    from chisep.lesions import lesion_statistics
    return lesion_statistics(maps, labels, affine, wm_mask=wm_mask, csf_mask=csf_mask,
                             brain_mask=brain_mask)


def lesion_table_node(scene, rows: list, name: str = "ChiSeparation lesions"):
    """Create or replace a vtkMRMLTableNode with one row per lesion (see :data:`LESION_COLUMNS`).

    ``class`` is the lesion subtype; ``rim`` is "yes"/"no". Missing means are NaN.
    """
    node = find_node(scene, name, "vtkMRMLTableNode")
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = vtk.vtkTable()
    cols = {}
    for cname, ctype in LESION_COLUMNS:
        col = {"int": vtk.vtkIntArray, "double": vtk.vtkDoubleArray, "string": vtk.vtkStringArray}[ctype]()
        col.SetName(cname)
        table.AddColumn(col)
        cols[cname] = col

    def num(r, k):
        v = r.get(k)
        return float("nan") if v is None else float(v)

    for r in rows:
        vals = {"label": int(r["label"]), "voxels": int(r["n_voxels"]),
                "volume_mm3": float(r["volume_mm3"]),
                "chi_para_mean": num(r, "chi_para_mean"), "chi_dia_mean": num(r, "chi_dia_mean"),
                "chi_total_mean": num(r, "chi_total_mean"), "r2prime_mean": num(r, "r2prime_mean"),
                "chi_para_class": str(r.get("chi_para_class", "")),
                "chi_dia_class": str(r.get("chi_dia_class", "")),
                "class": str(r.get("subtype", "")), "rim": "yes" if r.get("rim") else "no"}
        for cname, ctype in LESION_COLUMNS:
            cols[cname].InsertNextValue(vals[cname])
    node.SetAndObserveTable(table)
    for cname, _ in LESION_COLUMNS:
        unit = {"volume_mm3": "mm3", "chi_para_mean": "ppm", "chi_dia_mean": "ppm",
                "chi_total_mean": "ppm", "r2prime_mean": "Hz"}.get(cname)
        if unit and hasattr(node, "SetColumnUnitLabel"):
            node.SetColumnUnitLabel(cname, unit)
    node.Modified()
    return node


def table_column(node, name: str) -> list:
    """Values of column ``name`` of a table node (python list)."""
    col = node.GetTable().GetColumnByName(name)
    if col is None:
        raise KeyError(name)
    return [col.GetValue(i) for i in range(col.GetNumberOfValues())]


def lesion_table_from_nodes(scene, map_nodes: dict, labels_node, name: str = "ChiSeparation lesions",
                            wm_node=None, brain_node=None):
    """Lesion statistics table from output map nodes and a label-map volume on the same grid."""
    maps, affine = {}, None
    for key, node in map_nodes.items():
        arr, aff = array_from_volume_node(node)
        maps[key] = arr.astype(np.float32)
        affine = aff if affine is None else affine
    labels, laff = array_from_volume_node(labels_node)
    if labels.shape != next(iter(maps.values())).shape or not np.allclose(laff, affine, atol=1e-4):
        raise ValueError(f"lesion labels {labels_node.GetName()!r} are not on the grid of the maps; "
                         "resample them first (Resample Scalar/Vector/DWI Volume)")
    wm = array_from_volume_node(wm_node)[0] if wm_node is not None else None
    brain = array_from_volume_node(brain_node)[0] if brain_node is not None else None
    rows = lesion_rows(maps, np.rint(labels).astype(np.int32), affine, wm_mask=wm, brain_mask=brain)
    return lesion_table_node(scene, rows, name), rows
