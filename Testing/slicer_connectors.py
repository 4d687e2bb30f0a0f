"""Slicer's parameter-node GUI connector rules, for checking ChiSeparation.ui against the module.

The table below restates (in our own words) which widget class binds which annotated type in
Slicer's ``Base/Python/slicer/parameterNodeWrapper/guiConnectors.py`` (``canRepresent`` and the
``__init__`` checks of each connector), as read in Slicer **v5.6.0, v5.8.1, v5.10.0 and main
(commit 583e9b37d5, 2026)**. Where versions differ the table keeps what *every* one of them accepts
(e.g. ``ctkCheckBox`` for bool and ``int`` on a ``ctkSliderWidget`` exist only from 5.8), so a
binding passing here opens in all of them. ``Testing/slicer_pnw_probe.py`` runs Slicer's real
connector code where a Slicer source checkout is available, and the tests check that both agree.

Rules common to all four versions:
- The widget class must match exactly (``type(widget) == cls``), never a subclass.
- ``ctkPathLineEdit`` / ``ctkDirectoryButton``: only ``pathlib`` path types (``str`` is refused).
- ``ctkSliderWidget`` / ``qMRMLSliderWidget``: float (not int before 5.8) and *bounded*
  (``WithinRange`` or both ``Minimum`` and ``Maximum``), else RuntimeError.
- ``QDoubleSpinBox``: float; the connector sets minimum/maximum from the annotation, -inf/inf when
  unbounded (so the .ui's range is lost unless the annotation carries it).
- ``QSlider``: bounded int; ``QSpinBox``: int (unbounded -> +-2^31).
- ``qMRMLNodeComboBox``: a vtkMRMLNode subclass or a ``Union`` of them (and ``None``); the
  connector sets ``nodeTypes`` to those class names (the .ui's ``nodeTypes`` is overwritten).
- ``QLineEdit`` / ``QTextEdit``: str. ``QComboBox``: int/float/str/bool with a ``Choice``, or an Enum.
- ``QCheckBox``: bool; ``QPushButton``: bool (made checkable).
"""
import pathlib
import typing
import xml.etree.ElementTree as ET

SLICER_VERSIONS_READ = ("v5.6.0", "v5.8.1", "v5.10.0", "main@583e9b37d5")

PATH_TYPES = (pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath,
              pathlib.PurePath, pathlib.PurePosixPath, pathlib.PureWindowsPath)

# widget class -> (accepted unannotated types or a keyword, extra requirement)
RULES = {
    "QCheckBox": ((bool,), None),
    "QPushButton": ((bool,), None),
    "QSlider": ((int,), "bounded"),
    "QSpinBox": ((int,), None),
    "QDoubleSpinBox": ((float,), None),
    "ctkSliderWidget": ((float,), "bounded"),
    "qMRMLSliderWidget": ((float,), "bounded"),
    "QComboBox": ((int, float, str, bool), "choice-or-enum"),
    "QLineEdit": ((str,), None),
    "QTextEdit": ((str,), None),
    "ctkRangeWidget": (("FloatRange",), "range-bounds"),
    "ctkPathLineEdit": (PATH_TYPES, None),
    "ctkDirectoryButton": (PATH_TYPES, None),
    "qMRMLNodeComboBox": (("node-or-union-of-nodes",), None),
}


def split_annotated(tp):
    """(type, annotations) of a possibly ``Annotated`` type."""
    if typing.get_origin(tp) is typing.Annotated:
        args = typing.get_args(tp)
        return args[0], list(args[1:])
    return tp, []


def _first(annotations, class_name):
    for a in annotations:
        if type(a).__name__ == class_name:
            return a
    return None


def bounds(annotations):
    """(minimum, maximum) from WithinRange / Minimum / Maximum annotations (None where absent)."""
    wr = _first(annotations, "WithinRange")
    if wr is not None:
        return wr.minimum, wr.maximum
    mn, mx = _first(annotations, "Minimum"), _first(annotations, "Maximum")
    return (mn.minimum if mn is not None else None), (mx.maximum if mx is not None else None)


