"""Tissue maps of one subject: normative values, nuclei, veins, air pockets, the random
deformation and per-subject parameters, and the air/tissue susceptibility source."""
from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

from .template import (_BRAIN_CENTRE, _Grid, _NECK_AXIS, _NECK_TAPER_MM, _TPL_ORIGIN, _lattice_index,
                       _lattice_shape, _sample, _smooth_noise, _template)

# --------------------------------------------------------------------------- constants
#: Integer labels of the ``truth["tissue"]`` map.
TISSUE_LABELS = {
    "background": 0,
    "csf": 1,
    "cortex": 2,            # cortical (and other) grey matter
    "white_matter": 3,
    "caudate": 4,
    "putamen": 5,
    "globus_pallidus": 6,
    "thalamus": 7,
    "substantia_nigra": 8,
    "red_nucleus": 9,
    "dentate": 10,
    "vessel": 11,
    "lesion": 12,
}

#: Normative tissue values: chi_para (ppm), |chi_dia| (ppm), R2 (Hz), M0 (a.u.).
#: Nuclei/WM chi from adult normative values (docs/DESIGN.md, "Physics"); thalamus, dentate and
#: cortex from the chi-separation literature (approximate); per seed each value is scaled by U(0.85, 1.15) (chi) or less (R2, M0).
TISSUE_VALUES = {
    "csf": (0.0, 0.0, 1.0, 1.00),
    "cortex": (0.022, 0.011, 12.5, 0.82),
    "white_matter": (0.017, 0.029, 14.5, 0.70),
    "caudate": (0.048, 0.008, 14.0, 0.80),
    "putamen": (0.077, 0.010, 16.0, 0.79),
    "globus_pallidus": (0.132, 0.013, 19.5, 0.74),
    "thalamus": (0.040, 0.018, 14.5, 0.77),
    "substantia_nigra": (0.116, 0.011, 19.0, 0.75),
    "red_nucleus": (0.112, 0.010, 18.5, 0.75),
    "dentate": (0.095, 0.012, 17.5, 0.76),
    "vessel": (0.40, 0.0, 18.0, 0.80),
}

#: Deep grey nuclei as ellipsoids in MNI mm: name -> list of (centre of the right one, semi-axes);
#: each is mirrored to the left (x -> -x). Painted in this order (later wins where they touch).
NUCLEI = {
    "caudate": [((13.0, 12.0, 9.0), (5.0, 8.0, 8.0)), ((16.0, -4.0, 18.0), (4.0, 10.0, 4.5))],
    "putamen": [((25.0, 4.0, 1.0), (5.0, 14.0, 8.5))],
    "thalamus": [((10.0, -18.0, 6.0), (7.0, 12.0, 8.0))],
    "globus_pallidus": [((19.0, -3.0, -1.0), (4.0, 8.0, 5.0))],
    "substantia_nigra": [((10.0, -16.0, -12.0), (3.0, 7.0, 3.0))],
    "red_nucleus": [((5.0, -20.0, -8.0), (3.5, 4.0, 4.0))],
    "dentate": [((15.0, -57.0, -35.0), (6.0, 8.0, 6.0))],
}

#: Fixed deep veins in MNI mm: (polyline points of the right one or midline, radius mm, bilateral).
VEINS = [
    ([(3.0, 3.0, 11.0), (2.5, -12.0, 12.0), (2.0, -28.0, 11.0), (1.0, -38.0, 8.0)], 1.2, True),   # internal cerebral
    ([(19.0, -12.0, 19.0), (13.0, -3.0, 15.0), (4.0, 2.0, 11.0)], 0.9, True),                    # thalamostriate
    ([(20.0, 2.0, -13.0), (18.0, -18.0, -9.0), (10.0, -33.0, 0.0), (3.0, -39.0, 6.0)], 1.0, True),  # basal v. of Rosenthal
    ([(0.0, -38.0, 7.0), (0.0, -46.0, 13.0), (0.0, -68.0, 11.0), (0.0, -90.0, 4.0)], 1.8, False),  # Galen -> straight sinus
]

#: Air pockets in MNI mm: (centre of the right one or midline, semi-axes, bilateral).
AIR_POCKETS = [
    ((0.0, 73.0, 2.0), (13.0, 6.0, 10.0), False),    # frontal sinus
    ((0.0, 14.0, -40.0), (12.0, 11.0, 9.0), False),  # sphenoid sinus
    ((44.0, -34.0, -52.0), (8.0, 9.0, 8.0), True),   # mastoid air cells
    ((60.0, -20.0, -42.0), (7.0, 4.0, 4.0), True),   # ear canal
]

