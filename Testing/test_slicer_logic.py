"""MRML-facing logic of the Slicer module on a REAL MRML scene (the slicer-core wheel), no Qt.

Covers ChiSeparation/ChiSeparationLib/mrml.py and runner.py: arrays <-> volume nodes (oblique,
anisotropic), sequences, output nodes with colour tables and window/level, re-runs replacing nodes,
the colour a user sees in a slice view (vtkMRMLSliceLogic blends offscreen here), lesion tables, the
chisep command line and the background runner (progress, failure, cancel), and one real run.
Also: parent transforms, multivolumes, sequence browsers/proxies, echo times / field strength / B0
direction read from the data, one-volume-per-echo series, colour legends. The module's logic
(ChiSeparationLib.logic) is tested in test_slicer_lib_logic.py.
"""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("slicer-core wheel without MRML", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ChiSeparation"))
from ChiSeparationLib import runner as bgr  # noqa: E402
from ChiSeparationLib import mrml  # noqa: E402
from vtk.util import numpy_support  # noqa: E402


def rot(axis, deg):
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def oblique_affine():
    a = np.eye(4)
    a[:3, :3] = rot(0, 17.0) @ rot(1, -11.0) @ rot(2, 23.0) @ np.diag([0.7, 1.1, 2.3])
    a[:3, 3] = [-31.25, 12.5, 40.75]
    return a


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


# ----------------------------------------------------------------------------- arrays <-> nodes

def test_oblique_anisotropic_round_trip_is_exact(scene):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(7, 9, 5)).astype(np.float32)
    aff = oblique_affine()
    node = mrml.volume_node_from_array(scene, arr, aff, "oblique")
    back, aff2 = mrml.array_from_volume_node(node)
    assert back.shape == (7, 9, 5) and back.dtype == np.float32
    assert np.array_equal(back, arr)
    np.testing.assert_allclose(aff2, aff, rtol=0, atol=1e-12)
    # Slicer's own view of the geometry: spacing = column norms, origin = translation
    np.testing.assert_allclose(node.GetSpacing(), [0.7, 1.1, 2.3], atol=1e-12)
    np.testing.assert_allclose(node.GetOrigin(), aff[:3, 3], atol=1e-12)
    # voxel (i, j, k) = (6, 8, 4) lands where the affine says
    assert np.allclose(mrml.ijk_to_ras(node) @ [6, 8, 4, 1], aff @ [6, 8, 4, 1], atol=1e-12)
    # Slicer's arrays are (k, j, i)
    kji = numpy_support.vtk_to_numpy(node.GetImageData().GetPointData().GetScalars()).reshape(5, 9, 7)
    assert kji[4, 8, 6] == arr[6, 8, 4] and kji[1, 2, 3] == arr[3, 2, 1]


def test_int_and_bool_arrays_and_bad_input(scene):
    lab = np.zeros((4, 5, 6), np.int16)
    lab[1, 2, 3] = 7
    n = mrml.volume_node_from_array(scene, lab, np.eye(4), "labels")
    back, _ = mrml.array_from_volume_node(n)
    assert back.dtype == np.int16 and back[1, 2, 3] == 7 and back.sum() == 7
    m = mrml.volume_node_from_array(scene, lab > 0, np.eye(4), "mask")
    assert mrml.array_from_volume_node(m)[0].sum() == 1
    with pytest.raises(ValueError):
        mrml.volume_node_from_array(scene, np.zeros((3, 3)), np.eye(4), "flat")
    with pytest.raises(ValueError):
        mrml.volume_node_from_array(scene, np.zeros((3, 3, 3)), np.zeros((4, 4)), "singular")


def test_multi_echo_as_sequence_round_trip(scene):
    assert mrml.sequence_available()
    rng = np.random.default_rng(1)
    arr = rng.random((6, 5, 4, 3)).astype(np.float32)
    te = [0.004, 0.0125, 0.021]
    aff = oblique_affine()
    seq = mrml.volumes_from_4d(scene, arr, aff, "gre_mag", index_values=te)
    assert seq.IsA("vtkMRMLSequenceNode") and seq.GetNumberOfDataNodes() == 3
    back, aff2, vals = mrml.array_from_input(seq)
    assert np.array_equal(back, arr)
    np.testing.assert_allclose(aff2, aff, atol=1e-12)
    np.testing.assert_allclose(vals, te)
    # re-putting replaces: still one sequence node, still 3 echoes
    mrml.volumes_from_4d(scene, arr * 2, aff, "gre_mag", index_values=te)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSequenceNode") == 1
    assert np.array_equal(mrml.array_from_input(seq)[0], arr * 2)


