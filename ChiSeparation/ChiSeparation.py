"""χ-Separation: paramagnetic and diamagnetic susceptibility maps in 3D Slicer.

A thin scripted module: the panel (Resources/UI/ChiSeparation.ui), a parameter node keeping every
choice with the scene, and a logic that writes the inputs as NIfTI, runs ``python -m chisep run`` in a
background process (ChiSeparationLib.background) and loads the results as coloured overlays
(ChiSeparationLib.mrml). The science lives in the ``chisep`` package beside this file.
"""
import logging
import os
import shutil
import tempfile
import typing

import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

try:  # Slicer >= 5.2
    from slicer.parameterNodeWrapper import parameterNodeWrapper
except ImportError:  # pragma: no cover - older Slicer
    parameterNodeWrapper = None

from ChiSeparationLib import background, mrml

METHODS = [("χ-sepnet-R2′ (GRE + SE or R2)", "chisepnet-r2prime"),
           ("χ-sepnet-R2* (GRE only)", "chisepnet-r2star"),
           ("Regularized (conventional)", "regularized")]
DEVICES = [("Auto", "auto"), ("CPU", "cpu"), ("GPU (CUDA)", "cuda")]
FIELD_UNITS = [("Hz", "hz"), ("ppm", "ppm"), ("rad", "rad")]
#: Packages the core needs beyond what Slicer ships. Never numpy, vtk or SimpleITK: Slicer ships
#: its own builds and a PyPI copy breaks them.
PIP_REQUIREMENTS = [("nibabel", "nibabel"), ("scipy", "scipy"), ("safetensors", "safetensors")]
NEVER_PIP = {"numpy", "vtk", "simpleitk"}


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
        self.parent.helpText = """
Separates brain magnetic susceptibility into a paramagnetic map (χpara, mostly iron) and a
diamagnetic map (|χdia|, mostly myelin) from multi-echo GRE (optionally with multi-echo SE or an R2
map), or from already-processed maps (local field, R2*, R2′, mask), with χ-sepnet or the
conventional regularized χ-separation. Outputs are in ppm (|χdia| as a positive magnitude) and R2′
in Hz, overlaid on the GRE magnitude. Not for clinical use.
See the <a href="https://github.com/chiseparation/ChiSeparation">project page</a>.
"""
        self.parent.acknowledgementText = """
χ-sepnet: Kim M. et al., Human Brain Mapping 2025. χ-separation: Shin H.-G. et al., NeuroImage 2021.
The built-in network weights are the project's own, trained on simulated heads (see MODEL_CARD.md).
"""


#
# Parameter node
#

#: What a multi-echo selector accepts. The parameter node's GUI connector sets the node combo box's
#: nodeTypes from this annotation, so it must name concrete classes (the abstract vtkMRMLNode would
#: list every node of the scene); the multivolume class exists only with MultiVolumeExplorer.
MULTI_ECHO_NODE_CLASSES = tuple(getattr(slicer, c) for c in (
    "vtkMRMLSequenceNode", "vtkMRMLMultiVolumeNode", "vtkMRMLScalarVolumeNode") if hasattr(slicer, c))
#: None is part of the union: the wrapper's union serializer can store "no node" only that way.
MultiEchoNode = typing.Union[MULTI_ECHO_NODE_CLASSES + (type(None),)]

if parameterNodeWrapper is not None:
    @parameterNodeWrapper
    class ChiSeparationParameterNode:
        """Every choice of the panel, saved with the scene."""
        inputMode: str = "raw"                      # "raw" | "processed"
        greMagnitude: MultiEchoNode                 # sequence, multivolume, or a volume (one echo,
        grePhase: MultiEchoNode                     # a 4-D file's proxy, or one of "<stem>_eN")
        echoTimes: str = ""                         # seconds, "0.004 0.008 ..."
        seMagnitude: MultiEchoNode
        seEchoTimes: str = ""
        r2Map: slicer.vtkMRMLScalarVolumeNode
        localField: slicer.vtkMRMLScalarVolumeNode
        fieldUnit: str = "ppm"
        r2starMap: slicer.vtkMRMLScalarVolumeNode
        r2primeMap: slicer.vtkMRMLScalarVolumeNode
        mask: slicer.vtkMRMLScalarVolumeNode
        fieldStrength: float = 3.0                  # tesla
        b0Direction: str = ""                       # "i j k" unit vector; empty: from the data
        method: str = "chisepnet-r2prime"
        weightsPath: str = ""                       # empty: built-in weights
        device: str = "auto"
        overlayOpacity: float = 0.6
        lesionLabels: slicer.vtkMRMLScalarVolumeNode