#: Susceptibility of head tissue relative to air (ppm): water -9.05, air +0.36.
CHI_TISSUE_VS_AIR = -9.4


# --------------------------------------------------------------------------- subject parameters
def _draw_subject(seed: int, size: str) -> dict:
    """All seed-dependent parameters except lesions (placed later, they need the anatomy)."""
    ss = np.random.SeedSequence(int(seed))
    r_def, r_val, r_tex, r_les, r_noise, r_shim, r_vein = [np.random.default_rng(s) for s in ss.spawn(7)]
    P = {"rng_lesions": r_les, "rng_noise": r_noise}
    # deformation: global scaling + smooth displacement (RMS a few mm) on a 12 mm lattice,
    # refined to a 4 mm lattice (cubic) for linear interpolation.
    P["scale"] = r_def.uniform(0.95, 1.05, 3)
    amp = r_def.uniform(1.5, 3.0)
    disp = []
    for _ in range(3):
        d = r_def.standard_normal(_lattice_shape(12.0))
        d = ndi.gaussian_filter(d, 1.0, mode="nearest")
        d *= amp / max(float(d.std()), 1e-12)
        fine = _lattice_shape(4.0)
        z = [f / c for f, c in zip(fine, d.shape)]
        disp.append(ndi.zoom(d, z, order=3, mode="nearest", grid_mode=False).astype(np.float32))
    P["disp"] = disp
    P["disp_max"] = float(max(np.abs(d).max() for d in disp))
    P["disp_rms_mm"] = float(amp)
    # tissue values
    vals = {}
    for name, (cp, cd, r2, m0) in TISSUE_VALUES.items():
        vals[name] = (cp * r_val.uniform(0.85, 1.15), cd * r_val.uniform(0.85, 1.15),
                      r2 * r_val.uniform(0.93, 1.07), m0 * r_val.uniform(0.95, 1.05))
    vals["csf"] = (0.0, 0.0, vals["csf"][2], vals["csf"][3])
    P["values"] = vals
    P["head_mm"] = r_val.uniform(10.0, 14.0)     # skull + scalp thickness
    P["skull_mm"] = r_val.uniform(4.5, 7.0)
    P["air_scale"] = r_val.uniform(0.75, 1.25, len(AIR_POCKETS))
    P["nuc_scale"] = {name: r_val.uniform(0.9, 1.1, 3) for name in NUCLEI}   # nucleus sizes
    # textures (unit variance): chi_para, chi_dia, r2, m0 at ~4 mm; phase offset at ~25 mm
    P["tex"] = [_smooth_noise(r_tex, 2.0, 4.0) for _ in range(4)]
    P["tex_phi"] = _smooth_noise(r_tex, 6.0, 25.0)
    # shim residual (harmonic): gradient (ppm/mm) + second-order terms (ppm/mm^2)
    g = r_shim.standard_normal(3)
    P["shim_grad"] = g / np.linalg.norm(g) * r_shim.uniform(0.003, 0.006)
    P["shim_quad"] = r_shim.normal(0.0, 1.5e-5, 5)
    # smooth receiver phase offset phi0 (rad)
    P["phi0_const"] = r_shim.uniform(-1.0, 1.0)
    s = r_shim.standard_normal(3)
    P["phi0_grad"] = s / np.linalg.norm(s) * r_shim.uniform(0.005, 0.012)
    # medullary veins (template space), in periventricular white matter
    med = []
    for _ in range(6):
        side = r_vein.choice([-1.0, 1.0])
        start = np.array([side * r_vein.uniform(14, 24), r_vein.uniform(-30, 18), r_vein.uniform(20, 34)])
        d = np.array([side * 1.0, r_vein.normal(0, 0.3), r_vein.normal(0.4, 0.3)])
        d /= np.linalg.norm(d)
        end = start + d * r_vein.uniform(12, 20)
        med.append(([tuple(start), tuple(end)], r_vein.uniform(0.6, 0.9), False))
    P["veins"] = list(VEINS) + med
    return P


def _to_template(x, P):
    """Subject mm (3, ...) -> template (MNI) mm: c + (x - c) / scale + displacement(x)."""
    idx = _lattice_index(x, 4.0)
    p = np.empty_like(x, dtype=np.float32)
    for a in range(3):
        p[a] = _sample(P["disp"][a], idx, order=1, mode="nearest")
        p[a] += _BRAIN_CENTRE[a] + (x[a] - _BRAIN_CENTRE[a]) / P["scale"][a]
    return p