def test_multi_echo_as_volume_list(scene):
    arr = np.arange(4 * 3 * 2 * 2, dtype=np.float32).reshape(4, 3, 2, 2)
    nodes = mrml.volumes_from_4d(scene, arr, np.eye(4), "pha", as_sequence=False)
    assert [n.GetName() for n in nodes] == ["pha echo 1", "pha echo 2"]
    back, _, vals = mrml.array_from_input(nodes)
    assert np.array_equal(back, arr) and vals is None
    other = mrml.volume_node_from_array(scene, arr[:3, ..., 0], np.eye(4), "small")
    with pytest.raises(ValueError, match="grid"):
        mrml.array_from_input([nodes[0], other])
    assert mrml.background_volume(nodes) is nodes[0]


def test_multicomponent_volume_is_a_4d_input(scene):
    """A multivolume / vector volume (one component per echo) reads back as (i, j, k, echo)."""
    rng = np.random.default_rng(4)
    arr = rng.random((5, 4, 3, 4)).astype(np.float32)
    aff = oblique_affine()
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "mv")
    node.SetIJKToRASMatrix(mrml._vtk_matrix(aff))
    node.SetAndObserveImageData(mrml._image_from_array(arr))
    back, aff2, vals = mrml.array_from_input(node)
    assert back.shape == (5, 4, 3, 4) and np.array_equal(back, arr) and vals is None
    np.testing.assert_allclose(aff2, aff, atol=1e-12)


def test_parent_transform_is_part_of_the_affine(scene):
    """A volume under a linear transform is exported where the views show it; non-linear refuses."""
    import vtk
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    aff = oblique_affine()
    node = mrml.volume_node_from_array(scene, arr, aff, "moved")
    tnode = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "reg")
    t = np.eye(4)
    t[:3, :3] = rot(2, 30.0)
    t[:3, 3] = [5.0, -3.0, 12.0]
    tnode.SetMatrixTransformToParent(mrml._vtk_matrix(t))
    node.SetAndObserveTransformNodeID(tnode.GetID())
    _, world = mrml.array_from_volume_node(node)
    np.testing.assert_allclose(world, t @ aff, atol=1e-12)
    np.testing.assert_allclose(mrml.ijk_to_ras(node, world=False), aff, atol=1e-12)
    # same point as Slicer's own transform-to-world of voxel (1, 2, 3)
    p = mrml.ijk_to_ras(node, world=False) @ [1, 2, 3, 1]
    out = [0.0, 0.0, 0.0]
    node.TransformPointToWorld(list(p[:3]), out)
    np.testing.assert_allclose(out, (world @ [1, 2, 3, 1])[:3], atol=1e-9)
    # writing an output onto that node drops the transform (the affine is already world)
    mrml.volume_node_from_array(scene, arr, world, "moved")
    assert node.GetTransformNodeID() is None
    np.testing.assert_allclose(mrml.ijk_to_ras(node), t @ aff, atol=1e-12)
    # a non-linear transform must be hardened first
    tps = vtk.vtkThinPlateSplineTransform()
    src, dst = vtk.vtkPoints(), vtk.vtkPoints()
    for q in [(0, 0, 0), (10, 0, 0), (0, 10, 0), (0, 0, 10)]:
        src.InsertNextPoint(q)
        dst.InsertNextPoint(q[0] + 1, q[1], q[2])
    tps.SetSourceLandmarks(src)
    tps.SetTargetLandmarks(dst)
    tps.SetBasisToR()
    warp = scene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    warp.SetAndObserveTransformToParent(tps)
    node.SetAndObserveTransformNodeID(warp.GetID())
    with pytest.raises(ValueError, match="[Hh]arden"):
        mrml.array_from_volume_node(node)


def _with_file(scene, node, path):
    st = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    st.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(st.GetID())
    return node