def node_class_names(tp, vtkMRMLNode):
    """Class names a node annotation lists, or None if it is not a node / union of nodes (+None)."""
    if isinstance(tp, type):
        return [tp.__name__] if issubclass(tp, vtkMRMLNode) else None
    if typing.get_origin(tp) is typing.Union:
        names = []
        for a in typing.get_args(tp):
            if a is type(None):
                continue
            if not (isinstance(a, type) and issubclass(a, vtkMRMLNode)):
                return None
            names.append(a.__name__)
        return names
    return None


def check_binding(widget_class, annotation, vtkMRMLNode):
    """None when Slicer's connectors (all versions read) bind ``annotation`` to ``widget_class``,
    else the reason it is refused. Returns (problem or None, details dict)."""
    base, annotations = split_annotated(annotation)
    rule = RULES.get(widget_class)
    if rule is None:
        return f"no connector for widget class {widget_class}", {}
    accepted, extra = rule
    if accepted == ("node-or-union-of-nodes",):
        names = node_class_names(base, vtkMRMLNode)
        if names is None:
            return f"{widget_class} binds a vtkMRMLNode class or a Union of them, not {base!r}", {}
        return None, {"nodeTypes": names}
    if accepted == ("FloatRange",):
        return (f"{widget_class} binds FloatRange only" if getattr(base, "__name__", "") != "FloatRange"
                else None), {}
    if base not in accepted:
        names = ", ".join(getattr(a, "__name__", str(a)) for a in accepted)
        return f"{widget_class} binds {names}, not {getattr(base, '__name__', base)!r}", {}
    lo, hi = bounds(annotations)
    if extra == "bounded" and (lo is None or hi is None):
        return f"{widget_class} refuses an unbounded {base.__name__} (add WithinRange or Minimum+Maximum)", {}
    if extra == "choice-or-enum" and _first(annotations, "Choice") is None:
        return f"{widget_class} needs a Choice annotation", {}
    details = {}
    if widget_class in ("QDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget", "QSpinBox", "QSlider"):
        details = {"minimum": float("-inf") if lo is None else lo, "maximum": float("inf") if hi is None else hi}
    return None, details


def _value(el):
    if el.tag == "stringlist":
        return [s.text for s in el.findall("string")]
    if el.tag == "bool":
        return el.text == "true"
    if el.tag in ("double",):
        return float(el.text)
    if el.tag == "number":
        return int(el.text)
    return el.text


def ui_widgets(ui_path):
    """Every widget of a Qt Designer .ui: name -> {"class": ..., "properties": {...}}."""
    tree = ET.parse(str(ui_path))
    out = {}
    for w in tree.iter("widget"):
        props = {}
        for p in w.findall("property"):
            children = list(p)
            if children:
                props[p.get("name")] = _value(children[0])
        out[w.get("name")] = {"class": w.get("class"), "properties": props}
    return out


def ui_bindings(ui_path):
    """Widgets bound to the parameter node: parameter name -> (widget name, class, properties)."""
    out = {}
    for name, w in ui_widgets(ui_path).items():
        pname = w["properties"].get("SlicerParameterName")
        if pname:
            if pname in out:
                raise ValueError(f"parameter {pname} bound twice ({out[pname][0]}, {name})")
            out[pname] = (name, w["class"], w["properties"])
    return out


def check_all(bindings, hints, vtkMRMLNode):
    """Problems (list of str) of every .ui binding against the annotations ``hints``; and the
    per-parameter details the connectors would apply (nodeTypes, ranges)."""
    problems, details = [], {}
    for pname, (wname, wclass, props) in sorted(bindings.items()):
        if pname not in hints:
            problems.append(f"{wname}: SlicerParameterName {pname!r} is not a parameter")
            continue
        problem, det = check_binding(wclass, hints[pname], vtkMRMLNode)
        if problem:
            problems.append(f"{wname} ({wclass}) <-> {pname}: {problem}")
        details[pname] = det
    return problems, details
