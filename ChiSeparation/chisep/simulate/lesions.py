"""MS-like lesions: placement in white matter (four subtypes, some with a paramagnetic rim) and
the lesion table measured from the maps."""
from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

from .anatomy import _nucleus_list, _segment_distance, _to_template, _vein_segments
from .template import _TPL_ORIGIN, _sample, _template

_SUBTYPES = ("iron", "demyelinated", "both", "neither")


# --------------------------------------------------------------------------- lesions
def _random_rotation(rng):
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _place_lesions(P, n, region_lo, region_hi):
    """Draw ``n`` lesions (subtypes cycling through all four) inside white matter of the region."""
    rng = P["rng_lesions"]
    T = _template()
    V = P["values"]
    wm_para, wm_dia = V["white_matter"][0], V["white_matter"][1]
    subtypes = [_SUBTYPES[i % 4] for i in range(n)]
    order = rng.permutation(4)
    subtypes = [_SUBTYPES[order[i % 4]] for i in range(n)]
    # a rim on about half of the iron-bearing lesions (at least one when there is one)
    iron_idx = [i for i, s in enumerate(subtypes) if s in ("iron", "both")]
    rims = set(iron_idx[::2])
    nuclei = _nucleus_list(P)
    segs = _vein_segments(P)
    dirs = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)
                     if (i, j, k) != (0, 0, 0)], float)
    dirs /= np.linalg.norm(dirs, axis=1)[:, None]
    placed = []
    for i, st in enumerate(subtypes):
        rim = i in rims
        ok = False
        for attempt in range(400):
            relax = attempt // 100          # loosen the criteria gradually
            base = rng.uniform(3.0, 4.0) if rim else rng.uniform(2.0, 4.0)
            base = max(base * (1.0 - 0.1 * relax), 1.8)
            radii = base * rng.uniform(0.8, 1.25, 3)
            rot = _random_rotation(rng)
            m = max(radii) + 2.0
            lo, hi = np.asarray(region_lo) + m, np.asarray(region_hi) - m
            if np.any(hi <= lo):
                continue
            c = rng.uniform(lo, hi)
            pts = c[None, :] + 1.3 * (dirs * radii[None, :]) @ rot.T
            pts = np.vstack([c[None, :], pts, c[None, :] + 0.6 * (dirs * radii[None, :]) @ rot.T])
            pt = _to_template(pts.T.astype(np.float32), P)
            ti = pt - _TPL_ORIGIN[:, None].astype(np.float32)
            wmv = _sample(T["wm"], ti)
            brv = _sample(T["brain"], ti)
            if wmv[0] < 0.85 - 0.1 * relax or wmv.min() < 0.5 - 0.15 * relax or brv.min() < 0.99:
                continue
            # keep clear of nuclei, veins and other lesions
            ct = pt[:, 0]
            if any(np.linalg.norm((ct - np.asarray(nc)) / (np.asarray(nr) + max(radii) + 2.0)) < 1.0
                   for _, nc, nr in nuclei):
                continue
            cpt = ct.reshape(3, 1)
            if any(float(_segment_distance(cpt, a_, b_)[0]) < rad + max(radii) + 2.0 for a_, b_, rad in segs):
                continue
            if any(np.linalg.norm(c - q["centre"]) < max(radii) + max(q["radii"]) + 3.0 for q in placed):
                continue
            ok = True
            break
        if not ok:
            continue
        if st in ("iron", "both"):
            para = wm_para + rng.uniform(0.035, 0.06)
        else:
            para = wm_para * rng.uniform(0.95, 1.05)
        if st in ("demyelinated", "both"):
            dia = wm_dia * rng.uniform(0.25, 0.5)
        else:
            dia = wm_dia * rng.uniform(0.95, 1.05)
        placed.append({"centre": c, "radii": radii, "rot": rot, "subtype": st, "rim": rim,
                       "para": float(para), "dia": float(dia),
                       "rim_delta": float(rng.uniform(0.05, 0.09)), "rim_mm": 1.0,
                       "r2_factor": float(rng.uniform(0.7, 0.85)), "m0_factor": float(rng.uniform(1.05, 1.15))})
    for k, les in enumerate(placed):
        les["label"] = k + 1
    return placed


def _lesion_table(placed, labels, chi_para, chi_dia, voxel_size):
    """Table rows from the maps: one per label present (labels renumbered 1..n in order)."""
    rows = []
    vvox = float(np.prod(voxel_size))
    idx = np.arange(1, labels.max() + 1) if labels.size and labels.max() > 0 else np.array([], int)
    if idx.size:
        counts = ndi.sum_labels(np.ones_like(chi_para), labels, idx)
        sp = ndi.sum_labels(chi_para.astype(np.float64), labels, idx)
        sd = ndi.sum_labels(chi_dia.astype(np.float64), labels, idx)
        coms = ndi.center_of_mass(np.ones_like(chi_para), labels, idx)
    by_label = {les["label"]: les for les in placed}
    for j, lab in enumerate(idx):
        n = int(round(counts[j]))
        if n == 0:
            continue
        les = by_label[int(lab)]
        rows.append({"label": int(lab), "subtype": les["subtype"], "rim": bool(les["rim"]),
                     "volume_mm3": round(n * vvox, 3), "n_voxels": n,
                     "chi_para_mean": float(sp[j] / n), "chi_dia_mean": float(sd[j] / n),
                     "center_ijk": [round(float(v), 2) for v in coms[j]]})
    return rows


def _renumber_lesions(table, labels):
    """Relabel to 1..n in table order when some lesion fell off the grid (updates ``table`` in place)."""
    if not table or [r["label"] for r in table] == list(range(1, len(table) + 1)):
        return labels
    lut = np.zeros(int(labels.max()) + 1, np.int16)
    for j, r in enumerate(table):
        lut[r["label"]] = j + 1
        r["label"] = j + 1
    return lut[labels]