def test_echo_times_field_strength_and_b0_from_the_data(scene, tmp_path):
    aff = oblique_affine()
    arr = np.ones((4, 4, 3, 3), np.float32)
    # 1. a 4-D NIfTI with a dcm2niix sidecar, loaded as a sequence: frame numbers 0, 1, 2 ("time")
    seq = mrml.volumes_from_4d(scene, arr, aff, "gre", index_values=[0, 1, 2], index_name="time",
                               index_unit="")
    assert mrml.echo_times_from_node(seq) is None          # frame numbers are not echo times
    (tmp_path / "gre.json").write_text(json.dumps({"EchoTime": [0.005, 0.011, 0.017],
                                                   "MagneticFieldStrength": 2.89}))
    _with_file(scene, seq, tmp_path / "gre.nii.gz")
    assert mrml.sidecar_for_node(seq)["MagneticFieldStrength"] == 2.89
    assert mrml.echo_times_from_node(seq) == [0.005, 0.011, 0.017]
    assert mrml.field_strength_from_node(seq) == 2.89
    # 2. a sequence indexed by echo time in ms
    ms = mrml.volumes_from_4d(scene, arr, aff, "gre_ms", index_values=[4.0, 8.5, 13.0],
                              index_name="echo time", index_unit="ms")
    np.testing.assert_allclose(mrml.echo_times_from_node(ms), [0.004, 0.0085, 0.013])
    # 3. a DICOM multivolume (frame labels in ms) with ImagingFrequency-only field strength
    mv = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "mv")
    mv.SetAttribute("MultiVolume.FrameIdentifyingDICOMTagName", "EchoTime")
    mv.SetAttribute("MultiVolume.FrameLabels", "5,11,17,23")
    np.testing.assert_allclose(mrml.echo_times_from_node(mv), [0.005, 0.011, 0.017, 0.023])
    (tmp_path / "mv.json").write_text(json.dumps({"ImagingFrequency": 127.7324}))
    _with_file(scene, mv, tmp_path / "mv.nrrd")
    assert mrml.field_strength_from_node(mv) == pytest.approx(3.0, abs=1e-4)
    # 4. one volume per echo, each with its DICOM EchoTime attribute (ms)
    vols = [mrml.volume_node_from_array(scene, arr[..., e], aff, f"gre_e{e + 1}") for e in range(3)]
    for v, te in zip(vols, ("4", "9", "14")):
        v.SetAttribute("DICOM.EchoTime", te)
    np.testing.assert_allclose(mrml.echo_times_from_node(vols), [0.004, 0.009, 0.014])
    vols[1].SetAttribute("DICOM.EchoTime", "")
    assert mrml.echo_times_from_node(vols) is None
    assert mrml.field_strength_from_node(vols) is None
    # B0 direction: from the oblique geometry, as chisep computes it, or a sidecar override
    from chisep.physics import b0_direction_from_affine
    np.testing.assert_allclose(mrml.b0_direction_from_node(ms), b0_direction_from_affine(aff), atol=1e-12)
    b = mrml.b0_direction_from_node(ms)
    assert abs(np.linalg.norm(b) - 1) < 1e-12 and abs(b[2]) < 0.99   # tilted: not the k axis
    (tmp_path / "gre.json").write_text(json.dumps({"B0Direction": [0, 0.6, 0.8]}))
    np.testing.assert_allclose(mrml.b0_direction_from_node(seq), [0, 0.6, 0.8])
    np.testing.assert_allclose(mrml.parse_b0_direction("0, 0, 2"), [0, 0, 1])
    assert mrml.parse_b0_direction("  ") is None
    for bad in ("0 0", "a b c", "0 0 0"):
        with pytest.raises(ValueError, match="B0 direction"):
            mrml.parse_b0_direction(bad)


def test_sequence_browser_proxy_is_shown_and_maps_back_to_the_sequence(scene):
    """A 4-D file loaded in Slicer is a sequence + browser + proxy volume; users pick the proxy."""
    rng = np.random.default_rng(5)
    arr = rng.random((4, 5, 6, 3)).astype(np.float32)
    seq = mrml.volumes_from_4d(scene, arr, oblique_affine(), "gre", index_values=[0.004, 0.008, 0.012])
    assert seq.GetScene() is scene and seq.GetNthDataNode(0).GetScene() is not scene
    browser, proxy = mrml.browse_sequence(scene, seq)
    assert proxy is not None and proxy.GetScene() is scene and proxy.IsA("vtkMRMLScalarVolumeNode")
    np.testing.assert_array_equal(mrml.array_from_volume_node(proxy)[0], arr[..., 0])
    np.testing.assert_allclose(mrml.ijk_to_ras(proxy), oblique_affine(), atol=1e-12)
    assert mrml.display_volume(scene, seq).GetID() == proxy.GetID()
    assert mrml.sequence_of_proxy(scene, proxy).GetID() == seq.GetID()
    other = mrml.volume_node_from_array(scene, arr[..., 0], np.eye(4), "plain")
    assert mrml.sequence_of_proxy(scene, other) is None
    # browsing again reuses the browser and proxy
    n = scene.GetNumberOfNodes()
    assert mrml.browse_sequence(scene, seq)[1].GetID() == proxy.GetID() and scene.GetNumberOfNodes() == n
    # the overlay goes onto the proxy, a node of the scene
    s = mrml.overlay_settings(mrml.display_volume(scene, seq), other, 0.5)
    assert scene.GetNodeByID(s.background_id) is proxy


