"""Lesion ROI statistics and MS-lesion classification relative to normal-appearing white matter.

Inputs are maps on one grid (``chi_para``, ``chi_dia`` = positive magnitude |chi_dia|,
``chi_total`` in ppm, optionally ``r2prime`` in Hz; any other named map gets statistics with a
minimum difference of 0), a lesion label map (or binary mask) on the same grid and its 4x4 affine.

Lesions
    A mask whose only non-zero value is 1 or 255 (or a bool mask) is split into connected
    components with **26-connectivity** (face, edge and corner neighbours); ``split="always"``
    forces that for any label map, ``split="never"`` keeps a binary mask as one lesion. Labels must
    be non-negative integers; a probability map (non-integer values) is refused with the threshold
    to use.

Reference (NAWM)
    ``reference="wm"`` (default when a WM mask is given): the user WM mask, minus CSF, minus every
    lesion dilated by ``exclusion_mm``, inside the brain mask; one reference for all lesions.
    ``reference="shell"`` (default otherwise): per lesion, the perilesional ring of voxels at a
    distance d from the lesion with ``shell_mm[0] < d <= shell_mm[1]`` (default 2-5 mm; distances
    between voxel centres in mm), excluding every lesion dilated by ``exclusion_mm``, excluding
    CSF, restricted to the WM mask if given, else to the brain mask if given, else to voxels where
    some map is non-zero. If the ring holds fewer than ``min_ref_voxels`` voxels its outer radius
    is grown (x1.5, up to 3 times); still too few -> ``unclassified`` (note in ``notes``).

Classification (per map)
    ``diff = lesion mean - reference location`` and ``z = diff / reference scale``, where location
    and scale are the median and 1.4826*MAD of the reference (``robust=True``, the default: a few
    cortex, vein or partial-volume voxels in the ring then do not move the reference) or its mean
    and SD (``robust=False``). The lesion is

    - ``hyper`` if ``z > z_threshold`` and ``diff > min_diff[map]``,
    - ``hypo``  if ``z < -z_threshold`` and ``diff < -min_diff[map]``,
    - ``iso``   otherwise.

    Defaults ``z_threshold = 2.0`` and ``min_diff = 0.005 ppm`` (``r2prime``: 0.5 Hz); both tests
    must pass, so a very homogeneous reference (tiny SD) does not turn a 1 ppb difference into a
    class. For ``chi_dia`` (a magnitude) ``hypo`` means *less* diamagnetic (e.g. demyelination).
    The pair (chi_para, chi_dia) gives ``class_string`` (e.g. ``"para-hyper/dia-hypo"``) and
    ``subtype`` (:func:`subtype_from_classes`): iron = para-hyper/dia-iso, demyelinated =
    para-iso/dia-hypo, both = para-hyper/dia-hypo, neither = para-iso/dia-iso, anything else
    ``other``.

Paramagnetic rim
    Inner ring = lesion voxels within ``rim_width_mm`` (default 1.5 mm) of the lesion boundary
    (distance from the voxel centre to the nearest non-lesion voxel centre); core = the deeper
    lesion voxels. ``rim`` is True when the core has at least one voxel and the mean chi_para of the
    ring exceeds both the core mean and the reference location by more than ``rim_min_diff``
    (default 0.01 ppm). Lesions without a core (too thin) get ``rim_evaluable = False``, rim False.

Edge cases
    - Lesions touching the volume faces or the brain mask boundary: statistics use the lesion
      voxels inside the volume and the brain mask (``n_voxels``; ``n_voxels_label`` counts all),
      ``touches_border = True``.
    - Lesions with fewer than ``small_lesion_voxels`` (default 5) voxels, including single voxels:
      statistics as usual (SD 0 for one voxel), classified by their mean with the same rule, and
      flagged ``small_lesion = True``; rims are not evaluable.
    - An empty lesion mask gives an empty list (no error); :func:`write_lesion_csv` then writes a
      header-only table.
    - Maps/masks of another shape, or a label map with another affine: :class:`InputError` naming
      the mismatch (resample the label map onto the maps' grid with nearest neighbour first).
    - NaN/inf in a map: :class:`InputError`.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .io import InputError

MAP_ORDER = ("chi_para", "chi_dia", "chi_total", "r2prime")
STATS = ("mean", "median", "sd", "p5", "p25", "p75", "p95")
#: minimum absolute lesion-minus-reference difference for hyper/hypo (ppm; r2prime in Hz)
DEFAULT_MIN_DIFF = {"chi_para": 0.005, "chi_dia": 0.005, "chi_total": 0.005, "r2prime": 0.5}
DEFAULT_Z_THRESHOLD = 2.0
DEFAULT_RIM_MIN_DIFF = 0.01
SUBTYPES = ("iron", "demyelinated", "both", "neither")
_SUBTYPE_OF = {("hyper", "iso"): "iron", ("iso", "hypo"): "demyelinated",
               ("hyper", "hypo"): "both", ("iso", "iso"): "neither"}
_STRUCT26 = np.ones((3, 3, 3), bool)


# --------------------------------------------------------------------------- small pure helpers
def subtype_from_classes(para_class: str, dia_class: str) -> str:
    """Simulation subtype of a (chi_para class, chi_dia class) pair.

    ``("hyper", "iso")`` -> ``"iron"``, ``("iso", "hypo")`` -> ``"demyelinated"``,
    ``("hyper", "hypo")`` -> ``"both"``, ``("iso", "iso")`` -> ``"neither"``; a pair with
    ``"unclassified"`` -> ``"unclassified"``; any other pair (e.g. para-hypo) -> ``"other"``.
    """
    if "unclassified" in (para_class, dia_class) or None in (para_class, dia_class):
        return "unclassified"
    return _SUBTYPE_OF.get((para_class, dia_class), "other")


def class_string(para_class: str, dia_class: str) -> str:
    """``"para-<class>/dia-<class>"``, e.g. ``"para-hyper/dia-hypo"``."""
    return f"para-{para_class}/dia-{dia_class}"


def classify(diff: float, z: float, z_threshold: float = DEFAULT_Z_THRESHOLD, min_diff: float = 0.0) -> str:
    """``hyper`` / ``hypo`` / ``iso`` from a lesion-minus-reference difference and its z-score.

    hyper: ``z > z_threshold`` and ``diff > min_diff``; hypo: ``z < -z_threshold`` and
    ``diff < -min_diff``; else iso.
    """
    if z > z_threshold and diff > min_diff:
        return "hyper"
    if z < -z_threshold and diff < -min_diff:
        return "hypo"
    return "iso"


def describe(values) -> dict:
    """mean, median, sd (population), p5, p25, p75, p95 of a 1-D array (floats; None if empty)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return {k: None for k in STATS}
    p5, p25, p50, p75, p95 = np.percentile(v, [5, 25, 50, 75, 95])
    return {"mean": float(v.mean()), "median": float(p50), "sd": float(v.std()), "p5": float(p5),
            "p25": float(p25), "p75": float(p75), "p95": float(p95)}