def _subject_box(lo_t, hi_t, P, margin=2.0):
    """Subject-space box that surely contains the template-space box [lo_t, hi_t]."""
    m = P["disp_max"] + margin
    lo = _BRAIN_CENTRE + (np.asarray(lo_t) - m - _BRAIN_CENTRE) * P["scale"]
    hi = _BRAIN_CENTRE + (np.asarray(hi_t) + m - _BRAIN_CENTRE) * P["scale"]
    return np.minimum(lo, hi), np.maximum(lo, hi)


# --------------------------------------------------------------------------- geometry primitives
def _ellipsoid_weight(p, centre, radii, edge_mm=1.0, rot=None):
    """Soft ellipsoid membership in [0, 1] (linear edge ~``edge_mm`` wide) and depth below surface (mm)."""
    u = [p[a] - np.float32(centre[a]) for a in range(3)]
    if rot is not None:
        u = [rot[0, a] * u[0] + rot[1, a] * u[1] + rot[2, a] * u[2] for a in range(3)]
    r = np.sqrt(sum((u[a] / np.float32(radii[a])) ** 2 for a in range(3)))
    depth = (1.0 - r) * np.float32(min(radii))
    return np.clip(depth / edge_mm + 0.5, 0.0, 1.0).astype(np.float32), depth


def _segment_distance(p, a, b):
    """Distance (mm) of points p (3, ...) to the segment a-b."""
    a = np.asarray(a, dtype=np.float32)
    ab = np.asarray(b, dtype=np.float32) - a
    L2 = float(ab @ ab)
    ap = [p[i] - a[i] for i in range(3)]
    t = np.clip((ap[0] * ab[0] + ap[1] * ab[1] + ap[2] * ab[2]) / max(L2, 1e-12), 0.0, 1.0)
    return np.sqrt(sum((ap[i] - t * ab[i]) ** 2 for i in range(3)))


def _mirror(pt):
    return (-pt[0], pt[1], pt[2])


def _nucleus_list(P=None):
    """(name, centre, semi-axes) of every nucleus ellipsoid, both sides, sizes scaled per subject."""
    out = []
    for name, parts in NUCLEI.items():
        s = np.ones(3) if P is None else P["nuc_scale"][name]
        for c, r in parts:
            r = tuple(float(v) for v in np.asarray(r) * s)
            out.append((name, c, r))
            out.append((name, _mirror(c), r))
    return out


def _vein_segments(P):
    segs = []
    for pts, rad, bilateral in P["veins"]:
        sides = [pts, [_mirror(q) for q in pts]] if bilateral else [pts]
        for s in sides:
            for a, b in zip(s[:-1], s[1:]):
                segs.append((np.array(a), np.array(b), rad))
    return segs