def test_one_volume_per_echo_gathered_by_name(scene):
    a = np.zeros((3, 3, 3), np.float32)
    names = ["sub_GRE_e3", "sub_GRE_e1", "sub_GRE_e2", "sub_GRE_ph_e1", "other", "T1 echo 1", "T1 echo 2"]
    nodes = {n: mrml.volume_node_from_array(scene, a + i, np.eye(4), n) for i, n in enumerate(names)}
    got = mrml.echo_volumes(scene, nodes["sub_GRE_e2"])
    assert [n.GetName() for n in got] == ["sub_GRE_e1", "sub_GRE_e2", "sub_GRE_e3"]
    assert [n.GetName() for n in mrml.echo_volumes(scene, nodes["T1 echo 2"])] == ["T1 echo 1", "T1 echo 2"]
    assert mrml.echo_volumes(scene, nodes["other"]) == [nodes["other"]]
    assert [n.GetName() for n in mrml.echo_volumes(scene, nodes["sub_GRE_ph_e1"])] == ["sub_GRE_ph_e1"]
    stacked, _, _ = mrml.array_from_input(got)
    assert stacked.shape == (3, 3, 3, 3) and [stacked[0, 0, 0, e] for e in range(3)] == [1, 2, 0]
    mrml.volume_node_from_array(scene, a, np.eye(4), "sub_GRE_e5")
    with pytest.raises(ValueError, match="gaps"):
        mrml.echo_volumes(scene, nodes["sub_GRE_e1"])


# ----------------------------------------------------------------------------- outputs and colours

def _maps(shape=(8, 7, 6), scale=1.0):
    rng = np.random.default_rng(2)
    para = (rng.random(shape) * 0.1 * scale).astype(np.float32)
    dia = (rng.random(shape) * 0.08 * scale).astype(np.float32)
    return {"chi_para": para, "chi_dia": dia, "chi_total": para - dia,
            "r2prime": (rng.random(shape) * 10).astype(np.float32)}