def location_scale(values, robust: bool = True) -> tuple:
    """(location, scale) of a reference sample: (median, 1.4826*MAD) if ``robust`` else (mean, SD)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if robust:
        med = float(np.median(v))
        return med, float(1.4826 * np.median(np.abs(v - med)))
    return float(v.mean()), float(v.std())


#: single non-zero values that mark a binary lesion mask (split into lesions by connectivity)
MASK_VALUES = (1, 255)


def label_lesions(lesions, split: str = "auto", source=None) -> np.ndarray:
    """Integer label map (X, Y, Z) from a lesion mask or label map.

    ``split="auto"``: a binary mask -- a bool mask, or one whose only non-zero value is 1 or 255
    (the usual mask values of NIfTI writers) -- is split into 26-connected components (labels 1..n
    in scan order); any other integer map is a label map and its labels are kept (a single label
    such as 3 included). ``"always"``: split any non-zero mask; ``"never"``: keep the labels as given.
    Non-integer values (a probability map) are refused with the threshold to use; negative labels
    are refused. ``source`` (a file name) is put in front of every message.
    """
    where = f"{source}: " if source is not None else ""
    lab = np.asarray(lesions)
    if lab.ndim != 3:
        raise InputError(f"{where}lesion map must be 3-D, got shape {lab.shape}")
    if split not in ("auto", "always", "never"):
        raise InputError(f"{where}split must be auto, always or never, got {split!r}")
    if lab.dtype != bool:
        if not np.all(np.isfinite(lab)):
            raise InputError(f"{where}lesion map contains NaN/inf values")
        if np.any(lab != np.round(lab)):
            lo, hi = float(lab.min()), float(lab.max())
            if lo >= 0 and hi <= 1:
                raise InputError(f"{where}lesion map has non-integer values in [0, 1] (a probability map); "
                                 f"threshold it first, e.g. at 0.5 (lesion where p > 0.5), and give the binary mask")
            raise InputError(f"{where}lesion map has non-integer values ({lo:g}..{hi:g}); give a binary mask "
                             f"or an integer label map")
        if np.any(lab < 0):
            raise InputError(f"{where}lesion map has negative labels; labels must be 0 (background) or positive")
        lab = np.round(lab).astype(np.int64)
    nz = lab != 0
    if lab.dtype == bool:
        binary = True
    else:
        vals = np.unique(lab[nz])
        binary = vals.size == 0 or (vals.size == 1 and int(vals[0]) in MASK_VALUES)
    if split == "always" or (split == "auto" and binary):
        out, _ = ndi.label(nz, structure=_STRUCT26)
        return out.astype(np.int32)
    return lab.astype(np.int32)


def _voxel_size(affine, voxel_size):
    if voxel_size is not None:
        vs = np.asarray(voxel_size, dtype=float).ravel()
        if vs.size != 3 or np.any(vs <= 0):
            raise InputError(f"voxel_size must be 3 positive numbers (mm), got {voxel_size!r}")
        return vs
    if affine is None:
        return np.ones(3)
    a = np.asarray(affine, dtype=float)
    return np.sqrt((a[:3, :3] ** 2).sum(axis=0))


def _check_inputs(maps, labels_shape, affine, labels_affine, masks):
    if not maps:
        raise InputError("no maps given; pass at least chi_para and chi_dia")
    out = {}
    for name, m in maps.items():
        if m is None:
            continue
        a = np.asarray(m, dtype=np.float64)
        if a.shape != labels_shape:
            raise InputError(f"lesion label map shape {labels_shape} differs from {name} shape {a.shape}: "
                             f"the label map is on another grid; resample it to the maps' grid "
                             f"(nearest neighbour) first")
        if not np.all(np.isfinite(a)):
            n = int(a.size - np.count_nonzero(np.isfinite(a)))
            raise InputError(f"map {name} contains {n} NaN/inf voxels; replace them (e.g. by 0 outside the brain)")
        out[name] = a
    if affine is not None and labels_affine is not None:
        A, B = np.asarray(affine, float), np.asarray(labels_affine, float)
        if A.shape != (4, 4) or B.shape != (4, 4) or not np.allclose(A, B, atol=1e-3):
            raise InputError("lesion label map affine differs from the maps' affine (same shape, other "
                             "position/orientation): the label map is on another grid; resample it to the "
                             "maps' grid (nearest neighbour) first")
    for name, m in masks.items():
        if m is not None and np.asarray(m).shape != labels_shape:
            raise InputError(f"{name} shape {np.asarray(m).shape} differs from the maps' shape {labels_shape}; "
                             f"resample it to the maps' grid first")
    return out


# --------------------------------------------------------------------------- main entry
def lesion_statistics(maps: dict, lesions, affine=None, *, voxel_size=None, labels_affine=None,
                      wm_mask=None, csf_mask=None, brain_mask=None, reference: str = "auto",
                      z_threshold: float = DEFAULT_Z_THRESHOLD, min_diff: dict | float | None = None,
                      robust: bool = True, shell_mm=(2.0, 5.0), exclusion_mm: float = 2.0,
                      rim_width_mm: float = 1.5, rim_min_diff: float = DEFAULT_RIM_MIN_DIFF,
                      small_lesion_voxels: int = 5, min_ref_voxels: int = 20, split: str = "auto") -> list:
    """Per-lesion statistics, NAWM reference, hyper/iso/hypo classes and rim flag (see module doc).

    Parameters
    ----------
    maps : dict name -> (X, Y, Z) array; ``chi_para``, ``chi_dia`` (|chi_dia|), ``chi_total`` in ppm,
        ``r2prime`` in Hz (all optional but at least one; the subtype needs chi_para and chi_dia).
    lesions : (X, Y, Z) binary mask or integer label map (see :func:`label_lesions`).
    affine : 4x4 voxel -> RAS+ (mm) of the maps; gives voxel size and centroids in mm.
    voxel_size : (3,) mm, overrides the affine's (default 1 mm if neither is given).
    labels_affine : 4x4 affine of the lesion map, checked against ``affine``.
    wm_mask, csf_mask, brain_mask : optional (X, Y, Z) masks (non-zero = inside).
    reference : ``"auto"`` (``"wm"`` if ``wm_mask`` else ``"shell"``), ``"wm"`` or ``"shell"``.
    z_threshold, min_diff, robust : classification rule; ``min_diff`` a float for every map or a
        dict name -> value (missing names take :data:`DEFAULT_MIN_DIFF`, unknown maps 0).
    shell_mm : (inner, outer) radii in mm of the perilesional reference ring.
    exclusion_mm : distance in mm around every lesion excluded from any reference.
    rim_width_mm, rim_min_diff : paramagnetic-rim analysis (mm, ppm).
    small_lesion_voxels : lesions with fewer voxels are flagged ``small_lesion``.
    min_ref_voxels : minimum reference size for a classification.
    split : see :func:`label_lesions`.

    Returns
    -------
    list of dict, one row per lesion label in increasing order (empty if there is no lesion).
    """
    lab = label_lesions(lesions, split=split)
    shape = lab.shape
    maps = _check_inputs({k: maps[k] for k in _ordered(maps)}, shape, affine, labels_affine,
                         {"wm_mask": wm_mask, "csf_mask": csf_mask, "brain_mask": brain_mask})
    if reference not in ("auto", "wm", "shell"):
        raise InputError(f"reference must be auto, wm or shell, got {reference!r}")
    if reference == "auto":
        reference = "wm" if wm_mask is not None else "shell"
    if reference == "wm" and wm_mask is None:
        raise InputError("reference='wm' needs a white-matter mask (wm_mask)")
    s_in, s_out = (float(v) for v in shell_mm)
    if not (0 <= s_in < s_out):
        raise InputError(f"shell_mm must be (inner, outer) with 0 <= inner < outer, got {shell_mm!r}")
    md = dict(DEFAULT_MIN_DIFF)
    if isinstance(min_diff, (int, float)):
        md = {k: float(min_diff) for k in set(md) | set(maps)}
    elif min_diff:
        md.update({k: float(v) for k, v in min_diff.items()})
    vs = _voxel_size(affine, voxel_size)
    A = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
    if affine is None:
        A[:3, :3] = np.diag(vs)

    labels = np.unique(lab[lab > 0])
    if labels.size == 0:
        return []
    brain = None if brain_mask is None else np.asarray(brain_mask) > 0
    wm = None if wm_mask is None else np.asarray(wm_mask) > 0
    csf = None if csf_mask is None else np.asarray(csf_mask) > 0
    # where a reference may lie (before lesion exclusion)
    if wm is not None:
        allowed = wm.copy() if brain is None else wm & brain
    elif brain is not None:
        allowed = brain.copy()
    else:
        allowed = np.zeros(shape, bool)
        for a in maps.values():
            allowed |= a != 0
    if csf is not None:
        allowed &= ~csf
    any_lesion = lab > 0
    global_ref = None
    if reference == "wm":
        d_all = ndi.distance_transform_edt(~any_lesion, sampling=vs)
        global_ref = allowed & (d_all > exclusion_mm)

    pad = int(np.ceil((max(s_out * 1.5 ** 3, exclusion_mm) + exclusion_mm) / vs.min())) + 2
    objs = ndi.find_objects(lab)
    rows = []
    for L in labels:
        sl0 = objs[int(L) - 1]
        sl = tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(sl0, shape))
        own = lab[sl] == L
        rows.append(_one_lesion(int(L), sl, own, maps, lab, brain, allowed, global_ref, any_lesion, A, vs,
                                s_in, s_out, exclusion_mm, z_threshold, md, robust, rim_width_mm,
                                rim_min_diff, small_lesion_voxels, min_ref_voxels, shape))
    return rows


def _ordered(maps):
    names = [k for k in MAP_ORDER if k in maps and maps[k] is not None]
    return names + [k for k in maps if k not in MAP_ORDER and maps[k] is not None]


def _one_lesion(L, sl, own, maps, lab, brain, allowed, global_ref, any_lesion, A, vs, s_in, s_out,
                exclusion_mm, z_thr, md, robust, rim_width_mm, rim_min_diff, small_n, min_ref, shape):
    notes = []
    idx_all = np.argwhere(own) + np.array([s.start for s in sl])
    n_label = len(idx_all)
    on_face = bool(np.any(idx_all == 0) or np.any(idx_all == np.array(shape) - 1))
    use = own if brain is None else own & brain[sl]
    touches = on_face
    if brain is not None:
        ring = ndi.binary_dilation(own, structure=_STRUCT26) & ~own
        touches = touches or bool(np.any(ring & ~brain[sl])) or bool(np.any(own & ~brain[sl]))
    n_use = int(use.sum())
    cen = idx_all.mean(axis=0)
    cen_mm = A[:3, :3] @ cen + A[:3, 3]
    row = {"label": L, "n_voxels": n_use, "n_voxels_label": n_label,
           "volume_mm3": round(n_use * float(np.prod(vs)), 4),
           "centroid_i": round(float(cen[0]), 3), "centroid_j": round(float(cen[1]), 3),
           "centroid_k": round(float(cen[2]), 3), "centroid_x_mm": round(float(cen_mm[0]), 3),
           "centroid_y_mm": round(float(cen_mm[1]), 3), "centroid_z_mm": round(float(cen_mm[2]), 3),
           "touches_border": touches, "small_lesion": n_use < small_n}
    if touches:
        notes.append("touches the volume or mask border: statistics on the voxels inside")
    if n_use < n_label:
        notes.append(f"{n_label - n_use} voxels outside the brain mask ignored")
    if row["small_lesion"]:
        notes.append(f"small lesion ({n_use} voxels): classified by its mean, no rim analysis")

    # reference voxels
    if global_ref is not None:
        ref = global_ref[sl]
        ref_full = global_ref
        row["reference"] = "wm"
    else:
        d_own = ndi.distance_transform_edt(~own, sampling=vs)
        d_all = ndi.distance_transform_edt(~any_lesion[sl], sampling=vs)
        base = allowed[sl] & (d_all > exclusion_mm)
        outer = s_out
        for _ in range(4):
            ref = base & (d_own > s_in) & (d_own <= outer)
            if ref.sum() >= min_ref:
                break
            outer *= 1.5
        if outer > s_out and ref.sum() >= min_ref:
            notes.append(f"reference ring grown to {outer:.1f} mm")
        ref_full = None
        row["reference"] = "shell"
    n_ref = int(ref_full.sum()) if ref_full is not None else int(ref.sum())
    row["ref_n_voxels"] = n_ref
    classifiable = n_use > 0 and n_ref >= min_ref
    if n_use == 0:
        notes.append("no lesion voxel inside the brain mask: unclassified")
    elif n_ref < min_ref:
        notes.append(f"only {n_ref} reference voxels (< {min_ref}): unclassified")

    ref_loc = {}
    for name, a in maps.items():
        vals = a[sl][use]
        rvals = a[ref_full] if ref_full is not None else a[sl][ref]
        st = describe(vals)
        rst = describe(rvals)
        for k in STATS:
            row[f"{name}_{k}"] = st[k]
        for k in STATS:
            row[f"{name}_ref_{k}"] = rst[k]
        if classifiable:
            loc, scale = location_scale(rvals, robust)
            diff = st["mean"] - loc
            z = diff / scale if scale > 0 else (0.0 if diff == 0 else float(np.sign(diff)) * np.inf)
            row[f"{name}_diff"] = diff
            row[f"{name}_z"] = z
            row[f"{name}_class"] = classify(diff, z, z_thr, md.get(name, 0.0))
            ref_loc[name] = loc
        else:
            row[f"{name}_diff"] = row[f"{name}_z"] = None
            row[f"{name}_class"] = "unclassified"

    # paramagnetic rim
    row.update({"rim": False, "rim_evaluable": False, "rim_n_voxels": 0, "core_n_voxels": 0,
                "rim_chi_para_mean": None, "core_chi_para_mean": None})
    if "chi_para" in maps and classifiable and not row["small_lesion"]:
        padded = np.pad(own, 1)
        depth = ndi.distance_transform_edt(padded, sampling=vs)[1:-1, 1:-1, 1:-1]
        inner = use & (depth <= rim_width_mm)
        core = use & (depth > rim_width_mm)
        row["rim_n_voxels"], row["core_n_voxels"] = int(inner.sum()), int(core.sum())
        if core.any() and inner.any():
            cp = maps["chi_para"][sl]
            rm, cm = float(cp[inner].mean()), float(cp[core].mean())
            row["rim_chi_para_mean"], row["core_chi_para_mean"] = rm, cm
            row["rim_evaluable"] = True
            row["rim"] = bool(rm - cm > rim_min_diff and rm - ref_loc["chi_para"] > rim_min_diff)
        else:
            notes.append("no lesion core deeper than the rim width: rim not evaluable")

    pc = row.get("chi_para_class")
    dc = row.get("chi_dia_class")
    if pc is not None and dc is not None:
        row["class_string"] = class_string(pc, dc)
        row["subtype"] = subtype_from_classes(pc, dc)
    else:
        row["class_string"] = None
        row["subtype"] = "unclassified"
    row["notes"] = "; ".join(notes)
    return row


# --------------------------------------------------------------------------- tables
def summary_counts(rows: list) -> dict:
    """Counts over a lesion table: per subtype, per class string, rims, small and border lesions.

    Returns
    -------
    dict with ``n_lesions``, ``subtypes`` (every name of :data:`SUBTYPES` plus ``other`` and
    ``unclassified``, zero included), ``classes`` (class string -> count), ``rims``,
    ``small_lesions``, ``touches_border``.
    """
    subtypes = {k: 0 for k in SUBTYPES + ("other", "unclassified")}
    classes = {}
    for r in rows:
        st = r.get("subtype") or "unclassified"
        subtypes[st] = subtypes.get(st, 0) + 1
        cs = r.get("class_string")
        if cs:
            classes[cs] = classes.get(cs, 0) + 1
    return {"n_lesions": len(rows), "subtypes": subtypes, "classes": classes,
            "rims": sum(1 for r in rows if r.get("rim")),
            "small_lesions": sum(1 for r in rows if r.get("small_lesion")),
            "touches_border": sum(1 for r in rows if r.get("touches_border"))}


def table_columns(map_names=("chi_para", "chi_dia", "chi_total")) -> list:
    """The column order of the lesion table for the given maps."""
    cols = ["label", "subtype", "class_string", "rim", "n_voxels", "n_voxels_label", "volume_mm3",
            "centroid_i", "centroid_j", "centroid_k", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
            "touches_border", "small_lesion", "reference", "ref_n_voxels"]
    for m in map_names:
        cols += [f"{m}_class", f"{m}_diff", f"{m}_z"] + [f"{m}_{k}" for k in STATS] \
            + [f"{m}_ref_{k}" for k in STATS]
    cols += ["rim_evaluable", "rim_chi_para_mean", "core_chi_para_mean", "rim_n_voxels", "core_n_voxels", "notes"]
    return cols


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    return str(v)


def write_lesion_csv(rows: list, path, map_names=None) -> Path:
    """Write the lesion table as CSV atomically (temp file + rename); booleans as 0/1, floats %.6g.

    An empty ``rows`` writes the header only (columns for ``map_names``, default para/dia/total).
    """
    path = Path(path)
    if map_names is None:
        present = {k for r in rows for k in r}
        map_names = [m for m in MAP_ORDER if f"{m}_mean" in present] or ["chi_para", "chi_dia", "chi_total"]
        extra = sorted({k[:-len("_class")] for k in present if k.endswith("_class")} - set(MAP_ORDER))
        map_names += extra
    cols = table_columns(map_names)
    for r in rows:
        cols += [k for k in r if k not in cols]
    from .io import write_text_atomically

    def write(fh):
        w = csv.writer(fh)
        w.writerow(cols)
        for r in rows:
            w.writerow([_fmt(r.get(c)) for c in cols])
    return write_text_atomically(path, ".csv", write, newline="")
