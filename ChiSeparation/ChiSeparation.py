"""χ-Separation: paramagnetic and diamagnetic susceptibility maps in 3D Slicer.

A thin scripted module: the module description, the panel (Resources/UI/ChiSeparation.ui, bound to
the parameter node of ChiSeparationLib.parameters) and a self-test. Everything else (reading the
data's echo times and field strength, the background ``chisep run``, output nodes, overlays, lesion
table, sample data, what to install) is in ChiSeparationLib, which has no Qt and is tested on a real
MRML scene; the science is the ``chisep`` package beside this file.
"""
import logging
import os

import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from chisep import options as O
from ChiSeparationLib import dependencies, mrml, runner
from ChiSeparationLib.logic import ChiSeparationError
from ChiSeparationLib.logic import ChiSeparationLogic as _Logic
from ChiSeparationLib.parameters import ChiSeparationParameterNode

# (label, value) of the combo boxes filled here, from the options contract (chisep.options)
METHODS = O.labels(O.RunOptions, "method")
DEVICES = O.labels(O.RunOptions, "device")
FIELD_UNITS = O.labels(O.AcquisitionOptions, "field_unit")
#: Advanced combo box -> (options class, option): its tooltip is the option's help text (the
#: parameter node's Choice annotations fill the items)
ADVANCED = {"bgMethodComboBox": (O.PreprocessOptions, "bg_method"), "unwrapComboBox": (O.PreprocessOptions, "unwrap"),
            "phaseSignComboBox": (O.AcquisitionOptions, "phase_sign"), "precisionComboBox": (O.RunOptions, "precision")}
ISSUES_URL = "https://github.com/chiseparation/SlicerChiSeparation/issues"


#
# Module
#

class ChiSeparation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "χ-Separation"
        self.parent.categories = ["Quantification"]
        self.parent.dependencies = []
        self.parent.contributors = ["ChiSeparation contributors"]
        self.parent.helpText = f"""
Separates brain magnetic susceptibility into a paramagnetic map (χpara, mostly iron) and a
diamagnetic map (|χdia|, mostly myelin) from multi-echo GRE (optionally with multi-echo SE or an R2
map), or from already-processed maps (local field, R2*, R2′, mask), with χ-sepnet or the
conventional regularized χ-separation. Outputs are in ppm (|χdia| as a positive magnitude) and R2′
in Hz, overlaid on the GRE magnitude. Not for clinical use.
See the <a href="https://github.com/chiseparation/SlicerChiSeparation">project page</a>;
report problems at <a href="{ISSUES_URL}">{ISSUES_URL}</a>.
"""
        self.parent.acknowledgementText = """
χ-sepnet: Kim M. et al., Human Brain Mapping 2025. χ-separation: Shin H.-G. et al., NeuroImage 2021.
The built-in network weights are the project's own, trained on simulated heads (see MODEL_CARD.md).
"""
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """The simulated sample head in the Sample Data module (built from a file shipped with the
    module; nothing is downloaded)."""
    import SampleData
    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")

    def load(source=None):
        logic = ChiSeparationLogic()
        return logic.loadSampleData(logic.getParameterNode())

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="χ-Separation", sampleName="ChiSeparationSampleHead",
        thumbnailFileName=os.path.join(iconsPath, "ChiSeparation.png"),
        uris=[], fileNames=[], nodeNames=[], customDownloader=load)


#
# Logic: the Slicer application's side of ChiSeparationLib.logic
#