def test_outputs_named_coloured_and_ranged(scene):
    aff = oblique_affine()
    nodes = mrml.show_maps(scene, _maps(), aff, "GRE mag")
    assert [n.GetName() for n in nodes.values()] == [
        "GRE mag chi_para", "GRE mag chi_dia", "GRE mag chi_total", "GRE mag r2prime"]
    expected = {"chi_para": ("ChiSep chi_para (warm)", 0.0, 0.15),
                "chi_dia": ("ChiSep chi_dia (cool)", 0.0, 0.10),
                "chi_total": ("ChiSep chi_total (grey)", -0.10, 0.15)}
    for key, (cname, lo, hi) in expected.items():
        disp = nodes[key].GetDisplayNode()
        assert disp.GetColorNode().GetName() == cname
        assert disp.GetAutoWindowLevel() == 0
        assert disp.GetWindowLevelMin() == pytest.approx(lo, abs=1e-9)
        assert disp.GetWindowLevelMax() == pytest.approx(hi, abs=1e-9)
        assert nodes[key].GetAttribute("ChiSeparation.unit") == "ppm"
        np.testing.assert_allclose(mrml.ijk_to_ras(nodes[key]), aff, atol=1e-12)
    # colour legends: one per map, bound to its scalar display, titled in ppm/Hz, hidden until shown
    for key, node in nodes.items():
        legend = mrml.color_legend(node)
        assert legend is not None and legend.IsA("vtkMRMLColorLegendDisplayNode")
        assert legend.GetPrimaryDisplayNode().GetID() == node.GetDisplayNode().GetID()
        assert legend.GetTitleText() == mrml.OUTPUT_MAPS[key].title and not legend.GetVisibility()
    assert mrml.color_legend(nodes["chi_para"]).GetTitleText() == "\u03c7para (ppm)"
    assert mrml.show_only_legend_of(nodes.values(), nodes["chi_dia"]) == 1
    assert mrml.color_legend(nodes["chi_dia"]).GetVisibility() == 1
    assert mrml.color_legend(nodes["chi_para"]).GetVisibility() == 0
    # colours: para warm (red > blue mid-range, pale yellow top), dia cool (blue > red), total grey
    para = mrml.ensure_color_node(scene, "para")
    dia = mrml.ensure_color_node(scene, "dia")
    total = mrml.ensure_color_node(scene, "total")
    assert para.GetNumberOfColors() == 256
    mid_p = mrml.lookup_color(para, 0.1, 0, 0.15)
    mid_d = mrml.lookup_color(dia, 0.05, 0, 0.10)
    assert mid_p[0] > mid_p[2] + 100 and mid_d[2] > mid_d[0] + 150
    np.testing.assert_array_equal(mrml.lookup_color(para, 0.0, 0, 0.15)[:3], [0, 0, 4])
    np.testing.assert_array_equal(mrml.lookup_color(para, 1.0, 0, 0.15)[:3], [252, 255, 164])  # clamps
    np.testing.assert_array_equal(mrml.lookup_color(dia, -1.0, 0, 0.10)[:3], [0, 0, 0])
    g = mrml.lookup_color(total, 0.025, -0.10, 0.15)  # t = 0.5
    assert g[0] == g[1] == g[2] and abs(g[0] - 127.5) <= 1


def test_rerun_replaces_nodes(scene):
    aff = np.diag([1.0, 1.2, 2.0, 1.0])
    first = mrml.show_maps(scene, _maps(), aff, "gre")
    counts = {c: scene.GetNumberOfNodesByClass(c) for c in
              ("vtkMRMLScalarVolumeNode", "vtkMRMLColorTableNode", "vtkMRMLScalarVolumeDisplayNode",
               "vtkMRMLColorLegendDisplayNode")}
    assert counts["vtkMRMLColorLegendDisplayNode"] == 4
    n_nodes = scene.GetNumberOfNodes()
    second = mrml.show_maps(scene, _maps(scale=2.0), aff, "gre")
    assert {c: scene.GetNumberOfNodesByClass(c) for c in counts} == counts
    assert scene.GetNumberOfNodes() == n_nodes
    assert all(first[k].GetID() == second[k].GetID() for k in first)
    np.testing.assert_allclose(mrml.array_from_volume_node(second["chi_para"])[0],
                               _maps(scale=2.0)["chi_para"])
    # another input gets its own nodes
    mrml.show_maps(scene, _maps(), aff, "gre2")
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == counts["vtkMRMLScalarVolumeNode"] + 4


def test_load_outputs_from_nifti_folder(scene, tmp_path):
    from chisep.io import save_nifti
    aff = oblique_affine()
    maps = _maps()
    for k, v in maps.items():
        save_nifti(tmp_path / f"{k}.nii.gz", v, aff)
    nodes = mrml.load_outputs(scene, tmp_path, "subj")
    assert sorted(nodes) == sorted(maps)
    for k, v in maps.items():
        arr, a = mrml.array_from_volume_node(nodes[k])
        np.testing.assert_allclose(arr, v, atol=1e-7)
        np.testing.assert_allclose(a, aff, atol=1e-5)  # NIfTI stores the affine in float32
    with pytest.raises(FileNotFoundError):
        mrml.load_outputs(scene, tmp_path / "nothing", "subj")


def _slice_image(scene, background, foreground, opacity, ras):
    sn = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    sn.SetLayoutName("Red")
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLScene(scene)
    logic.SetSliceNode(sn)
    settings = mrml.overlay_settings(background, foreground, opacity)
    assert mrml.apply_overlay_to_scene(scene, settings) >= 1
    logic.FitSliceToAll()
    sn.JumpSlice(*ras[:3])
    sn.UpdateMatrices()
    xy = np.linalg.inv(mrml._np_matrix(sn.GetXYToRAS())) @ ras
    alg = logic.GetImageDataConnection().GetProducer()
    alg.Update()
    out = alg.GetOutputDataObject(0)
    d = out.GetDimensions()
    img = numpy_support.vtk_to_numpy(out.GetPointData().GetScalars()).reshape(d[1], d[0], -1)
    return img[int(round(xy[1])), int(round(xy[0]))].astype(float)


