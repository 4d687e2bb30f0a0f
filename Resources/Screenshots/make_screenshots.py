"""Make ChiSeparation-1.png: the overlays as a slice view shows them, rendered by Slicer's own code.

The module's logic loads the sample head and runs the default method (chi-sepnet-R2', built-in
weights) in its background process; Slicer's ``vtkMRMLSliceLogic`` (slicer-core wheel) then blends
the slice layers offscreen exactly as a slice view does: GRE magnitude (echo 1) as background, the
map as foreground with the module's colour table and window, at the panel's default opacity 0.6.
Left: chi_para (warm), right: |chi_dia| (cool), axial slice through the basal ganglia. The colour
bars and titles under the panels are drawn with Pillow (Slicer draws its legend with the views'
displayable managers, which need the application).

    PYTHONPATH=ChiSeparation python Resources/Screenshots/make_screenshots.py
"""
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from vtk.util import numpy_support

import slicer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "ChiSeparation"))
from ChiSeparationLib import mrml  # noqa: E402
from ChiSeparationLib.logic import ChiSeparationLogic  # noqa: E402


def blended_slice(scene, background, foreground, opacity, ras_centre, size=360):
    sn = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    sn.SetLayoutName("Red")
    sn.SetDimensions(size, size, 1)
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLScene(scene)
    logic.SetSliceNode(sn)
    mrml.apply_overlay_to_scene(scene, mrml.overlay_settings(background, foreground, opacity))
    logic.FitSliceToAll()
    sn.JumpSlice(*ras_centre[:3])
    sn.UpdateMatrices()
    alg = logic.GetImageDataConnection().GetProducer()
    alg.Update()
    out = alg.GetOutputDataObject(0)
    d = out.GetDimensions()
    img = numpy_support.vtk_to_numpy(out.GetPointData().GetScalars()).reshape(d[1], d[0], -1)
    scene.RemoveNode(sn)
    return np.flipud(img[..., :3]).astype(np.uint8)     # VTK rows run bottom-up


def colour_bar(kind, width, lo, hi, unit, title):
    bar = Image.new("RGB", (width, 46), (0, 0, 0))
    rgb = (mrml.colormap_rgb(kind, width) * 255).astype(np.uint8)
    bar.paste(Image.fromarray(np.repeat(rgb[None], 12, axis=0)), (0, 18))
    draw = ImageDraw.Draw(bar)
    draw.text((4, 2), title, fill=(255, 255, 255))
    draw.text((2, 32), f"{lo:g}", fill=(255, 255, 255))
    draw.text((width - 48, 32), f"{hi:g} {unit}", fill=(255, 255, 255))
    return bar


def main(out=HERE / "ChiSeparation-1.png"):
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "ChiSeparation")
    p = types.SimpleNamespace(inputMode="raw", greMagnitude=None, grePhase=None, echoTimes="",
                              seMagnitude=None, seEchoTimes="", r2Map=None, localField=None,
                              fieldUnit="ppm", r2starMap=None, r2primeMap=None, mask=None,
                              fieldStrength=0.0, b0Direction="", method="chisepnet-r2prime",
                              weightsPath=Path(""), device="cpu", overlayOpacity=0.6,
                              lesionLabels=None, parameterNode=node)
    with tempfile.TemporaryDirectory() as tmp:
        logic = ChiSeparationLogic(scene, temporary_dir=tmp)
        sample = logic.load_sample_data(p)
        nodes = logic.run(p, timeout=600)
    gre, _ = logic.show_overlay(p, "chi_para", 0.6)     # what Apply ends with (grey GRE proxy)
    gre.GetDisplayNode().AutoWindowLevelOff()
    arr = mrml.array_from_volume_node(gre)[0]
    gre.GetDisplayNode().SetWindowLevelMinMax(0.0, float(np.percentile(arr, 99.5)))
    head = sample["head"]
    centre = head.affine @ np.array([*(np.array(head.gre_mag.shape[:3]) / 2.0 - 0.5), 1.0])
    panels = []
    for key in ("chi_para", "chi_dia"):
        spec = mrml.OUTPUT_MAPS[key]
        img = blended_slice(scene, gre, nodes[key], 0.6, centre)
        col = Image.new("RGB", (img.shape[1], img.shape[0] + 46))
        col.paste(Image.fromarray(img), (0, 0))
        col.paste(colour_bar(spec.colormap, img.shape[1], spec.window_min, spec.window_max, spec.unit,
                             f"{key.replace('_', ' ')} over GRE magnitude (opacity 0.6)"), (0, img.shape[0]))
        panels.append(col)
    sheet = Image.new("RGB", (sum(c.width for c in panels) + 8, panels[0].height), (40, 40, 40))
    x = 0
    for c in panels:
        sheet.paste(c, (x, 0))
        x += c.width + 8
    sheet.save(out)
    print(out, sheet.size)
    return out


if __name__ == "__main__":
    main()
