"""The module's parameter node: every choice of the panel, saved with the scene (no Qt here).

Written for Slicer's ``parameterNodeWrapper`` (Slicer >= 5.6). The annotations decide how the
wrapper's GUI connectors bind the widgets of ``Resources/UI/ChiSeparation.ui`` that carry a
``SlicerParameterName`` property, and Slicer's connectors are strict (read in Slicer's
``Base/Python/slicer/parameterNodeWrapper/guiConnectors.py``, 5.6.0 to main):

- a connector matches the exact widget class (``type(widget) == ...``), never a subclass;
- ``ctkPathLineEdit`` binds only ``pathlib`` path types, not ``str``;
- ``ctkSliderWidget`` refuses an unbounded float (``WithinRange`` or ``Minimum`` + ``Maximum``), and a
  ``QDoubleSpinBox`` gets the annotation's range (an unbounded float becomes -inf..inf);
- ``qMRMLNodeComboBox`` gets ``nodeTypes`` from the annotation (a node class or a ``Union`` of node
  classes and ``None``); with ``showChildNodeTypes = false`` only those exact classes are listed.

``Testing/test_slicer_bindings.py`` checks every binding of the .ui against these rules (and against
Slicer's own code where a Slicer source checkout is available).

Annotations are evaluated (no ``from __future__ import annotations``): the wrapper reads them as types.
"""
import pathlib
import typing
from typing import Annotated

import slicer
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from chisep import options as O

#: Node classes a multi-echo selector lists: a sequence (one volume per echo), a multivolume (only
#: with the MultiVolumeExplorer extension), or one scalar volume (a 4-D file's proxy, one echo of a
#: "<stem>_eN" series, or a 3-D single echo). Concrete classes: the abstract vtkMRMLNode would list
#: every node of the scene.
MULTI_ECHO_CLASS_NAMES = ("vtkMRMLSequenceNode", "vtkMRMLMultiVolumeNode", "vtkMRMLScalarVolumeNode")
#: A mask: a label map (what segmentation tools export) or a plain scalar volume.
MASK_CLASS_NAMES = ("vtkMRMLLabelMapVolumeNode", "vtkMRMLScalarVolumeNode")
#: Lesions: a label map, a scalar volume of labels (a lesion mask loaded without "LabelMap"), or a
#: Segmentation node, each on any grid (resampled onto the maps' grid, nearest neighbour).
LESION_CLASS_NAMES = ("vtkMRMLLabelMapVolumeNode", "vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode")


def node_union(class_names):
    """``Union[<classes that exist in this Slicer>, None]``: the wrapper stores "no node" only as the
    ``None`` of a union, and its connector lists exactly the union's classes."""
    classes = tuple(getattr(slicer, c) for c in class_names if hasattr(slicer, c))
    return typing.Union[classes + (type(None),)]


MultiEchoNode = node_union(MULTI_ECHO_CLASS_NAMES)
MaskNode = node_union(MASK_CLASS_NAMES)
LesionNode = node_union(LESION_CLASS_NAMES)
VolumeNode = node_union(("vtkMRMLScalarVolumeNode",))

#: The Advanced section's combo boxes list the choices of the options contract (chisep.options);
#: Slicer's QComboBox connector shows each choice as its text. Phase sign "auto": from the data.
PHASE_SIGN_AUTO = "auto"
BG_METHOD_CHOICES = list(O.BG_METHODS)
UNWRAP_CHOICES = list(O.UNWRAP_METHODS)
PRECISION_CHOICES = list(O.PRECISIONS)
PHASE_SIGN_CHOICES = [PHASE_SIGN_AUTO] + [f"{s:+d}" for s in O.PHASE_SIGNS]


def default(cls, name):
    """The contract's default of option ``name`` of ``cls``."""
    return O.get_field(cls, name).default


#: Field strength: 0 means "not known" (the spin box shows "required"; runs refuse it).
FIELD_STRENGTH_RANGE_T = (0.0, 21.0)


@parameterNodeWrapper
class ChiSeparationParameterNode:
    """Every choice of the panel, saved with the scene."""
    inputMode: str = "raw"                      # "raw" | "processed"
    greMagnitude: MultiEchoNode
    grePhase: MultiEchoNode
    echoTimes: str = ""                         # seconds, "0.004 0.008 ..."; empty: required
    seMagnitude: MultiEchoNode
    seEchoTimes: str = ""
    r2Map: VolumeNode
    localField: VolumeNode
    fieldUnit: str = "ppm"
    r2starMap: VolumeNode
    r2primeMap: VolumeNode
    mask: MaskNode
    fieldStrength: Annotated[float, WithinRange(*FIELD_STRENGTH_RANGE_T)] = 0.0   # tesla; 0: required
    b0Direction: str = ""                       # "i j k" unit vector; empty: from the data
    method: str = default(O.RunOptions, "method")
    weightsPath: pathlib.Path                   # empty ("."): built-in weights
    device: str = default(O.RunOptions, "device")
    # Advanced (choices and defaults from chisep.options)
    bgMethod: Annotated[str, Choice(BG_METHOD_CHOICES)] = default(O.PreprocessOptions, "bg_method")
    unwrap: Annotated[str, Choice(UNWRAP_CHOICES)] = default(O.PreprocessOptions, "unwrap")
    phaseSign: Annotated[str, Choice(PHASE_SIGN_CHOICES)] = PHASE_SIGN_AUTO
    precision: Annotated[str, Choice(PRECISION_CHOICES)] = default(O.RunOptions, "precision")
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.6
    lesionLabels: LesionNode
    # The run's output nodes are node references of the MRML parameter node itself (roles
    # "ChiSeparation.output.<map>", see ChiSeparationLib.logic), so they come back with the scene.
