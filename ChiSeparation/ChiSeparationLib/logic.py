"""The ChiSeparation module's logic on an MRML scene, without Qt or the Slicer application.

``ChiSeparationLogic(scene, temporary_dir)`` does everything the panel asks for: reads echo times,
field strength and B0 direction from the chosen data, writes the inputs for ``chisep run``, runs it
in a background process (:mod:`ChiSeparationLib.runner`), loads the maps as coloured volumes and
keeps them as node references of the parameter node (so they come back with a saved scene),
overlays them, computes the lesion table from a label map or a Segmentation on any grid, and loads
the sample head. Problems a user can fix raise :class:`ChiSeparationError` (the widget shows the
message); nothing here opens a dialog.

``p``, the parameters, is the module's parameter node wrapper (``ChiSeparationLib.parameters``) or
any object with the same attributes; its MRML node (``p.parameterNode``) holds the output
references.
"""
import logging
import os
import shutil
import tempfile

import numpy as np

import slicer

from . import dependencies, mrml, runner
from .sample import load_sample_head

OUTPUT_ROLE = "ChiSeparation.output."        # + map key: node reference role of an output volume
LESION_TABLE_ROLE = "ChiSeparation.lesionTable"
#: Segment colours (RGB 0..1) of the lesion subtypes of chisep.lesions (warm: iron, cool: myelin loss).
LESION_CLASS_COLORS = {
    "iron": (0.93, 0.35, 0.13), "demyelinated": (0.20, 0.55, 0.95), "both": (0.65, 0.25, 0.80),
    "neither": (0.70, 0.70, 0.70), "other": (0.95, 0.85, 0.30), "unclassified": (1.0, 1.0, 1.0),
}


class ChiSeparationError(ValueError):
    """A choice the user has to fix; the message says what."""


def advanced_options(p) -> dict:
    """The Advanced section's choices as ``chisep run`` parameters (keys of :mod:`chisep.options`);
    parameters without the Advanced attributes get the contract's defaults."""
    from chisep import options as O

    out = {"bg_method": getattr(p, "bgMethod", None) or O.get_field(O.PreprocessOptions, "bg_method").default,
           "unwrap": getattr(p, "unwrap", None) or O.get_field(O.PreprocessOptions, "unwrap").default,
           "precision": getattr(p, "precision", None) or O.get_field(O.RunOptions, "precision").default}
    sign = getattr(p, "phaseSign", None)
    out["phase_sign"] = int(sign) if sign not in (None, "", "auto") else None
    return out


def parameter_mrml_node(p):
    """The MRML node behind parameters ``p`` (a wrapper's ``parameterNode``, or ``p`` itself)."""
    if p is None:
        return None
    if hasattr(p, "GetNodeReference"):
        return p
    return getattr(p, "parameterNode", None)


# --------------------------------------------------------------------------- metadata from the data

def dicom_values(node, file_for_instance, keywords=("MagneticFieldStrength", "EchoTime")) -> dict:
    """Header values of the first DICOM instance a node was loaded from.

    Slicer's DICOM plugins store the instance UIDs in the attribute ``DICOM.instanceUIDs``;
    ``file_for_instance`` maps a UID to its file (``slicer.dicomDatabase.fileForInstance``)."""
    uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split() if node is not None else []
    if not uids or file_for_instance is None:
        return {}
    path = file_for_instance(uids[0])
    if not path or not os.path.isfile(path):
        return {}
    import pydicom
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(keywords))
    except Exception:  # noqa: BLE001 - an unreadable header leaves the value to the user
        logging.warning("ChiSeparation: could not read the DICOM header of %s", path)
        return {}
    out = {}
    for k in keywords:
        v = getattr(ds, k, None)
        if v is not None and v != "":
            try:
                out[k] = float(v)
            except (TypeError, ValueError):
                pass
    return out