# --------------------------------------------------------------------------- anatomy
def _anatomy(grid: _Grid, P: dict, lesions=(), progress=None) -> dict:
    """Evaluate every tissue map of subject ``P`` on ``grid`` (float32 maps, bool masks)."""
    T = _template()
    V = P["values"]
    x = grid.coords()
    p = _to_template(x, P)
    idx = p.copy()
    for a in range(3):
        idx[a] -= _TPL_ORIGIN[a]
    brain_f = _sample(T["brain"], idx)
    brain = brain_f >= 0.5
    gm = _sample(T["gm"], idx) * brain
    wm = _sample(T["wm"], idx) * brain
    t1 = _sample(T["t1"], idx) * brain
    tot = gm + wm
    over = tot > 1.0
    gm[over] /= tot[over]
    wm[over] /= tot[over]
    tissue_frac = np.minimum(gm + wm, 1.0)
    csf = (1.0 - tissue_frac) * brain
    # distance outside the brain; below the template the head goes on as a neck that narrows
    # (cross-section shrinks towards the brainstem axis, half size after _NECK_TAPER_MM)
    taper = 1.0 + np.maximum(np.float32(_TPL_ORIGIN[2]) - p[2], 0.0) / np.float32(_NECK_TAPER_MM)
    for a in range(3):
        q = p[a] if a == 2 else _NECK_AXIS[a] + (p[a] - _NECK_AXIS[a]) * taper
        idx[a] = (q - _TPL_ORIGIN[a] - 0.5) / 2.0
    del taper
    dist = _sample(T["dist_out"], idx, mode="nearest")
    del idx
    if progress:
        progress(0.3, "tissue maps")
    # textures in subject space
    tidx = _lattice_index(x, 2.0)
    tex = [_sample(t, tidx, mode="nearest") for t in P["tex"]]
    del tidx
    phi_tex = _sample(P["tex_phi"], _lattice_index(x, 6.0), mode="nearest")

    def mix(k):
        num = gm * V["cortex"][k] + wm * V["white_matter"][k]
        return np.where(tissue_frac > 0, num / np.maximum(tissue_frac, 1e-6), 0.0).astype(np.float32)

    para_t, dia_t, r2_t, m0_t = (mix(k) for k in range(4))     # values of the tissue part
    nuc_w = np.zeros(grid.shape, np.float32)
    nuc_id = np.zeros(grid.shape, np.int16)
    for name, c, r in _nucleus_list(P):
        lo, hi = _subject_box(np.subtract(c, r), np.add(c, r), P)
        sl = grid.box_slices(lo, hi)
        if sl is None:
            continue
        w, _ = _ellipsoid_weight(p[(slice(None),) + sl], c, r, edge_mm=1.5)
        vp, vd, vr, vm = V[name]
        for arr, v in ((para_t, vp), (dia_t, vd), (r2_t, vr), (m0_t, vm)):
            arr[sl] = (1 - w) * arr[sl] + w * v
        sel = w > nuc_w[sl]
        nuc_w[sl] = np.where(sel, w, nuc_w[sl])
        nuc_id[sl] = np.where(sel & (w >= 0.5), TISSUE_LABELS[name], nuc_id[sl])
    # texture on tissue values (chi +-8 %, R2 +-4 %, M0 +-3 %)
    para_t *= 1.0 + 0.08 * np.clip(tex[0], -2.5, 2.5)
    dia_t *= 1.0 + 0.08 * np.clip(tex[1], -2.5, 2.5)
    r2_t *= 1.0 + 0.04 * np.clip(tex[2], -2.5, 2.5)
    m0_t *= (1.0 + 0.03 * np.clip(tex[3], -2.5, 2.5)) * (1.0 + 0.05 * (t1 - 0.75))
    vc = V["csf"]
    chi_para = tissue_frac * para_t
    chi_dia = tissue_frac * dia_t
    r2 = tissue_frac * r2_t + csf * vc[2]
    m0 = tissue_frac * m0_t + csf * vc[3]
    del para_t, dia_t, r2_t, m0_t
    if progress:
        progress(0.5, "veins")
    # veins (in brain only)
    fv = np.zeros(grid.shape, np.float32)
    for a_, b_, rad in _vein_segments(P):
        lo, hi = _subject_box(np.minimum(a_, b_) - rad, np.maximum(a_, b_) + rad, P)
        sl = grid.box_slices(lo, hi)
        if sl is None:
            continue
        d = _segment_distance(p[(slice(None),) + sl], a_, b_)
        f = np.clip(rad + 0.5 - d, 0.0, 1.0)
        fv[sl] = np.maximum(fv[sl], f)
    fv *= brain
    vv = V["vessel"]
    chi_para = (1 - fv) * chi_para + fv * vv[0]
    chi_dia = (1 - fv) * chi_dia + fv * vv[1]
    r2 = (1 - fv) * r2 + fv * vv[2]
    m0 = (1 - fv) * m0 + fv * vv[3]
    # lesions (subject space)
    lesion_lab = np.zeros(grid.shape, np.int16)
    for les in lesions:
        lo, hi = np.asarray(les["centre"]) - max(les["radii"]) - 1, np.asarray(les["centre"]) + max(les["radii"]) + 1
        sl = grid.box_slices(lo, hi)
        if sl is None:
            continue
        w, depth = _ellipsoid_weight(x[(slice(None),) + sl], les["centre"], les["radii"], edge_mm=1.0,
                                     rot=les["rot"])
        w *= brain[sl]
        cp = (1 - w) * chi_para[sl] + w * les["para"]
        if les["rim"]:
            rimw = w * np.clip((les["rim_mm"] + 0.5 - depth) / 1.0, 0.0, 1.0)
            cp = cp + rimw * les["rim_delta"]
        chi_para[sl] = cp
        chi_dia[sl] = (1 - w) * chi_dia[sl] + w * les["dia"]
        r2[sl] = (1 - w) * r2[sl] + w * r2[sl] * les["r2_factor"]
        m0[sl] = (1 - w) * m0[sl] + w * m0[sl] * les["m0_factor"]
        lesion_lab[sl] = np.where(w >= 0.5, les["label"], lesion_lab[sl])
    # head: skull and scalp shells, air pockets
    head = brain | (dist <= P["head_mm"])
    air = np.zeros(grid.shape, bool)
    for (c, r, bil), s in zip(AIR_POCKETS, P["air_scale"]):
        r = np.asarray(r) * s
        for cc in ([c, _mirror(c)] if bil else [c]):
            lo, hi = _subject_box(np.subtract(cc, r), np.add(cc, r), P)
            sl = grid.box_slices(lo, hi)
            if sl is None:
                continue
            w, _ = _ellipsoid_weight(p[(slice(None),) + sl], cc, r)
            air[sl] |= (w >= 0.5) & head[sl] & (dist[sl] >= 2.0)
    skull = head & ~brain & ~air & (dist <= P["skull_mm"])
    scalp = head & ~brain & ~air & ~skull
    r2 = np.where(skull, 50.0, np.where(scalp, 28.0, r2)).astype(np.float32)
    m0 = np.where(skull, 0.03, np.where(scalp, 0.55 * (1 + 0.05 * tex[3]), m0)).astype(np.float32)
    m0[air | ~head] = 0.0
    r2[air | ~head] = 0.0
    # labels
    lab = np.zeros(grid.shape, np.int16)
    lab[brain & (gm >= wm)] = TISSUE_LABELS["cortex"]
    lab[brain & (wm > gm)] = TISSUE_LABELS["white_matter"]
    lab[brain & (csf >= 0.5)] = TISSUE_LABELS["csf"]
    nuc = (nuc_id > 0) & brain & (tissue_frac >= 0.5)
    lab[nuc] = nuc_id[nuc]
    lab[fv >= 0.5] = TISSUE_LABELS["vessel"]
    lab[lesion_lab > 0] = TISSUE_LABELS["lesion"]
    # phase offset (rad), smooth
    phi0 = np.float32(P["phi0_const"]) + 0.6 * phi_tex
    for a in range(3):
        phi0 += np.float32(P["phi0_grad"][a]) * (x[a] - np.float32(_BRAIN_CENTRE[a]))
    chi_para = (chi_para * brain).astype(np.float32)
    chi_dia = (chi_dia * brain).astype(np.float32)
    return {"x": x, "brain": brain, "head": head & ~air, "air": air, "wm": wm, "csf": csf,
            "chi_para": chi_para, "chi_dia": chi_dia, "r2": r2, "m0": m0, "phi0": phi0.astype(np.float32),
            "vessel_frac": fv, "lesions": lesion_lab, "tissue": lab, "nuc_w": nuc_w}