def test_blended_overlay_colour_in_slice_view(scene):
    """vtkMRMLSliceLogic blends the layers offscreen: the pixel over a lesion voxel shows the warm
    colour of its chi_para value over the grey GRE magnitude, in the proportion of the opacity."""
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    aff[:3, 3] = [-10, -12, -8]
    gre = mrml.volume_node_from_array(scene, np.full((20, 24, 8), 100.0, np.float32), aff, "gre")
    gre.GetDisplayNode().AutoWindowLevelOff()
    gre.GetDisplayNode().SetWindowLevelMinMax(0, 200)
    value = 101.5 / 255 * 0.15  # the middle of colour-table entry 101 over 0..0.15 ppm
    para = np.zeros((20, 24, 8), np.float32)
    para[8:14, 9:15, 3:6] = value
    fg = mrml.show_maps(scene, {"chi_para": para}, aff, "gre")["chi_para"]
    expected = mrml.lookup_color(mrml.ensure_color_node(scene, "para"), value, 0.0, 0.15)
    np.testing.assert_array_equal(expected[:3], [146, 39, 95])
    ras = aff @ np.array([10.5, 11.5, 4.0, 1.0])
    full = _slice_image(scene, gre, fg, 1.0, ras)
    np.testing.assert_allclose(full[:3], expected[:3], atol=1)
    half = _slice_image(scene, gre, fg, 0.5, ras)
    grey = 255 * 100 / 200
    np.testing.assert_allclose(half[:3], 0.5 * expected[:3] + 0.5 * grey, atol=2)
    outside = _slice_image(scene, gre, fg, 0.5, aff @ np.array([2.0, 2.0, 4.0, 1.0]))
    np.testing.assert_allclose(outside[:3], 0.5 * np.array([0, 0, 4]) + 0.5 * grey, atol=2)


def test_overlay_settings_validation(scene):
    a = mrml.volume_node_from_array(scene, np.zeros((2, 2, 2)), np.eye(4), "a")
    s = mrml.overlay_settings(a, None, 0.3)
    assert s.background_id == a.GetID() and s.foreground_id is None and s.opacity == 0.3
    with pytest.raises(ValueError):
        mrml.overlay_settings(a, a, 1.5)
    comp = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    mrml.apply_overlay(comp, mrml.overlay_settings(a, a, 0.25))
    assert comp.GetBackgroundVolumeID() == a.GetID() and comp.GetForegroundOpacity() == 0.25


# ----------------------------------------------------------------------------- lesions

def test_lesion_statistics_table(scene):
    shape = (32, 32, 32)
    rng = np.random.default_rng(3)
    para = (0.02 + 0.002 * rng.standard_normal(shape)).astype(np.float32)
    dia = (0.03 + 0.002 * rng.standard_normal(shape)).astype(np.float32)
    labels = np.zeros(shape, np.int16)
    labels[6:11, 6:11, 6:11] = 1       # iron-rich: high para, normal dia
    labels[20:25, 20:25, 20:25] = 2    # demyelinated: low dia
    para[labels == 1] = 0.09
    dia[labels == 2] = 0.005
    aff = np.diag([1.0, 1.0, 1.5, 1.0])
    maps = {"chi_para": para, "chi_dia": dia, "chi_total": para - dia}
    nodes = mrml.show_maps(scene, maps, aff, "subj")
    lab_node = mrml.volume_node_from_array(scene, labels, aff, "lesions",
                                           class_name="vtkMRMLLabelMapVolumeNode")
    table, rows = mrml.lesion_table_from_nodes(scene, nodes, lab_node)
    assert table.GetNumberOfRows() == 2 == len(rows)
    assert mrml.table_column(table, "label") == [1, 2]
    assert mrml.table_column(table, "voxels") == [125, 125]
    np.testing.assert_allclose(mrml.table_column(table, "volume_mm3"), [187.5, 187.5])
    for col, arr in (("chi_para_mean", para), ("chi_dia_mean", dia), ("chi_total_mean", para - dia)):
        want = [float(arr[labels == L].mean()) for L in (1, 2)]
        np.testing.assert_allclose(mrml.table_column(table, col), want, rtol=1e-5)
    np.testing.assert_allclose(mrml.table_column(table, "chi_para_mean")[0], 0.09, rtol=1e-6)
    assert mrml.table_column(table, "chi_para_class") == ["hyper", "iso"]
    assert mrml.table_column(table, "chi_dia_class") == ["iso", "hypo"]
    assert all(np.isnan(mrml.table_column(table, "r2prime_mean")))
    assert table.GetColumnUnitLabel("chi_para_mean") == "ppm"
    # recomputing replaces the table node
    mrml.lesion_table_from_nodes(scene, nodes, lab_node)
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1
    off = mrml.volume_node_from_array(scene, labels[:-1], aff, "bad")
    with pytest.raises(ValueError, match="grid"):
        mrml.lesion_table_from_nodes(scene, nodes, off)