def _echo_nodes(echoes):
    """The per-echo volume nodes of a sequence / list / single volume."""
    if echoes is None:
        return []
    if isinstance(echoes, (list, tuple)):
        return list(echoes)
    if echoes.IsA("vtkMRMLSequenceNode"):
        return [echoes.GetNthDataNode(i) for i in range(echoes.GetNumberOfDataNodes())]
    return [echoes]


def input_metadata(echoes, file_for_instance=None) -> dict:
    """``{"echo_times": [s] or None, "field_strength": T or None, "b0_direction": (3,) or None}`` of
    a multi-echo input, each from the data where it carries it and None where it does not (the
    panel then clears the field and marks it required; it never keeps a previous input's values).

    Echo times: sidecar, sequence index, multivolume frame labels, node attributes, else the
    ``EchoTime`` (ms) of each echo's DICOM header. Field strength: sidecar / attributes, else the
    DICOM ``MagneticFieldStrength`` (0018,0087) of the loaded series."""
    te = mrml.echo_times_from_node(echoes)
    b0 = mrml.field_strength_from_node(echoes)
    nodes = [n for n in _echo_nodes(echoes) if n is not None]
    if file_for_instance is not None and nodes:
        if te is None:
            per = [dicom_values(n, file_for_instance, ("EchoTime",)).get("EchoTime") for n in nodes]
            if all(v is not None for v in per):
                cand = [v / 1000.0 for v in per]          # DICOM EchoTime is in ms
                single = nodes[0].GetImageData() if len(nodes) == 1 and hasattr(nodes[0], "GetImageData") else None
                one_echo = single is not None and single.GetNumberOfScalarComponents() == 1
                if len(nodes) > 1 or one_echo:   # never one header's TE for a multi-frame volume
                    te = cand if all(1e-4 <= v <= 0.5 for v in cand) else None
        if b0 is None:
            # the series: the selected node itself (a sequence or multivolume from the DICOM
            # plugins carries the instance UIDs), else its first echo
            own = [] if isinstance(echoes, (list, tuple)) else [echoes]
            for cand in own + nodes[:1]:
                v = dicom_values(cand, file_for_instance, ("MagneticFieldStrength",)).get("MagneticFieldStrength")
                if v is not None and 0.05 <= v <= 20.0:
                    b0 = v
                    break
    try:
        b0dir = mrml.b0_direction_from_node(echoes)
    except ValueError:
        b0dir = None
    return {"echo_times": te, "field_strength": b0, "b0_direction": b0dir}


def format_echo_times(te) -> str:
    return " ".join(f"{t:g}" for t in te) if te else ""


def parse_echo_times(text, what="echo times") -> list:
    try:
        te = [float(x) for x in str(text or "").replace(",", " ").split()]
    except ValueError:
        raise ChiSeparationError(f"{what} must be numbers in seconds, e.g. 0.004 0.008, got {text!r}") from None
    if any(not t > 0 for t in te):
        raise ChiSeparationError(f"{what} must be positive seconds, got {text!r}")
    return te


# --------------------------------------------------------------------------- the logic