else:  # pragma: no cover
    ChiSeparationParameterNode = None


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
        self.ui.cancelButton.enabled = False
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
        self._parameterNode = node
        if node is not None:
            # widgets carrying a SlicerParameterName property in the .ui are bound automatically
            self._parameterNodeGuiTag = node.connectGui(self.ui)
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

    def onGreMagnitudeChanged(self, node):
        try:
            echoes = self.logic.inputEchoes(node)
        except ValueError as exc:  # e.g. a gap in "<stem>_eN" echo volumes
            self.ui.statusLabel.text = str(exc)
            echoes = node
        te = mrml.echo_times_from_node(echoes)
        if te and self._parameterNode is not None:
            self._parameterNode.echoTimes = " ".join(f"{t:g}" for t in te)
        b0 = mrml.field_strength_from_node(echoes)
        if b0 and self._parameterNode is not None:
            self._parameterNode.fieldStrength = b0
        try:
            b0dir = mrml.b0_direction_from_node(echoes)
        except ValueError:
            b0dir = None
        self.ui.b0DirectionLineEdit.placeholderText = (
            "from the data: " + " ".join(f"{x:.4f}" for x in b0dir) if b0dir is not None
            else "from the volume geometry")
        self.updateGui()

    def onSeMagnitudeChanged(self, node):
        try:
            te = mrml.echo_times_from_node(self.logic.inputEchoes(node))
        except ValueError as exc:
            self.ui.statusLabel.text = str(exc)
            te = None
        if te and self._parameterNode is not None:
            self._parameterNode.seEchoTimes = " ".join(f"{t:g}" for t in te)
        self.updateGui()

    def updateGui(self):
        p = self._parameterNode
        raw = p is None or p.inputMode == "raw"
        self.ui.rawInputsGroupBox.visible = raw
        self.ui.processedInputsGroupBox.visible = not raw
        running = self.logic is not None and self.logic.isRunning()
        ready = p is not None and ((raw and p.greMagnitude and p.grePhase)
                                   or (not raw and p.localField and p.r2starMap and p.mask))
        self.ui.applyButton.enabled = bool(ready) and not running
        self.ui.applyButton.toolTip = ("Run χ-separation" if ready else
                                       "Choose the GRE magnitude and phase, or the processed maps")
        self.ui.cancelButton.enabled = running
        self.ui.loadSampleDataButton.enabled = not running

    # ------------------------------------------------------------------ run
    def onApplyButton(self):
        with slicer.util.tryWithErrorDisplay("χ-separation could not start.", waitCursor=True):
            p = self._parameterNode
            if p.method.startswith("chisepnet") and not self.logic.ensureTorch():
                self.ui.statusLabel.text = "χ-sepnet needs PyTorch: install it or choose the regularized method."
                return
            self.logic.ensurePythonPackages()
            self.logic.startRun(p)
            self.ui.progressBar.setValue(0)
            self.ui.statusLabel.text = "Starting…"
            self.timer.start()
        self.updateGui()

    def onTimer(self):
        runner = self.logic.runner
        if runner is None:
            self.timer.stop()
            return
        for _fraction, _message in runner.poll():
            pass
        self.ui.progressBar.setValue(int(round(100 * runner.progress)))
        if runner.message:
            self.ui.statusLabel.text = runner.message
        if runner.state == background.RUNNING:
            return
        self.timer.stop()
        if runner.state == background.SUCCEEDED:
            with slicer.util.tryWithErrorDisplay("Could not load the results.", waitCursor=True):
                self.logic.loadResults(self._parameterNode)
                self.showOverlay()
                self.ui.statusLabel.text = f"Done in {runner.elapsed_s:.0f} s."
        elif runner.state == background.FAILED:
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay("χ-separation failed:\n\n" + runner.error)
        self.updateGui()

    def onCancelButton(self):
        self.logic.cancel()
        self.timer.stop()
        self.ui.progressBar.setValue(0)
        self.ui.statusLabel.text = "Cancelled."
        self.updateGui()

    # ------------------------------------------------------------------ display
    def onOverlayChanged(self, *args):
        if self.logic.outputNodes:
            self.showOverlay()

    def showOverlay(self):
        key = self.ui.overlayMapComboBox.currentData or "chi_para"
        fg = self.logic.outputNodes.get(key)
        bgNode = self.logic.displayVolume(self._parameterNode.greMagnitude) if self._parameterNode else None
        self.logic.showOverlay(bgNode, fg, self.ui.overlayOpacitySlider.value)

    def onLoadSampleData(self):
        with slicer.util.tryWithErrorDisplay("Could not build the sample data.", waitCursor=True):
            self.ui.statusLabel.text = "Simulating a head…"
            slicer.app.processEvents()
            self.logic.loadSampleData(self._parameterNode)
            self.ui.statusLabel.text = "Sample data loaded (simulated head)."
        self.updateGui()

    def onComputeLesions(self):
        with slicer.util.tryWithErrorDisplay("Could not compute lesion statistics.", waitCursor=True):
            table = self.logic.lesionTable(self._parameterNode.lesionLabels)
            self.ui.lesionTableView.setMRMLTableNode(table)
            self.ui.statusLabel.text = f"{table.GetNumberOfRows()} lesions."