# ----------------------------------------------------------------------------- command line

def test_build_run_args_raw_and_processed():
    a = bgr.build_run_args({"gre_mag": "m.nii.gz", "gre_phase": ["p.nii.gz"], "se_mag": "se.nii.gz",
                            "te": "0.004, 0.008 0.012", "method": "chisepnet-r2prime",
                            "device": "cpu", "b0": 3, "weights": "/w/x.pth"})
    assert a == ["run", "--gre-mag", "m.nii.gz", "--gre-phase", "p.nii.gz", "--se-mag", "se.nii.gz",
                 "--te", "0.004", "0.008", "0.012", "--method", "chisepnet-r2prime",
                 "--weights", "/w/x.pth", "--device", "cpu", "--b0", "3.0", "--progress", "json"]
    b = bgr.build_run_args({"local_field": "f.nii", "field_unit": "rad", "r2star": "r2s.nii",
                            "r2prime": "r2p.nii", "mask": "m.nii", "te": [0.02], "method": "regularized"})
    assert b[:12] == ["run", "--local-field", "f.nii", "--field-unit", "rad", "--r2star", "r2s.nii",
                      "--mask", "m.nii", "--r2prime", "r2p.nii", "--field-te"]
    assert b[12] == "0.02" and "--device" in b and b[-2:] == ["--progress", "json"]
    full = bgr.chisep_command({"gre_mag": "m", "gre_phase": "p"}, python="py")
    assert full[:4] == ["py", "-m", "chisep", "run"]
    for bad, msg in [({}, "choose"), ({"gre_mag": "m"}, "phase"),
                     ({"gre_mag": "m", "gre_phase": "p", "method": "x"}, "method"),
                     ({"gre_mag": "m", "gre_phase": "p", "device": "tpu"}, "device"),
                     ({"gre_mag": "m", "gre_phase": "p", "te": "0.01 -1"}, "positive"),
                     ({"gre_mag": "m", "gre_phase": "p", "se_mag": "s", "r2": "r"}, "not both"),
                     ({"local_field": "f", "field_unit": "tesla", "r2star": "r", "mask": "m"}, "unit"),
                     ({"local_field": "f", "field_unit": "ppm", "mask": "m"}, "R2"),
                     ({"local_field": "f", "field_unit": "rad", "r2star": "r", "mask": "m"}, "echo")]:
        with pytest.raises(ValueError, match=msg):
            bgr.build_run_args(bad)


# ----------------------------------------------------------------------------- background runner

PROGRESS_SCRIPT = r"""
import json, os, sys, time
out = sys.argv[sys.argv.index('--out') + 1]
os.makedirs(out)
for f, m in ((0.1, 'loading'), (0.5, 'half way'), (1.0, 'done')):
    print(json.dumps({'progress': f, 'message': m}), flush=True)
    time.sleep(0.05)
print('plain log line', flush=True)
open(os.path.join(out, 'chi_para.nii.gz'), 'w').write('x')
"""

FAIL_SCRIPT = r"""
import json, os, sys
out = sys.argv[sys.argv.index('--out') + 1]
os.makedirs(out)
open(os.path.join(out, 'partial.nii.gz'), 'w').write('x')
print(json.dumps({'progress': 0.2, 'message': 'reading'}), flush=True)
sys.stderr.write('gre_phase.nii.gz: expected 4-D, got 3-D\n')
sys.exit(2)
"""