def _shim(x, P):
    """Harmonic low-order shim residual (ppm) at subject coordinates x (3, ...)."""
    u = [x[a] - np.float32(_BRAIN_CENTRE[a]) for a in range(3)]
    g, q = P["shim_grad"], P["shim_quad"]
    f = g[0] * u[0] + g[1] * u[1] + g[2] * u[2]
    f = f + q[0] * (u[0] ** 2 - u[1] ** 2) + q[1] * u[0] * u[1] + q[2] * u[0] * u[2] \
        + q[3] * u[1] * u[2] + q[4] * (2 * u[2] ** 2 - u[0] ** 2 - u[1] ** 2)
    return f.astype(np.float32)



def _air_tissue_source(head, brain, sigma_vox):
    """Susceptibility of head tissue relative to air (ppm): CHI_TISSUE_VS_AIR in the head, 0 outside,
    with a slightly smooth boundary (Gaussian, ``sigma_vox`` voxels): a sharp step sampled on the grid
    rings inside the brain when B0 is oblique, and the field would then not be harmonic there. The
    smoothing must stay outside the brain: air lies >= 2 mm from it, yet a 1 mm Gaussian's tail
    still leaves ~0.2 ppm at the brain surface next to the sinuses, a non-harmonic "background" no
    method could remove, so the brain keeps the tissue value exactly."""
    src = ndi.gaussian_filter(np.where(head, np.float32(CHI_TISSUE_VS_AIR), np.float32(0.0)),
                              sigma_vox).astype(np.float32)
    src[brain] = np.float32(CHI_TISSUE_VS_AIR)
    return src