#
# Logic
#

class ChiSeparationLogic(ScriptedLoadableModuleLogic):
    """Runs the core in a background process and shows the results; usable without the GUI."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.runner = None
        self.workDir = None
        self.inputName = None
        self.outputNodes = {}

    def getParameterNode(self):
        return ChiSeparationParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------ dependencies
    def ensureTorch(self, askConfirmation=True):
        """torch through the PyTorch extension's utilities (asks first); True when importable."""
        try:
            import torch  # noqa: F401
            return True
        except ImportError:
            pass
        try:
            import PyTorchUtils
        except ImportError:
            slicer.util.errorDisplay("χ-sepnet needs the PyTorch extension: install 'PyTorch' from "
                                     "the Extensions Manager and restart Slicer.")
            return False
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=askConfirmation)
        return torch is not None

    def ensurePythonPackages(self):
        for module, requirement in PIP_REQUIREMENTS:
            if requirement.lower() in NEVER_PIP:
                continue
            try:
                __import__(module)
            except ImportError:
                slicer.util.pip_install(requirement)

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def inputEchoes(node):
        """What a multi-echo selector means: a sequence/multivolume as is, or, for a scalar volume
        named like "<stem>_e2" / "<stem> echo 2", every echo volume of that series (a list)."""
        if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
            return node
        sequence = mrml.sequence_of_proxy(slicer.mrmlScene, node)  # a 4-D file shows as its proxy
        if sequence is not None:
            return sequence
        echoes = mrml.echo_volumes(slicer.mrmlScene, node)
        return echoes if len(echoes) > 1 else node

    def runParameters(self, p, workDir):
        """Write the chosen nodes as NIfTI in ``workDir`` and return the ``chisep run`` parameters."""
        b0dir = mrml.parse_b0_direction(p.b0Direction)  # ValueError shown plainly by the widget

        def save(node, name, te=None, multiEcho=False):
            if node is None:
                return None
            if multiEcho:
                node = self.inputEchoes(node)
            sidecar = {"EchoTime": te} if te else None
            if sidecar is not None:
                sidecar["MagneticFieldStrength"] = float(p.fieldStrength)
                if b0dir is not None:
                    sidecar["B0Direction"] = [float(x) for x in b0dir]
            return mrml.save_input_nifti(node, os.path.join(workDir, name + ".nii.gz"), sidecar=sidecar)

        params = {"method": p.method, "device": p.device, "weights": p.weightsPath or None,
                  "b0": p.fieldStrength}
        if p.inputMode == "raw":
            te = [float(x) for x in p.echoTimes.replace(",", " ").split()] or None
            ste = [float(x) for x in p.seEchoTimes.replace(",", " ").split()] or None
            params.update(gre_mag=save(p.greMagnitude, "gre_mag", te, True),
                          gre_phase=save(p.grePhase, "gre_phase", te, True), te=te,
                          se_mag=save(p.seMagnitude, "se_mag", ste, True),
                          se_te=ste if p.seMagnitude else None,
                          r2=save(p.r2Map, "r2"), mask=save(p.mask, "mask"))
        else:
            params.update(local_field=save(p.localField, "local_field"), field_unit=p.fieldUnit,
                          r2star=save(p.r2starMap, "r2star"), r2prime=save(p.r2primeMap, "r2prime"),
                          r2=save(p.r2Map, "r2"), mask=save(p.mask, "mask"),
                          te=p.echoTimes if p.fieldUnit == "rad" else None)
        return params

    def startRun(self, p):
        if self.isRunning():
            raise RuntimeError("a run is already going; cancel it first")
        self.cleanupWorkDir()
        self.workDir = tempfile.mkdtemp(prefix="ChiSeparation-", dir=slicer.app.temporaryPath)
        inputNode = p.greMagnitude if p.inputMode == "raw" else p.localField
        self.inputName = inputNode.GetName()
        argv = background.chisep_command(self.runParameters(p, self.workDir))
        env = dict(os.environ)
        moduleDir = os.path.dirname(os.path.abspath(__file__))  # chisep is packaged beside this file
        env["PYTHONPATH"] = os.pathsep.join([moduleDir] + [x for x in [env.get("PYTHONPATH")] if x])
        logging.info("ChiSeparation: %s", " ".join(argv))
        self.runner = background.ChisepRunner(argv, os.path.join(self.workDir, "maps"), env=env).start()
        return self.runner

    def isRunning(self):
        return self.runner is not None and self.runner.running

    def cancel(self):
        if self.isRunning():
            self.runner.cancel()

    def run(self, p, timeout=None):
        """Synchronous run (scripts and the self-test): start, wait, load; returns the output nodes."""
        self.startRun(p)
        state = self.runner.wait(timeout=timeout)
        if state != background.SUCCEEDED:
            raise RuntimeError(self.runner.error or state)
        return self.loadResults(p)

    def loadResults(self, p=None):
        self.outputNodes = mrml.load_outputs(slicer.mrmlScene, os.path.join(self.workDir, "maps"),
                                             self.inputName)
        return self.outputNodes

    @staticmethod
    def sequencesLogic():
        sequences = getattr(slicer.modules, "sequences", None)
        return sequences.logic() if sequences is not None else None

    def displayVolume(self, node):
        """The scene volume under the maps: a sequence's proxy, the first echo volume, or the node."""
        return mrml.display_volume(slicer.mrmlScene, self.inputEchoes(node), self.sequencesLogic())

    def showOverlay(self, backgroundNode, foregroundNode, opacity=0.6):
        """The chosen map as a coloured foreground over the GRE magnitude, with its colour legend."""
        settings = mrml.overlay_settings(backgroundNode, foregroundNode, opacity)
        mrml.apply_overlay_to_scene(slicer.mrmlScene, settings)
        if foregroundNode is not None:
            spec = mrml.OUTPUT_MAPS.get(foregroundNode.GetAttribute("ChiSeparation.map") or "")
            if spec is not None:
                mrml.setup_color_legend(slicer.mrmlScene, foregroundNode, spec.title, visible=True)
        mrml.show_only_legend_of(list(self.outputNodes.values()), foregroundNode)
        slicer.util.resetSliceViews()

    def lesionTable(self, labelsNode):
        if labelsNode is None:
            raise ValueError("choose a lesion label map")
        if not self.outputNodes:
            raise ValueError("run χ-separation first")
        maps = {k: v for k, v in self.outputNodes.items() if k in ("chi_para", "chi_dia", "chi_total", "r2prime")}
        table, _rows = mrml.lesion_table_from_nodes(slicer.mrmlScene, maps, labelsNode,
                                                    name=f"{self.inputName} lesions")
        return table

    def loadSampleData(self, p=None, size="small", seed=1):
        """A simulated head (the core's simulator): GRE/SE sequences with echo times, lesion labels."""
        from chisep.simulate import simulate_head
        head = simulate_head(seed=seed, size=size)
        te = [float(t) for t in head.te_s]
        mag = mrml.volumes_from_4d(slicer.mrmlScene, head.gre_mag, head.affine, "Sample GRE magnitude",
                                   index_values=te)
        pha = mrml.volumes_from_4d(slicer.mrmlScene, head.gre_phase, head.affine, "Sample GRE phase",
                                   index_values=te)
        se = None
        if head.se_mag is not None:
            se = mrml.volumes_from_4d(slicer.mrmlScene, head.se_mag, head.affine, "Sample SE magnitude",
                                      index_values=[float(t) for t in head.se_te_s])
        lesions = None
        if "lesions" in head.truth:
            lesions = mrml.volume_node_from_array(slicer.mrmlScene, head.truth["lesions"].astype("int16"),
                                                  head.affine, "Sample lesions",
                                                  class_name="vtkMRMLLabelMapVolumeNode")
        for n in (mag, pha, se):
            if n is not None and n.IsA("vtkMRMLSequenceNode"):
                n.SetAttribute("MagneticFieldStrength", f"{head.b0_t:g}")
                self._browse(n)
        if p is not None:
            p.inputMode = "raw"
            p.greMagnitude, p.grePhase, p.seMagnitude = mag, pha, se
            p.echoTimes = " ".join(f"{t:g}" for t in te)
            p.seEchoTimes = " ".join(f"{t:g}" for t in head.se_te_s) if se is not None else ""
            p.fieldStrength = float(head.b0_t)
            p.b0Direction = ""
            p.lesionLabels = lesions
        first = self.displayVolume(mag)
        if first is not None and first.GetScene() is not None:
            slicer.util.setSliceViewerLayers(background=first, fit=True)
        return {"gre_mag": mag, "gre_phase": pha, "se_mag": se, "lesions": lesions, "head": head}

    def _browse(self, sequenceNode):
        """A sequence browser and proxy volume so the sequence shows in the views."""
        try:
            mrml.browse_sequence(slicer.mrmlScene, sequenceNode, self.sequencesLogic())
        except Exception:  # noqa: BLE001 - the sequence stays usable as an input without a browser
            logging.debug("no sequence browser for %s", sequenceNode.GetName())

    def cleanupWorkDir(self):
        if self.workDir and os.path.isdir(self.workDir):
            shutil.rmtree(self.workDir, ignore_errors=True)
        self.workDir = None


