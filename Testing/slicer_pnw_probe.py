"""Run Slicer's REAL parameterNodeWrapper code on ChiSeparation's parameter node and .ui.

Usage: python slicer_pnw_probe.py <parameterNodeWrapper source folder> <ui file> <module dir>

Slicer's ``parameterNodeWrapper`` package (pure Python, read from a Slicer source checkout at one
version) is imported as ``slicer.parameterNodeWrapper`` on top of the ``slicer-core`` wheel (real
MRML scene and nodes). Only Qt cannot run here: ``qt`` and ``ctk`` are stand-in modules whose
widget classes are plain Python classes named like Qt's, built from the .ui (properties, a
``property()`` method, signals with connect/emit). Then, with Slicer's own code:

1. ``@parameterNodeWrapper`` wraps ``ChiSeparationLib.parameters.ChiSeparationParameterNode`` on a
   real ``vtkMRMLScriptedModuleNode``;
2. ``connectGui`` binds every widget of the .ui (Slicer creates every connector before connecting
   any: one refused binding and nothing is bound);
3. a user's choice in each node selector / line edit / spin box reaches the parameter node;
4. each combo box (a ``Choice``) lists the choices and a user's pick reaches the parameter node;
5. deliberately wrong pairs go to Slicer's ``createGuiConnector`` and must be refused.

Prints one JSON object.
"""
import importlib.util
import json
import pathlib
import sys
import types


class Signal:
    def __init__(self):
        self.slots = []

    def connect(self, slot):
        self.slots.append(slot)

    def disconnect(self, slot):
        self.slots.remove(slot)

    def emit(self, *args):
        # PythonQt passes a slot only as many signal arguments as it takes
        import inspect
        for s in list(self.slots):
            n = len(inspect.signature(s).parameters)
            s(*args[:n])


SIGNALS = ("currentNodeChanged", "valueChanged", "textChanged", "currentPathChanged", "stateChanged",
           "toggled", "currentIndexChanged", "directoryChanged", "valuesChanged", "colorChanged")


class StandInWidget:
    """A Qt widget stand-in: .ui properties as attributes, dynamic properties via property()."""

    def __init__(self, name="", properties=None):
        props = dict(properties or {})
        self._dynamic = {"SlicerParameterName": props.pop("SlicerParameterName", None)}
        self.objectName = name
        self._current = None
        self.nodeTypes = []
        self.minimum = float("-inf")
        self.maximum = float("inf")
        self._value = 0.0
        self.text = ""
        self.currentPath = ""
        self.checkable = False
        self.checked = False
        for s in SIGNALS:
            setattr(self, s, Signal())
        for k, v in props.items():
            if k == "value":
                self._value = v
            else:
                setattr(self, k, v)

    # QDoubleSpinBox / ctkSliderWidget clamp the value into their range, as Qt does
    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, v):
        self._value = min(max(float(v), self.minimum), self.maximum)

    def setRange(self, lo, hi):
        self.minimum, self.maximum = lo, hi

    def setMinimum(self, lo):
        self.minimum = lo

    def setMaximum(self, hi):
        self.maximum = hi

    def property(self, name):
        return self._dynamic.get(name)

    def setProperty(self, name, value):
        self._dynamic[name] = value

    # QComboBox: items as text, currentIndex -1 when empty (Qt selects the first item added)
    def clear(self):
        self._items = []
        self.currentIndex = -1

    def addItem(self, text, data=None):
        self._items = getattr(self, "_items", []) + [str(text)]
        if getattr(self, "currentIndex", -1) < 0:
            self.currentIndex = 0

    def count(self):
        return len(getattr(self, "_items", []))

    def text_at_current(self):
        items = getattr(self, "_items", [])
        return items[self.currentIndex] if 0 <= getattr(self, "currentIndex", -1) < len(items) else ""

    # qMRMLNodeComboBox
    def setCurrentNode(self, node):
        self._current = node

    def currentNode(self):
        return self._current

    def findChildren(self, *args):
        return []

    def parent(self):
        return None