class ChiSeparationLogic:
    """Runs the core on scene nodes and shows the results (see the module docstring)."""

    def __init__(self, scene, temporary_dir=None, sequences_logic=None, python=None,
                 module_dir=None, file_for_instance=None):
        self.scene = scene
        self.temporary_dir = temporary_dir or tempfile.gettempdir()
        self.sequences_logic = sequences_logic
        self.python = python
        self.module_dir = module_dir or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.file_for_instance = file_for_instance
        self.runner = None
        self.work_dir = None
        self.input_name = None
        self._p = None

    # ------------------------------------------------------------------ inputs
    def input_echoes(self, node):
        """What a multi-echo selector means: a sequence / multivolume as is; for a scalar volume,
        the sequence it is the proxy of, or every echo of a "<stem>_eN" series (a list)."""
        if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
            return node
        sequence = mrml.sequence_of_proxy(self.scene, node)
        if sequence is not None:
            return sequence
        echoes = mrml.echo_volumes(self.scene, node)
        return echoes if len(echoes) > 1 else node

    def metadata(self, node) -> dict:
        """:func:`input_metadata` of what the selector's node means."""
        try:
            echoes = self.input_echoes(node)
        except ValueError as exc:   # e.g. a gap in "<stem>_eN" numbers
            raise ChiSeparationError(str(exc)) from None
        return input_metadata(echoes, self.file_for_instance)

    def apply_gre_metadata(self, p, node=None) -> dict:
        """Fill echo times / field strength of ``p`` from the GRE magnitude's data, clearing (and so
        marking required) what the data does not carry. Returns the metadata."""
        md = self.metadata(p.greMagnitude if node is None else node) if (node or p.greMagnitude) else \
            {"echo_times": None, "field_strength": None, "b0_direction": None}
        p.echoTimes = format_echo_times(md["echo_times"])
        p.fieldStrength = float(md["field_strength"]) if md["field_strength"] else 0.0
        return md

    def apply_se_metadata(self, p, node=None) -> dict:
        node = p.seMagnitude if node is None else node
        md = self.metadata(node) if node is not None else {"echo_times": None}
        p.seEchoTimes = format_echo_times(md["echo_times"])
        return md

    def missing_requirements(self, p):
        return dependencies.missing(p.method, p.inputMode == "raw", p.weightsPath)

    @staticmethod
    def device_problem(device):
        """A message when a GPU (CUDA or Apple MPS) is chosen but not usable here (None when fine)."""
        if device not in ("cuda", "mps"):
            return None
        try:
            import torch
        except ImportError:
            return "the GPU was chosen but PyTorch is not installed; run on the CPU instead?"
        if device == "cuda" and not torch.cuda.is_available():
            return ("the GPU was chosen but PyTorch sees no CUDA GPU on this computer "
                    f"(torch {torch.__version__}); run on the CPU instead?")
        mps = getattr(torch.backends, "mps", None)
        if device == "mps" and not (mps is not None and mps.is_available()):
            return ("the Apple GPU (MPS) was chosen but PyTorch cannot use it on this computer "
                    f"(torch {torch.__version__}); run on the CPU instead?")
        return None

    def validate(self, p):
        """Raise ChiSeparationError naming the first missing or inconsistent choice."""
        if p.inputMode == "raw":
            if p.greMagnitude is None or p.grePhase is None:
                raise ChiSeparationError("choose the GRE magnitude and phase")
            if not parse_echo_times(p.echoTimes):
                raise ChiSeparationError("echo times are required: the GRE data does not carry them; "
                                         "type them in seconds, e.g. 0.004 0.008 0.012")
            if p.seMagnitude is not None and not parse_echo_times(p.seEchoTimes, "SE echo times"):
                raise ChiSeparationError("SE echo times are required: type them in seconds")
        else:
            if p.localField is None or p.r2starMap is None or p.mask is None:
                raise ChiSeparationError("processed maps need the local field, the R2* map and the mask")
        if not float(p.fieldStrength) > 0:
            raise ChiSeparationError("field strength is required: the data does not carry it; "
                                     "type it in tesla")
        try:
            mrml.parse_b0_direction(p.b0Direction)
        except ValueError as exc:
            raise ChiSeparationError(str(exc)) from None

    def run_parameters(self, p, work_dir):
        """Write the chosen nodes as NIfTI in ``work_dir``; the ``chisep run`` parameters."""
        self.validate(p)
        b0dir = mrml.parse_b0_direction(p.b0Direction)

        def save(node, name, te=None, multi_echo=False):
            if node is None:
                return None
            if multi_echo:
                node = self.input_echoes(node)
            sidecar = None
            if te:
                sidecar = {"EchoTime": te, "MagneticFieldStrength": float(p.fieldStrength)}
                if b0dir is not None:
                    sidecar["B0Direction"] = [float(x) for x in b0dir]
            return mrml.save_input_nifti(node, os.path.join(work_dir, name + ".nii.gz"), sidecar=sidecar)

        params = {"method": p.method, "device": p.device,
                  "weights": dependencies.weights_argument(p.weightsPath), "b0": float(p.fieldStrength)}
        params.update(advanced_options(p))
        if p.inputMode == "raw":
            te = parse_echo_times(p.echoTimes)
            ste = parse_echo_times(p.seEchoTimes, "SE echo times") if p.seMagnitude is not None else None
            params.update(gre_mag=save(p.greMagnitude, "gre_mag", te, True),
                          gre_phase=save(p.grePhase, "gre_phase", te, True), te=te,
                          se_mag=save(p.seMagnitude, "se_mag", ste, True), se_te=ste,
                          r2=save(p.r2Map, "r2"), mask=save(p.mask, "mask"))
        else:
            params.update(local_field=save(p.localField, "local_field"), field_unit=p.fieldUnit,
                          r2star=save(p.r2starMap, "r2star"), r2prime=save(p.r2primeMap, "r2prime"),
                          r2=save(p.r2Map, "r2"), mask=save(p.mask, "mask"),
                          te=p.echoTimes if p.fieldUnit == "rad" else None)
        return params

    # ------------------------------------------------------------------ running
    def is_running(self):
        return self.runner is not None and self.runner.running

    def start(self, p):
        """Write the inputs into a fresh temporary folder and start ``chisep run`` in the background."""
        if self.is_running():
            raise ChiSeparationError("a run is already going; cancel it first")
        self.cleanup()
        self.work_dir = tempfile.mkdtemp(prefix="ChiSeparation-", dir=self.temporary_dir)
        try:
            input_node = p.greMagnitude if p.inputMode == "raw" else p.localField
            self.input_name = input_node.GetName() if input_node is not None else "ChiSeparation"
            try:
                params = self.run_parameters(p, self.work_dir)
                argv = runner.chisep_command(params, python=self.python)
            except ValueError as exc:
                raise ChiSeparationError(str(exc)) from None
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join([self.module_dir] + [x for x in [env.get("PYTHONPATH")] if x])
            logging.info("ChiSeparation: %s", " ".join(argv))
            self.runner = runner.ChisepRunner(argv, os.path.join(self.work_dir, "maps"), env=env).start()
        except BaseException:
            self.cleanup()
            raise
        self._p = p
        return self.runner

    def poll(self):
        """Progress events since the last call; when the run has ended, loads the maps (success) and
        removes the temporary folder either way. Returns (events, state)."""
        if self.runner is None:
            return [], None
        events = self.runner.poll()
        state = self.runner.state
        if state != runner.RUNNING and self.work_dir is not None:
            try:
                if state == runner.SUCCEEDED:
                    self.load_results(self._p, os.path.join(self.work_dir, "maps"))
            finally:
                self.cleanup()
        return events, state

    def cancel(self):
        if self.is_running():
            self.runner.cancel()
        self.cleanup()

    def run(self, p, timeout=None):
        """Synchronous run (scripts, self-test): start, wait, load; returns the output nodes."""
        self.start(p)
        try:
            self.runner.wait(timeout=timeout)
        except BaseException:
            self.cancel()
            raise
        _, state = self.poll()
        if state != runner.SUCCEEDED:
            raise ChiSeparationError("χ-separation failed:\n" + (self.runner.error or str(state)))
        return self.output_nodes(p)

    def cleanup(self):
        """Remove the temporary folder (patient data written for the background process)."""
        if self.work_dir and os.path.isdir(self.work_dir):
            shutil.rmtree(self.work_dir, ignore_errors=True)
        self.work_dir = None

    # ------------------------------------------------------------------ outputs
    def load_results(self, p, maps_dir):
        """Load the maps of ``maps_dir`` as output volumes (replacing this parameter node's previous
        outputs) and reference them from the parameter node."""
        node = parameter_mrml_node(p)
        previous = self.output_nodes(p)
        nodes = mrml.load_outputs(self.scene, maps_dir, self.input_name or "ChiSeparation")
        for key, out in nodes.items():
            old = previous.get(key)
            if old is not None and old.GetID() != out.GetID():
                self.scene.RemoveNode(old)
            if node is not None:
                node.SetNodeReferenceID(OUTPUT_ROLE + key, out.GetID())
        return nodes

    def output_nodes(self, p) -> dict:
        """Output map key -> volume node, from the parameter node's references."""
        node = parameter_mrml_node(p)
        out = {}
        if node is None:
            return out
        for key in mrml.OUTPUT_MAPS:
            ref = node.GetNodeReference(OUTPUT_ROLE + key)
            if ref is not None:
                out[key] = ref
        return out

    def display_volume(self, node):
        """The scene volume under the maps: a sequence's proxy, the first echo, or the node."""
        return mrml.display_volume(self.scene, self.input_echoes(node), self.sequences_logic)

    def show_overlay(self, p, key="chi_para", opacity=None):
        """The output map ``key`` over the GRE magnitude (or local field) in every slice view."""
        outputs = self.output_nodes(p)
        if not outputs:
            raise ChiSeparationError("no output maps yet: run χ-separation first")
        fg = outputs.get(key) or next(iter(outputs.values()))
        under = p.greMagnitude if p.inputMode == "raw" else p.localField
        bg = self.display_volume(under) if under is not None else None
        if bg is not None:
            if bg.GetDisplayNode() is None:
                bg.CreateDefaultDisplayNodes()
            disp = bg.GetDisplayNode()
            if disp is not None and disp.GetColorNode() is None:   # e.g. a proxy on a bare scene
                grey = self.scene.GetNodeByID("vtkMRMLColorTableNodeGrey") or mrml.ensure_color_node(self.scene, "total")
                disp.SetAndObserveColorNodeID(grey.GetID())
        opacity = float(p.overlayOpacity if opacity is None else opacity)
        mrml.apply_overlay_to_scene(self.scene, mrml.overlay_settings(bg, fg, opacity))
        spec = mrml.OUTPUT_MAPS.get(fg.GetAttribute("ChiSeparation.map") or "")
        if spec is not None:
            mrml.setup_color_legend(self.scene, fg, spec.title, visible=True)
        mrml.show_only_legend_of(list(outputs.values()), fg)
        return bg, fg

    # ------------------------------------------------------------------ lesions
    def lesion_labels_on_maps_grid(self, lesion_node, reference_node):
        """(labels array on the maps' grid, segment IDs by label or None) of a label map / scalar
        volume / Segmentation node on any grid, resampled nearest-neighbour."""
        from chisep.resample import resample_labels_nearest
        ref_arr, ref_aff = mrml.array_from_volume_node(reference_node, copy=False)
        shape = ref_arr.shape[:3]
        if lesion_node.IsA("vtkMRMLSegmentationNode"):
            seg = lesion_node.GetSegmentation()
            ids = [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
            if not ids:
                raise ChiSeparationError(f"segmentation {lesion_node.GetName()!r} has no segments")
            label_node = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "ChiSeparation lesion export")
            try:
                id_array = slicer.vtkStringArray() if hasattr(slicer, "vtkStringArray") else None
                if id_array is None:
                    import vtk
                    id_array = vtk.vtkStringArray()
                for i in ids:
                    id_array.InsertNextValue(i)
                ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                    lesion_node, id_array, label_node, reference_node)
                if not ok:
                    raise ChiSeparationError(f"could not export segmentation {lesion_node.GetName()!r}")
                arr, aff = mrml.array_from_volume_node(label_node)
            finally:
                color = label_node.GetDisplayNode().GetColorNode() if label_node.GetDisplayNode() else None
                self.scene.RemoveNode(label_node)
                if color is not None and color.GetName().endswith("_ColorTable"):
                    self.scene.RemoveNode(color)
            labels = resample_labels_nearest(arr, aff, shape, ref_aff)
            return labels, {k + 1: sid for k, sid in enumerate(ids)}
        arr, aff = mrml.array_from_volume_node(lesion_node)
        if arr.ndim != 3:
            raise ChiSeparationError(f"lesion labels {lesion_node.GetName()!r} must be a single 3-D volume")
        return resample_labels_nearest(arr, aff, shape, ref_aff), None

    def lesion_table(self, p, lesion_node=None):
        """Lesion statistics of the output maps in a vtkMRMLTableNode (referenced from the parameter
        node); a Segmentation's segments are coloured by lesion class. Returns (table, rows)."""
        lesion_node = p.lesionLabels if lesion_node is None else lesion_node
        if lesion_node is None:
            raise ChiSeparationError("choose the lesion label map or segmentation")
        outputs = self.output_nodes(p)
        maps = {k: v for k, v in outputs.items() if k in ("chi_para", "chi_dia", "chi_total", "r2prime")}
        if not maps:
            raise ChiSeparationError("no output maps yet: run χ-separation first")
        ref = maps.get("chi_para") or next(iter(maps.values()))
        labels, segment_ids = self.lesion_labels_on_maps_grid(lesion_node, ref)
        if not labels.any():
            raise ChiSeparationError(f"{lesion_node.GetName()!r} has no lesion inside the maps' field of view")
        arrays, affine = {}, None
        for key, n in maps.items():
            arr, aff = mrml.array_from_volume_node(n)
            arrays[key] = arr.astype(np.float32)
            affine = aff if affine is None else affine
        rows = mrml.lesion_rows(arrays, labels, affine)
        name = f"{(self.input_name or ref.GetName().rsplit(' ', 1)[0])} lesions"
        table = mrml.lesion_table_node(self.scene, rows, name)
        node = parameter_mrml_node(p)
        if node is not None:
            node.SetNodeReferenceID(LESION_TABLE_ROLE, table.GetID())
        if segment_ids:
            seg = lesion_node.GetSegmentation()
            for r in rows:
                sid = segment_ids.get(int(r["label"]))
                color = LESION_CLASS_COLORS.get(str(r.get("subtype", "")))
                if sid is not None and color is not None and seg.GetSegment(sid) is not None:
                    seg.GetSegment(sid).SetColor(*color)
        return table, rows

    def lesion_table_node(self, p):
        node = parameter_mrml_node(p)
        return node.GetNodeReference(LESION_TABLE_ROLE) if node is not None else None

    # ------------------------------------------------------------------ sample data
    def load_sample_data(self, p=None, noise_seed=1):
        """The module's sample head (shipped, numpy only): GRE magnitude/phase and SE sequences
        indexed by echo time, the lesion label map; fills ``p`` for a run."""
        head = load_sample_head(noise_seed=noise_seed)
        mag = mrml.volumes_from_4d(self.scene, head.gre_mag, head.affine, "Sample GRE magnitude",
                                   index_values=head.te_s)
        pha = mrml.volumes_from_4d(self.scene, head.gre_phase, head.affine, "Sample GRE phase",
                                   index_values=head.te_s)
        se = mrml.volumes_from_4d(self.scene, head.se_mag, head.affine, "Sample SE magnitude",
                                  index_values=head.se_te_s)
        lesions = mrml.volume_node_from_array(self.scene, head.lesions, head.affine, "Sample lesions",
                                              class_name="vtkMRMLLabelMapVolumeNode")
        for n in (mag, pha, se):
            if hasattr(n, "IsA") and n.IsA("vtkMRMLSequenceNode"):
                n.SetAttribute("MagneticFieldStrength", f"{head.b0_t:g}")
                try:
                    mrml.browse_sequence(self.scene, n, self.sequences_logic)
                except Exception:  # noqa: BLE001 - still usable as an input without a browser
                    logging.debug("no sequence browser for %s", n.GetName())
        if p is not None:
            p.inputMode = "raw"
            p.greMagnitude, p.grePhase, p.seMagnitude = mag, pha, se
            self.apply_gre_metadata(p)
            self.apply_se_metadata(p)
            p.b0Direction = ""
            p.lesionLabels = lesions
        return {"gre_mag": mag, "gre_phase": pha, "se_mag": se, "lesions": lesions, "head": head}