#
# Self-test (inside Slicer)
#

class ChiSeparationTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ChiSeparation_simulated_head()

    def test_ChiSeparation_simulated_head(self):
        self.delayDisplay("Simulating a small head")
        logic = ChiSeparationLogic()
        p = logic.getParameterNode()
        sample = logic.loadSampleData(p)
        self.assertIsNotNone(p.greMagnitude)
        self.assertEqual(len(p.echoTimes.split()), sample["head"].gre_mag.shape[3])
        p.method = "regularized"
        p.device = "cpu"
        self.delayDisplay("Running regularized χ-separation in the background")
        nodes = logic.run(p, timeout=600)
        self.assertEqual(set(nodes), {"chi_para", "chi_dia", "chi_total", "r2prime"})
        self.assertEqual(nodes["chi_para"].GetDisplayNode().GetColorNode().GetName(), mrml.COLOR_NODE_NAMES["para"])
        count = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
        logic.run(p, timeout=600)  # re-run replaces
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"), count)
        greVolume = logic.displayVolume(p.greMagnitude)
        self.assertIs(greVolume.GetScene(), slicer.mrmlScene)
        logic.showOverlay(greVolume, nodes["chi_para"], 0.6)
        composite = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
        if composite is not None:  # none when Slicer runs without a main window
            self.assertEqual(composite.GetBackgroundVolumeID(), greVolume.GetID())
            self.assertEqual(composite.GetForegroundVolumeID(), nodes["chi_para"].GetID())
        self.assertTrue(mrml.color_legend(nodes["chi_para"]).GetVisibility())
        if sample["lesions"] is not None:
            table = logic.lesionTable(sample["lesions"])
            self.assertGreater(table.GetNumberOfRows(), 0)
        logic.cleanupWorkDir()
        self.delayDisplay("Test passed")