class ChiSeparationLogic(ScriptedLoadableModuleLogic):
    """The module's parameter node plus ChiSeparationLib.logic on the application's scene (every
    other attribute is the Lib logic's)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        sequences = getattr(slicer.modules, "sequences", None)
        database = getattr(slicer, "dicomDatabase", None)
        self.lib = _Logic(slicer.mrmlScene, temporary_dir=slicer.app.temporaryPath,
                          sequences_logic=sequences.logic() if sequences is not None else None,
                          python=runner.python_executable(),
                          file_for_instance=database.fileForInstance if database is not None else None)

    def __getattr__(self, name):
        lib = self.__dict__.get("lib")
        if lib is None:
            raise AttributeError(name)
        return getattr(lib, name)

    def getParameterNode(self):
        return ChiSeparationParameterNode(super().getParameterNode())

    def loadSampleData(self, p=None):
        sample = self.load_sample_data(p)
        first = self.display_volume(sample["gre_mag"])
        if first is not None:
            slicer.util.setSliceViewerLayers(background=first, fit=True)
        return sample

    def installRequirements(self, p, askConfirmation=True):
        """Install what the chosen method needs (asks first): pip packages, torch through the
        PyTorch extension. Returns False when the user declined or torch is unavailable."""
        missing = self.missing_requirements(p)
        if not missing:
            return True
        names = ", ".join(req or "PyTorch (PyTorch extension)" for _, req in missing)
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                f"χ-Separation needs {names} for this choice. Install now? (once; needs internet)"):
            return False
        for name, req in missing:
            if req is None:
                try:
                    import PyTorchUtils
                except ImportError:
                    raise ChiSeparationError("χ-sepnet needs the PyTorch extension: install 'PyTorch' from the "
                                             "Extensions Manager and restart Slicer, or choose the regularized method")
                if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                    return False
            elif dependencies.pip_requirement_is_allowed(req):
                slicer.util.pip_install(req)
        import importlib
        importlib.invalidate_caches()
        return not self.missing_requirements(p)


#
# Widget
#

class ChiSeparationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._metadataRead = {}   # selector -> ID of the node whose echo times were last read
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.connect("timeout()", self.onTimer)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ChiSeparation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ChiSeparationLogic()
        for combo, items in ((self.ui.methodComboBox, METHODS), (self.ui.deviceComboBox, DEVICES),
                             (self.ui.fieldUnitComboBox, FIELD_UNITS)):
            combo.clear()
            for label, value in items:
                combo.addItem(label, value)
        for name, (cls, option) in ADVANCED.items():
            getattr(self.ui, name).toolTip = O.get_field(cls, option).metadata["help"]
        self.ui.overlayMapComboBox.clear()
        for key, spec in mrml.OUTPUT_MAPS.items():
            self.ui.overlayMapComboBox.addItem(spec.title, key)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.rawInputsRadioButton.connect("toggled(bool)", self.onInputModeChanged)
        self.ui.greMagnitudeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onGreMagnitudeChanged)
        self.ui.seMagnitudeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSeMagnitudeChanged)
        for combo, attr in ((self.ui.methodComboBox, "method"), (self.ui.deviceComboBox, "device"),
                            (self.ui.fieldUnitComboBox, "fieldUnit")):
            combo.connect("currentIndexChanged(int)", lambda i, c=combo, a=attr: self.onComboChanged(c, a))
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.loadSampleDataButton.connect("clicked(bool)", self.onLoadSampleData)
        self.ui.overlayMapComboBox.connect("currentIndexChanged(int)", self.onOverlayChanged)
        self.ui.overlayOpacitySlider.connect("valueChanged(double)", self.onOverlayChanged)
        self.ui.computeLesionsButton.connect("clicked(bool)", self.onComputeLesions)
        self.ui.progressBar.setValue(0)
        self.ui.statusLabel.text = "Ready."
        self.initializeParameterNode()

    def cleanup(self):
        self.timer.stop()
        if self.logic is not None:
            self.logic.cancel()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode and self._parameterNodeGuiTag:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event):
        self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, node):
        if self._parameterNode and self._parameterNodeGuiTag:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode.parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
        self._parameterNode = node
        if node is not None:
            # the stored echo times / field strength belong to the stored nodes: binding the widgets
            # (which re-selects those nodes) must not re-read or clear what the user typed
            self._metadataRead = {k: (n.GetID() if n is not None else None) for k, n in (
                ("gre", node.greMagnitude), ("se", node.seMagnitude))}
            # widgets carrying a SlicerParameterName property in the .ui are bound automatically
            self._parameterNodeGuiTag = node.connectGui(self.ui)
            self.addObserver(node.parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
            for combo, value in ((self.ui.methodComboBox, node.method), (self.ui.deviceComboBox, node.device),
                                 (self.ui.fieldUnitComboBox, node.fieldUnit)):
                i = combo.findData(value)
                if i >= 0:
                    combo.currentIndex = i
            self.ui.rawInputsRadioButton.checked = node.inputMode == "raw"
            self.ui.processedInputsRadioButton.checked = node.inputMode != "raw"
        self.updateGui()

    def onComboChanged(self, combo, attr):
        if self._parameterNode is not None and combo.currentData is not None:
            setattr(self._parameterNode, attr, combo.currentData)
        self.updateGui()

    def onInputModeChanged(self, raw):
        if self._parameterNode is not None:
            self._parameterNode.inputMode = "raw" if raw else "processed"
        self.updateGui()

    def _isNewSelection(self, key, node):
        nodeID = node.GetID() if node is not None else None
        if self._metadataRead.get(key, "") == nodeID:
            return False
        self._metadataRead[key] = nodeID
        return True

    def onGreMagnitudeChanged(self, node):
        if self._parameterNode is None or not self._isNewSelection("gre", node):
            return
        try:
            md = self.logic.apply_gre_metadata(self._parameterNode, node)
        except ChiSeparationError as exc:
            self.ui.statusLabel.text = str(exc)
            return
        b0dir = md["b0_direction"]
        self.ui.b0DirectionLineEdit.placeholderText = (
            "from the data: " + " ".join(f"{x:.4f}" for x in b0dir) if b0dir is not None
            else "from the volume geometry")
        missing = [w for w, v in (("echo times", md["echo_times"]), ("field strength", md["field_strength"])) if not v]
        self.ui.statusLabel.text = ("Required, not in the data: " + ", ".join(missing)) if missing else "Ready."

    def onSeMagnitudeChanged(self, node):
        if self._parameterNode is not None and self._isNewSelection("se", node):
            try:
                self.logic.apply_se_metadata(self._parameterNode, node)
            except ChiSeparationError as exc:
                self.ui.statusLabel.text = str(exc)

    def updateGui(self, *args):
        p = self._parameterNode
        raw = p is None or p.inputMode == "raw"
        self.ui.rawInputsGroupBox.visible = raw
        self.ui.processedInputsGroupBox.visible = not raw
        running = self.logic is not None and self.logic.is_running()
        problem = None
        if p is None:
            problem = "no parameter node"
        else:
            try:
                self.logic.validate(p)
            except ChiSeparationError as exc:
                problem = str(exc)
        self.ui.applyButton.enabled = problem is None and not running
        self.ui.applyButton.toolTip = "Run χ-separation" if problem is None else problem
        self.ui.cancelButton.enabled = running
        self.ui.loadSampleDataButton.enabled = not running
        haveOutputs = p is not None and bool(self.logic.output_nodes(p))
        self.ui.computeLesionsButton.enabled = haveOutputs and p.lesionLabels is not None

    # ------------------------------------------------------------------ run
    def onApplyButton(self):
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("χ-separation could not start.", waitCursor=True):
            problem = self.logic.device_problem(p.device)
            if problem is not None:
                if not slicer.util.confirmOkCancelDisplay(problem[0].upper() + problem[1:]):
                    return
                p.device = "cpu"
                self.ui.deviceComboBox.currentIndex = self.ui.deviceComboBox.findData("cpu")
            if not self.logic.installRequirements(p):
                self.ui.statusLabel.text = "Not started: the method's requirements are not installed."
                return
            self.logic.start(p)
            self.ui.progressBar.setValue(0)
            self.ui.statusLabel.text = "Starting…"
            self.timer.start()
        self.updateGui()

    def onTimer(self):
        try:
            _events, state = self.logic.poll()
        except Exception as exc:  # noqa: BLE001 - loading the results failed
            self.timer.stop()
            slicer.util.errorDisplay(f"Could not load the results: {exc}")
            self.updateGui()
            return
        r = self.logic.runner
        if r is not None:
            self.ui.progressBar.setValue(int(round(100 * r.progress)))
            if r.message:
                self.ui.statusLabel.text = r.message
        if state == runner.RUNNING:
            return
        self.timer.stop()
        if state == runner.SUCCEEDED:
            self.showOverlay()
            self.ui.statusLabel.text = f"Done in {r.elapsed_s:.0f} s."
        elif state == runner.FAILED:
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay("χ-separation failed:\n\n" + r.error +
                                     f"\n\nIf this looks like a bug, please report it at {ISSUES_URL}")
        self.updateGui()

    def onCancelButton(self):
        self.logic.cancel()
        self.timer.stop()
        self.ui.progressBar.setValue(0)
        self.ui.statusLabel.text = "Cancelled."
        self.updateGui()

    # ------------------------------------------------------------------ display
    def onOverlayChanged(self, *args):
        if self._parameterNode is not None and self.logic.output_nodes(self._parameterNode):
            self.showOverlay()

    def showOverlay(self):
        key = self.ui.overlayMapComboBox.currentData or "chi_para"
        with slicer.util.tryWithErrorDisplay("Could not show the maps."):
            self.logic.show_overlay(self._parameterNode, key)
            slicer.util.resetSliceViews()

    def onLoadSampleData(self):
        with slicer.util.tryWithErrorDisplay("Could not load the sample data.", waitCursor=True):
            self.logic.loadSampleData(self._parameterNode)
            self.ui.statusLabel.text = "Sample data loaded (simulated head, 3 T)."
        self.updateGui()

    def onComputeLesions(self):
        with slicer.util.tryWithErrorDisplay("Could not compute lesion statistics.", waitCursor=True):
            table, rows = self.logic.lesion_table(self._parameterNode)
            self.ui.lesionTableView.setMRMLTableNode(table)
            self.ui.statusLabel.text = f"{len(rows)} lesions."


#
# Self-test (inside Slicer): the steps of Testing/test_slicer_lib_logic.py through the application
#

class ChiSeparationTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ChiSeparation_sample_head()

    def test_ChiSeparation_sample_head(self):
        self.delayDisplay("Loading the sample head")
        logic = ChiSeparationLogic()
        p = logic.getParameterNode()
        sample = logic.loadSampleData(p)
        self.assertEqual(len(p.echoTimes.split()), sample["head"].gre_mag.shape[3])
        self.assertAlmostEqual(p.fieldStrength, 3.0)
        p.method, p.device = "regularized", "cpu"
        self.delayDisplay("Running regularized χ-separation in the background")
        nodes = logic.run(p, timeout=600)
        self.assertEqual(set(nodes), {"chi_para", "chi_dia", "chi_total", "r2prime"})
        self.assertIsNone(logic.work_dir)      # temporary inputs removed
        bg, fg = logic.show_overlay(p, "chi_para")
        composite = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
        if composite is not None:
            self.assertEqual(composite.GetForegroundVolumeID(), fg.GetID())
        table, rows = logic.lesion_table(p)
        self.assertEqual(table.GetNumberOfRows(), len(rows))
        self.assertGreater(len(rows), 0)
        logging.info("ChiSeparation self-test: %d lesions", len(rows))
        self.delayDisplay("Test passed")