class _StandInModule(types.ModuleType):
    """``qt`` / ``ctk``: any class name gives one stand-in class (the same object every time)."""

    def __init__(self, name):
        super().__init__(name)
        self._classes = {}

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in self._classes:
            self._classes[name] = type(name, (StandInWidget,), {"__module__": self.__name__})
        return self._classes[name]


def install_qt_standins(slicer):
    qt, ctk = _StandInModule("qt"), _StandInModule("ctk")
    sys.modules["qt"], sys.modules["ctk"] = qt, ctk
    for name in ("qMRMLNodeComboBox", "qMRMLSliderWidget", "qMRMLSpinBox", "qMRMLRangeWidget",
                 "qMRMLSubjectHierarchyTreeView", "qSlicerWidget", "qMRMLWidget"):
        if not hasattr(slicer, name):
            setattr(slicer, name, type(name, (StandInWidget,), {"__module__": "slicer"}))
    return qt, ctk


def widget_class(qt, ctk, slicer, class_name):
    if class_name.startswith("ctk"):
        return getattr(ctk, class_name)
    if class_name.startswith("qMRML") or class_name.startswith("qSlicer"):
        if not hasattr(slicer, class_name):
            setattr(slicer, class_name, type(class_name, (StandInWidget,), {"__module__": "slicer"}))
        return getattr(slicer, class_name)
    return getattr(qt, class_name)