LONG_SCRIPT = r"""
import json, os, subprocess, sys, time
out = sys.argv[sys.argv.index('--out') + 1]
os.makedirs(out)
open(os.path.join(out, 'partial.nii.gz'), 'w').write('x')
child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
print(json.dumps({'progress': 0.05, 'message': 'child %d' % child.pid}), flush=True)
time.sleep(120)
"""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_runner_parses_progress_and_moves_results(tmp_path):
    out = tmp_path / "out"
    r = bgr.ChisepRunner([sys.executable, "-c", PROGRESS_SCRIPT], out).start()
    assert r.state == bgr.RUNNING
    seen = []
    t0 = time.time()
    while r.state == bgr.RUNNING and time.time() - t0 < 30:
        seen += r.poll()   # never blocks
        time.sleep(0.02)
    assert r.state == bgr.SUCCEEDED, r.error
    assert [f for f, _ in seen] == [0.1, 0.5, 1.0]
    assert [m for _, m in seen] == ["loading", "half way", "done"]
    assert r.log == ["plain log line"] and r.progress == 1.0
    assert sorted(os.listdir(out)) == ["chi_para.nii.gz"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # temporary folder gone
    assert bgr.ChisepRunner.parse_line('{"progress": 1.7, "message": "x"}') == (1.0, "x")
    assert bgr.ChisepRunner.parse_line("not json") is None


def test_runner_failure_reports_stderr_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    r = bgr.ChisepRunner([sys.executable, "-c", FAIL_SCRIPT], out).start()
    assert r.wait(timeout=30) == bgr.FAILED
    assert r.returncode == 2
    assert "expected 4-D" in r.error and r.progress == pytest.approx(0.2)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name == "nt", reason="process-group check via /proc")
def test_runner_cancel_stops_process_group_and_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    r = bgr.ChisepRunner([sys.executable, "-c", LONG_SCRIPT], out).start()
    t0 = time.time()
    ev = []
    while not ev and time.time() - t0 < 30:
        ev += r.poll()
        time.sleep(0.02)
    assert ev and ev[0][0] == pytest.approx(0.05)
    child = int(ev[0][1].split()[1])
    assert _alive(child) and _alive(r.proc.pid)
    t1 = time.time()
    assert r.cancel() == bgr.CANCELLED
    # cancel must not wait for the script (it sleeps 120 s): a generous bound that still catches that
    assert time.time() - t1 < 60
    assert not _alive(r.proc.pid)
    for _ in range(50):
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child), "the grandchild survived cancel()"
    assert list(out.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["out"]
    assert r.poll() == [] and r.state == bgr.CANCELLED


# ----------------------------------------------------------------------------- one real run

def test_real_chisep_run_in_background_and_loaded(tmp_path, scene):
    """The real core (regularized, processed inputs of a small simulated head) through the runner,
    then loaded as coloured output nodes on the simulation's grid."""
    from chisep.simulate import simulate_head, write_simulation
    head = simulate_head(seed=1, size="small")
    write_simulation(head, tmp_path / "sim")
    t = tmp_path / "sim" / "truth"
    params = {"local_field": t / "local_field.nii.gz", "field_unit": "ppm",
              "r2star": t / "r2star.nii.gz", "r2": t / "r2.nii.gz", "mask": t / "mask.nii.gz",
              "method": "regularized", "device": "cpu"}
    r = bgr.ChisepRunner(bgr.chisep_command(params), tmp_path / "maps").start()
    fractions = []
    t0 = time.time()
    while r.state == bgr.RUNNING and time.time() - t0 < 600:   # a hang detector, not a speed test
        fractions += [f for f, _ in r.poll() if f is not None]
        time.sleep(0.05)
    assert r.state == bgr.SUCCEEDED, r.error
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert json.loads((tmp_path / "maps" / "report.json").read_text())
    nodes = mrml.load_outputs(scene, tmp_path / "maps", "sim")
    assert set(nodes) == {"chi_para", "chi_dia", "chi_total", "r2prime"}
    para, aff = mrml.array_from_volume_node(nodes["chi_para"])
    np.testing.assert_allclose(aff, head.affine, atol=1e-5)
    assert para.shape == head.shape and para.min() >= 0
    dia = mrml.array_from_volume_node(nodes["chi_dia"])[0]
    total = mrml.array_from_volume_node(nodes["chi_total"])[0]
    np.testing.assert_allclose(total, para - dia, atol=1e-5)
    # the estimate follows the truth inside the brain
    m = head.truth["mask"] > 0
    assert np.corrcoef(para[m], head.truth["chi_para"][m])[0, 1] > 0.5