def load_pnw(pnw_dir):
    spec = importlib.util.spec_from_file_location(
        "slicer.parameterNodeWrapper", str(pathlib.Path(pnw_dir) / "__init__.py"),
        submodule_search_locations=[str(pnw_dir)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["slicer.parameterNodeWrapper"] = mod
    spec.loader.exec_module(mod)
    import slicer
    slicer.parameterNodeWrapper = mod
    return mod


def main(pnw_dir, ui_path, module_dir):
    import slicer
    import slicer.util  # noqa: F401  (NodeModify, used by the wrapper)
    qt, ctk = install_qt_standins(slicer)
    slicer.mrmlScene = slicer.vtkMRMLScene()
    scene = slicer.mrmlScene
    pnw = load_pnw(pnw_dir)
    sys.path.insert(0, str(module_dir))
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    from slicer_connectors import ui_widgets  # noqa: E402
    from ChiSeparationLib import parameters  # noqa: E402  (decorated by Slicer's real wrapper)

    result = {"bound": {}, "nodeTypes": {}, "ranges": {}, "listed": {}, "written": {}, "refused": {},
              "items": {}, "shown": {}}
    ui = types.SimpleNamespace()
    for name, w in ui_widgets(ui_path).items():
        cls = widget_class(qt, ctk, slicer, w["class"])
        setattr(ui, name, cls(name, w["properties"]))

    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "ChiSeparation")
    p = parameters.ChiSeparationParameterNode(node)
    tag = p.connectGui(ui)   # raises if any binding is refused
    for name, w in vars(ui).items():
        pname = w.property("SlicerParameterName")
        if not pname:
            continue
        result["bound"][pname] = type(w).__name__
        if type(w).__name__ == "qMRMLNodeComboBox":
            result["nodeTypes"][pname] = list(w.nodeTypes)
        if hasattr(w, "minimum") and type(w).__name__ in ("QDoubleSpinBox", "ctkSliderWidget"):
            result["ranges"][pname] = [w.minimum, w.maximum]

    # which of these nodes would each selector list (showChildNodeTypes=false: exact classes)
    sample = {c: scene.AddNewNodeByClass(c, f"a {c}") for c in (
        "vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode",
        "vtkMRMLSequenceNode")}
    for name, w in vars(ui).items():
        pname = w.property("SlicerParameterName")
        if type(w).__name__ != "qMRMLNodeComboBox" or not pname:
            continue
        show_children = getattr(w, "showChildNodeTypes", True)
        listed = [c for c, n in sample.items()
                  if any(n.GetClassName() == t or (show_children and n.IsA(t)) for t in w.nodeTypes)]
        result["listed"][pname] = listed
        # the user picks the first listed node: it must reach the parameter node
        if listed:
            w.setCurrentNode(sample[listed[-1]])
            w.currentNodeChanged.emit(sample[listed[-1]])
            got = getattr(p, pname)
            result["written"][pname] = got.GetClassName() if got is not None else None
    ui.echoTimesLineEdit.text = "0.005 0.011"
    ui.echoTimesLineEdit.textChanged.emit("0.005 0.011")
    ui.weightsPathLineEdit.currentPath = "/data/w.safetensors"
    ui.weightsPathLineEdit.currentPathChanged.emit("/data/w.safetensors")
    ui.fieldStrengthSpinBox.value = 7.0
    ui.fieldStrengthSpinBox.valueChanged.emit(7.0)
    ui.overlayOpacitySlider.value = 0.25
    ui.overlayOpacitySlider.valueChanged.emit(0.25)
    result["written"].update(echoTimes=p.echoTimes, weightsPath=str(p.weightsPath),
                             weightsPathType=type(p.weightsPath).__name__,
                             fieldStrength=p.fieldStrength, overlayOpacity=p.overlayOpacity)
    # combo boxes (Choice): the items Slicer's connector lists; the user's pick reaches the node
    for name, w in vars(ui).items():
        pname = w.property("SlicerParameterName")
        if type(w).__name__ != "QComboBox" or not pname:
            continue
        result["items"][pname] = list(w._items)
        result["shown"][pname] = w.text_at_current()         # the node's default, shown
        w.currentIndex = w.count() - 1
        w.currentIndexChanged.emit(w.currentIndex)
        result["written"][pname] = getattr(p, pname)
    # parameter node -> widgets
    p.fieldStrength = 0.0
    result["written"]["fieldStrengthWidgetAfterClear"] = ui.fieldStrengthSpinBox.value
    p.disconnectGui(tag)
    result["defaultWeightsPath"] = str(parameters.ChiSeparationParameterNode(
        scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "fresh")).weightsPath)

    # deliberately wrong pairs: Slicer's own createGuiConnector must refuse each
    wrong = {
        "weightsPath: str on ctkPathLineEdit": (ctk.ctkPathLineEdit("w"), str),
        "overlayOpacity: float (unbounded) on ctkSliderWidget": (ctk.ctkSliderWidget("s"), float),
        "fieldStrength: str on QDoubleSpinBox": (qt.QDoubleSpinBox("d"), str),
        "mask: float on qMRMLNodeComboBox": (slicer.qMRMLNodeComboBox("c"), float),
        "echoTimes: str on a QLineEdit subclass": (type("MyLineEdit", (qt.QLineEdit,), {})("l"), str),
    }
    for label, (widget, tp) in wrong.items():
        try:
            pnw.createGuiConnector(widget, tp)
            result["refused"][label] = None
        except RuntimeError as exc:
            result["refused"][label] = str(exc).split(". To determine")[0]

    # the same wrong class as a whole: connectGui must raise before binding anything
    @pnw.parameterNodeWrapper
    class WrongParameterNode:
        weightsPath: str = ""
        overlayOpacity: float = 0.6
    wui = types.SimpleNamespace(
        weightsPathLineEdit=ctk.ctkPathLineEdit("w", {"SlicerParameterName": "weightsPath"}),
        overlayOpacitySlider=ctk.ctkSliderWidget("s", {"SlicerParameterName": "overlayOpacity"}))
    try:
        WrongParameterNode(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "wrong")).connectGui(wui)
        result["wrongConnectGui"] = None
    except RuntimeError as exc:
        result["wrongConnectGui"] = str(exc).split(". To determine")[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:4])
