"""A simulated head with ground truth: chi_para, |chi_dia|, fields, relaxation and acquisitions.

Anatomy comes from the MNI ICBM152 2009 (sym, 09a) 1 mm T1, grey- and white-matter templates that
nilearn ships in its package data (read offline with nibabel). Every subject (``seed``) differs by
a smooth random deformation, per-structure values, textures, veins, lesions, shim and noise.

Model (docs/DESIGN.md, "Physics")
---------------------------------
* chi in ppm; ``chi_dia`` is a positive magnitude; chi_total = chi_para - chi_dia, defined inside
  the brain (tissue outside the brain, skull and scalp, is the reference 0).
* Tissue chi from partial volumes of CSF / grey / white matter, deep grey nuclei as smooth
  ellipsoids at their MNI positions (bilateral), veins as paramagnetic tubes, MS-like lesions of
  four subtypes in white matter (``iron`` = chi_para up, ``demyelinated`` = chi_dia down, ``both``,
  ``neither``), some iron lesions with a thin paramagnetic rim.
* R2 (Hz) per tissue; R2' = Dr * (chi_para + chi_dia) with Dr = ``physics.DR_CHISEPNET``;
  R2* = R2 + R2'; M0 proton-density-like (CSF brightest).
* Local field (ppm) = ``physics.forward_field(chi_total * brain)`` on the output grid. For
  ``size="small"`` that is the field of the chi inside the block; everything else (air/tissue
  interfaces of the whole head, tissue outside the block) is background.
* Background field (ppm): the head (brain dilated by skull and scalp, continued below the template
  as a neck) at -9.4 ppm relative to air, with air pockets (frontal/sphenoid sinuses, mastoids,
  ear canals), through the same forward model; plus a low-order harmonic shim residual; its mean
  over the brain is removed (the scanner's frequency adjustment). It is harmonic inside the brain.
* GRE echo e: S = M0 exp(-R2* TE_e) exp(i (phase_sign 2 pi f_hz TE_e + phi0)), f_hz from
  total_field = local + background; SE echo: M0 exp(-R2 TE). Complex Gaussian noise of
  sigma = mean brain M0 / snr on real and imaginary parts. Signal only inside the head.
* A B0 tilt is an oblique acquisition: the affine is rotated so that
  ``physics.b0_direction_from_affine(affine) == b0_dir`` (B0 along world S).
"""
from __future__ import annotations

import csv
import functools
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import scipy.ndimage as ndi

from . import physics
from .io import InputError, atomic_output_dir, save_nifti, write_json

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
#: Template grid (MNI ICBM152 2009 1 mm): origin of voxel (0,0,0) in mm and shape.
_TPL_ORIGIN = np.array([-98.0, -134.0, -72.0])
_TPL_SHAPE = (197, 233, 189)
#: Neck: the head continues this many mm below the template's field of view (background only).
_NECK_MM = 48.0
#: Neck axis (x, y in MNI mm) and the depth (mm) over which the neck narrows to half the head.
_NECK_AXIS = (0.0, -38.0)
_NECK_TAPER_MM = 30.0
#: World box covered by the random lattices (deformation, textures), mm.
_LAT_LO = np.array([-112.0, -148.0, -72.0 - _NECK_MM - 12.0])
_LAT_HI = np.array([112.0, 112.0, 130.0])
#: Approximate centre of the brain (mm): centre of the global scaling and the shim expansion.
_BRAIN_CENTRE = np.array([0.0, -18.0, 18.0])
#: The small block: 64 mm cube around the basal ganglia / midbrain, lower corner in MNI mm.
_SMALL_LO = np.array([-32.0, -38.0, -24.0])
_SMALL_MM = 64.0
#: Lesions of the small block stay this far (mm, plus their radius + 2) inside the block faces.
_SMALL_INSET_MM = 5.0

_SIZES = ("small", "full")
_SUBTYPES = ("iron", "demyelinated", "both", "neither")
_TEMPLATE_FILES = {k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}


# --------------------------------------------------------------------------- result
@dataclass
class SimulatedHead:
    """A simulated subject: acquisitions, acquisition parameters and ground truth.

    Arrays are in NIfTI order (i, j, k[, echo]); ``affine`` maps voxel -> RAS+ mm.
    ``gre_mag``/``gre_phase`` (X, Y, Z, E) float32 (phase wrapped to [-pi, pi) rad);
    ``se_mag`` (X, Y, Z, E_se) float32 or None; ``truth`` maps are 3-D (see module docstring).
    """
    affine: np.ndarray
    voxel_size: np.ndarray
    b0_dir: np.ndarray
    b0_t: float
    te_s: tuple
    se_te_s: Optional[tuple]
    seed: int
    gre_mag: np.ndarray
    gre_phase: np.ndarray
    se_mag: Optional[np.ndarray]
    truth: dict
    lesion_table: list
    size: str = "small"
    snr: Optional[float] = None
    noise_sigma: float = 0.0
    phase_sign: int = 1
    tilt_deg: float = 0.0
    params: dict = field(default_factory=dict)

    @property
    def shape(self):
        """Spatial shape (X, Y, Z)."""
        return tuple(self.gre_mag.shape[:3])


# --------------------------------------------------------------------------- template
def _template_dir() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the simulated head needs the 'nilearn' package (it ships the MNI ICBM152 "
                         "template); install it with: pip install nilearn")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


@functools.lru_cache(maxsize=1)
def _template():
    """The MNI ICBM152 2009 templates (scaled 0..1) + brain mask + distance-outside-brain lattice.

    Cached per process (seed independent). Returns a dict of float32 arrays on the 1 mm template
    grid ('t1', 'gm', 'wm', 'brain') and 'dist_out' (mm from the brain) on a 2 mm lattice whose
    voxel (0,0,0) centre is at ``_TPL_ORIGIN + 0.5``.
    """
    import nibabel as nib

    d = _template_dir()
    out = {}
    for key, name in _TEMPLATE_FILES.items():
        p = d / name
        if not p.exists():
            raise InputError(f"MNI template file not found: {p}; reinstall nilearn (its package data "
                             f"holds the ICBM152 2009 templates)")
        img = nib.load(str(p))
        arr = np.asarray(img.dataobj, dtype=np.float32) / 255.0
        if arr.shape != _TPL_SHAPE:
            raise InputError(f"{p}: unexpected template shape {arr.shape}, expected {_TPL_SHAPE}")
        out[key] = arr
    brain = ndi.binary_fill_holes(out["t1"] > 0)
    out["brain"] = brain.astype(np.float32)
    # distance outside the brain on a 2 mm lattice (cheap; only drives the skull/scalp shells)
    pad = [(0, s % 2) for s in brain.shape]
    b2 = np.pad(brain, pad).reshape(brain.shape[0] // 2 + pad[0][1], 2, brain.shape[1] // 2 + pad[1][1], 2,
                                     brain.shape[2] // 2 + pad[2][1], 2).any(axis=(1, 3, 5))
    out["dist_out"] = ndi.distance_transform_edt(~b2, sampling=2.0).astype(np.float32)
    return out


# --------------------------------------------------------------------------- grids
@dataclass
class _Grid:
    """A regular grid in subject (pre-tilt, MNI-like) mm: x = origin + vs * index."""
    origin: np.ndarray
    vs: np.ndarray
    shape: tuple

    def axes(self):
        return [self.origin[a] + self.vs[a] * np.arange(self.shape[a], dtype=np.float64) for a in range(3)]

    def coords(self):
        """(3, X, Y, Z) float32 subject coordinates in mm."""
        ax = self.axes()
        out = np.empty((3,) + tuple(self.shape), dtype=np.float32)
        for a in range(3):
            sh = [1, 1, 1]
            sh[a] = self.shape[a]
            out[a] = ax[a].reshape(sh)
        return out

    def box_slices(self, lo, hi):
        """Index slices of the voxels whose centres lie in [lo, hi] (mm); None if empty."""
        sl = []
        for a in range(3):
            i0 = int(np.ceil((lo[a] - self.origin[a]) / self.vs[a]))
            i1 = int(np.floor((hi[a] - self.origin[a]) / self.vs[a])) + 1
            i0, i1 = max(i0, 0), min(i1, self.shape[a])
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
        return tuple(sl)


# --------------------------------------------------------------------------- random fields
def _lattice_shape(spacing):
    return tuple(int(np.ceil((h - l) / spacing)) + 1 for l, h in zip(_LAT_LO, _LAT_HI))


def _smooth_noise(rng, spacing_mm: float, sigma_mm: float) -> np.ndarray:
    """Unit-variance smooth Gaussian random field on the world lattice (spacing ``spacing_mm``)."""
    a = rng.standard_normal(_lattice_shape(spacing_mm)).astype(np.float32)
    a = ndi.gaussian_filter(a, sigma_mm / spacing_mm, mode="wrap")
    a -= a.mean()
    a /= max(float(a.std()), 1e-12)
    return a


def _lattice_index(x, spacing):
    """World coordinates (3, ...) -> fractional lattice indices (float32, same shape)."""
    idx = np.empty_like(x, dtype=np.float32)
    for a in range(3):
        idx[a] = (x[a] - _LAT_LO[a]) / spacing
    return idx


def _sample(vol, idx, order=1, mode="constant", cval=0.0):
    return ndi.map_coordinates(vol, idx, order=order, mode=mode, cval=cval, output=np.float32,
                               prefilter=False)


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


# --------------------------------------------------------------------------- validation
def _check_args(seed, size, snr, b0_t, tilt_deg, voxel_size, te_s, se_te_s, phase_sign, n_lesions):
    if size not in _SIZES:
        raise InputError(f"size must be 'small' (a 64 mm block) or 'full' (the whole head), got {size!r}")
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise InputError(f"seed must be a non-negative integer, got {seed!r}") from None
    if seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed}")
    if snr is not None and (not np.isfinite(snr) or snr < 0):
        raise InputError(f"snr must be >= 0 (0 or None = noiseless), got {snr!r}")
    if not (np.isfinite(b0_t) and 0 < b0_t <= 20):
        raise InputError(f"b0_t (field strength) must be a positive number of tesla (e.g. 3.0), got {b0_t!r}")
    if not np.isfinite(tilt_deg) or abs(tilt_deg) > 90:
        raise InputError(f"tilt_deg must be between -90 and 90 degrees, got {tilt_deg!r}")
    vs = np.asarray(voxel_size, dtype=float).reshape(-1)
    if vs.size == 1:
        vs = np.repeat(vs, 3)
    if vs.size != 3 or not np.all(np.isfinite(vs)) or np.any(vs <= 0):
        raise InputError(f"voxel_size must be three positive sizes in mm (e.g. 1 1 2), got {voxel_size!r}")
    if np.any(vs < 0.5) or np.any(vs > 8):
        raise InputError(f"voxel_size must be between 0.5 and 8 mm per axis, got {tuple(vs)}")
    te = _check_te(te_s, "te_s")
    se = None if se_te_s is None else _check_te(se_te_s, "se_te_s")
    if phase_sign not in (1, -1):
        raise InputError(f"phase_sign must be +1 or -1, got {phase_sign!r}")
    if n_lesions is not None and (int(n_lesions) != n_lesions or n_lesions < 0 or n_lesions > 200):
        raise InputError(f"n_lesions must be an integer between 0 and 200, got {n_lesions!r}")
    return seed, vs, te, se


def _check_te(te, name):
    try:
        arr = np.asarray(te, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a list of echo times in seconds, got {te!r}") from None
    if arr.size == 0:
        raise InputError(f"{name} is empty: give at least one echo time in seconds (e.g. 0.005 0.011)")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise InputError(f"{name} must be positive echo times in seconds, got {arr.tolist()}")
    if np.any(arr > 1.0):
        raise InputError(f"{name} looks like milliseconds ({arr.tolist()}); give echo times in seconds")
    if np.any(np.diff(arr) <= 0):
        raise InputError(f"{name} must be strictly increasing, got {arr.tolist()}")
    return tuple(float(t) for t in arr)


# --------------------------------------------------------------------------- main entry
def simulate_head(seed: int = 1, size: str = "small", snr: Optional[float] = 100.0, b0_t: float = 3.0,
                  tilt_deg: float = 0.0, voxel_size=(1.0, 1.0, 1.0),
                  te_s=(0.005, 0.011, 0.017, 0.023, 0.029), se_te_s=(0.03, 0.06, 0.09, 0.12),
                  phase_sign: int = 1, n_lesions: Optional[int] = None, deform: bool = True,
                  progress: Optional[Callable[[float, str], None]] = None) -> SimulatedHead:
    """Simulate one subject's multi-echo GRE (+ SE) acquisitions with their ground truth.

    Parameters
    ----------
    seed : int >= 0, the subject (anatomy deformation, values, textures, veins, lesions, noise).
    size : ``"small"`` (a 64 mm block around the basal ganglia / midbrain, at most 64^3 voxels
        at 1 mm) or ``"full"`` (the whole head, 197 x 233 x 189 at 1 mm).
    snr : mean brain M0 / noise sigma (complex Gaussian, per real/imaginary part); 0 or None = noiseless.
    b0_t : field strength (T).
    tilt_deg : B0 tilt (degrees, about the first array axis), stored in the affine as an oblique
        acquisition; ``b0_dir = physics.tilted_b0(tilt_deg, "x")``.
    voxel_size : (3,) mm; the template is resampled onto this grid (e.g. (1, 1, 2)). Whole heads
        with integer voxel sizes above 1 mm are simulated at 1 mm and averaged over blocks (complex
        GRE signal, SE magnitude, truth maps), as a thick-slice acquisition measures them.
    te_s : GRE echo times (s), increasing. se_te_s : SE echo times (s) or None (no SE).
    phase_sign : +1 or -1, the sense of phase rotation (phase = sign 2 pi f TE + phi0).
    n_lesions : number of lesions (default 6 for small, 20 for full); subtypes cycle through all four.
    deform : False = no random deformation (template anatomy; values etc. still vary).
    progress : optional ``progress(fraction, message)``.

    Returns
    -------
    SimulatedHead
    """
    seed, vs, te, se = _check_args(seed, size, snr, b0_t, tilt_deg, voxel_size, te_s, se_te_s,
                                   phase_sign, n_lesions)
    if n_lesions is None:
        n_lesions = 6 if size == "small" else 20
    k = np.rint(np.asarray(vs, float)).astype(int)
    if size == "full" and np.any(k > 1) and np.allclose(vs, k):
        # thick voxels: simulate at 1 mm and average k voxels into one, as the scanner does (a
        # field computed directly on the thick grid is not harmonic near the air/tissue boundary)
        fine = simulate_head(seed, size, snr=None, b0_t=b0_t, tilt_deg=tilt_deg, voxel_size=(1.0, 1.0, 1.0),
                             te_s=te, se_te_s=se, phase_sign=phase_sign, n_lesions=n_lesions,
                             deform=deform, progress=progress)
        return _block_average_head(fine, k, snr)
    rep = progress or (lambda f, m="": None)
    rep(0.0, "loading the MNI template")
    _template()
    P = _draw_subject(seed, size)
    if not deform:
        P["scale"] = np.ones(3)
        P["disp"] = [np.zeros_like(d) for d in P["disp"]]
        P["disp_max"] = 0.0
    b0_dir = physics.tilted_b0(float(tilt_deg), "x")

    def sub(lo, hi):
        return lambda f, m="": rep(lo + (hi - lo) * f, m)

    if size == "full":
        ext_vox = int(np.ceil(_NECK_MM / vs[2]))
        shape = tuple(int(np.floor(e / v + 1e-6)) for e, v in zip(_TPL_SHAPE, vs))
        origin = _TPL_ORIGIN + (vs - 1.0) / 2.0
        grid = _Grid(origin, vs, shape)
        ext = _Grid(origin - np.array([0, 0, ext_vox * vs[2]]), vs, shape[:2] + (shape[2] + ext_vox,))
        placed = _place_lesions(P, int(n_lesions), _TPL_ORIGIN, _TPL_ORIGIN + np.array(_TPL_SHAPE) - 1)
        rep(0.05, "anatomy")
        A = _anatomy(ext, P, placed, progress=sub(0.05, 0.45))
        crop = (slice(None), slice(None), slice(ext_vox, None))
        src = _air_tissue_source(A["head"], A["brain"], max(1.0, float(vs.max())) / vs)
        rep(0.45, "background field (air/tissue)")
        bg = physics.forward_field(src, vs, b0_dir, pad_factor=1.5)[crop].astype(np.float32)
        del src
        A = {k: (v[(slice(None),) + crop] if k == "x" else v[crop]) for k, v in A.items()}
        pad_local = 1.5
    else:
        n = tuple(int(np.floor(_SMALL_MM / v + 1e-6)) for v in vs)
        origin = _SMALL_LO + (vs - 1.0) / 2.0
        grid = _Grid(origin, vs, n)
        hi = origin + vs * (np.array(n) - 1)
        # keep lesions clear of the block faces (background removal erodes the mask there)
        placed = _place_lesions(P, int(n_lesions), origin + _SMALL_INSET_MM, hi - _SMALL_INSET_MM)
        rep(0.05, "anatomy")
        A = _anatomy(grid, P, placed, progress=sub(0.05, 0.35))
        # background: whole head on a 2 mm grid (incl. tissue outside the block), interpolated
        rep(0.35, "background field (whole head, 2 mm)")
        cvs = np.array([2.0, 2.0, 2.0])
        co = _TPL_ORIGIN + 0.5 - np.array([0, 0, _NECK_MM])
        cshape = tuple(int(np.ceil((e + (_NECK_MM if a == 2 else 0)) / 2.0)) for a, e in enumerate(_TPL_SHAPE))
        cgrid = _Grid(co, cvs, cshape)
        C = _anatomy(cgrid, P, (), progress=None)
        chi_c = (C["chi_para"] - C["chi_dia"]).astype(np.float32)
        sl = cgrid.box_slices(origin - 4.0, hi + 4.0)
        if sl is not None:
            chi_c[sl] = 0.0     # the block's own chi is the local field
        src = _air_tissue_source(C["head"], C["brain"], 0.5) + chi_c
        bgc = physics.forward_field(src, cvs, b0_dir, pad_factor=1.5)
        del C, src, chi_c
        cidx = np.empty_like(A["x"])
        for a in range(3):
            cidx[a] = (A["x"][a] - co[a]) / 2.0
        bg = ndi.map_coordinates(bgc, cidx, order=3, mode="nearest", output=np.float32)
        pad_local = 2.0
    rep(0.55, "local field")
    brain = A["brain"]
    head = A["head"]
    chi_total = (A["chi_para"] - A["chi_dia"]).astype(np.float32)
    local = physics.forward_field(chi_total * brain, vs, b0_dir, pad_factor=pad_local).astype(np.float32)
    bg = bg + _shim(A["x"], P)
    if brain.any():
        bg -= np.float32(bg[brain].mean())
    local *= head
    bg *= head
    total = (local + bg).astype(np.float32)
    r2prime = physics.r2prime_from_chi(A["chi_para"], A["chi_dia"], physics.DR_CHISEPNET).astype(np.float32)
    r2 = A["r2"]
    r2star = (r2 + r2prime).astype(np.float32)
    m0 = A["m0"]
    phi0 = (A["phi0"] * head).astype(np.float32)
    lesions = A["lesions"]
    table = _lesion_table(placed, lesions, A["chi_para"], A["chi_dia"], vs)
    lesions = _renumber_lesions(table, lesions)
    truth = {
        "chi_para": A["chi_para"], "chi_dia": A["chi_dia"], "chi_total": chi_total,
        "local_field": local, "background_field": bg.astype(np.float32), "total_field": total,
        "r2": r2, "r2star": r2star, "r2prime": r2prime, "m0": m0, "phi0": phi0,
        "mask": brain.astype(np.uint8), "mask_csf": (brain & (A["csf"] >= 0.5)).astype(np.uint8),
        "mask_vessels": (A["vessel_frac"] >= 0.5).astype(np.uint8),
        "lesions": lesions.astype(np.int16), "tissue": A["tissue"].astype(np.int16),
        "mask_head": head.astype(np.uint8),
    }
    del A
    rep(0.7, "acquisitions")
    sigma = 0.0
    if snr:
        sigma = float(m0[brain].mean() / snr) if brain.any() else float(m0.mean() / snr)
    rng = P["rng_noise"]
    f_hz = physics.ppm_to_hz(total, b0_t).astype(np.float32)
    gm, gp = _gre(m0, r2star, f_hz, phi0, te, phase_sign, sigma, rng)
    sem = None
    if se is not None:
        sem = np.empty(m0.shape + (len(se),), np.float32)
        for e, t in enumerate(se):
            s = m0 * np.exp(-r2 * np.float32(t))
            if sigma > 0:
                s = np.abs(s + rng.normal(0, sigma, s.shape).astype(np.float32)
                           + 1j * rng.normal(0, sigma, s.shape).astype(np.float32))
            sem[..., e] = s
    affine = _affine(grid, float(tilt_deg))
    rep(1.0, "done")
    params = {"scale": P["scale"].tolist(), "disp_rms_mm": P["disp_rms_mm"] if deform else 0.0,
              "values": {k: [float(x) for x in v] for k, v in P["values"].items()},
              "head_mm": float(P["head_mm"]), "grid_origin_mm": grid.origin.tolist(),
              "chi_tissue_vs_air": CHI_TISSUE_VS_AIR, "dr_hz_per_ppm": physics.DR_CHISEPNET}
    return SimulatedHead(affine=affine, voxel_size=np.asarray(vs, float), b0_dir=b0_dir, b0_t=float(b0_t),
                         te_s=te, se_te_s=se, seed=seed, gre_mag=gm, gre_phase=gp, se_mag=sem,
                         truth=truth, lesion_table=table, size=size, snr=snr, noise_sigma=sigma,
                         phase_sign=int(phase_sign), tilt_deg=float(tilt_deg), params=params)


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


def _block_mean(a, k):
    """Mean over blocks of k[0] x k[1] x k[2] voxels (trailing voxels that fill no block are dropped)."""
    sh = tuple(n // f for n, f in zip(a.shape[:3], k))
    a = a[:sh[0] * k[0], :sh[1] * k[1], :sh[2] * k[2]]
    return a.reshape(sh[0], k[0], sh[1], k[1], sh[2], k[2], *a.shape[3:]).mean(axis=(1, 3, 5))


def _block_pick(a, k):
    """The (middle) voxel of every block: for label maps."""
    sh = tuple(n // f for n, f in zip(a.shape[:3], k))
    c = [(f - 1) // 2 for f in k]
    return a[c[0]::k[0], c[1]::k[1], c[2]::k[2]][:sh[0], :sh[1], :sh[2]]


def _block_average_head(fine: "SimulatedHead", k, snr) -> "SimulatedHead":
    """A thick-voxel acquisition from a noiseless 1 mm simulation: complex GRE signals, SE magnitudes
    and truth maps averaged over blocks of ``k`` voxels (intra-voxel dephasing included), masks kept
    where at least half the block is in, labels from the block's middle voxel; then noise."""
    k = tuple(int(v) for v in k)
    T = {}
    for key, v in fine.truth.items():
        if key.startswith("mask"):
            T[key] = (_block_mean(v.astype(np.float32), k) >= 0.5).astype(np.uint8)
        elif key in ("lesions", "tissue"):
            T[key] = _block_pick(v, k)
        else:
            T[key] = _block_mean(v, k).astype(np.float32)
    T["lesions"] = np.where(T["mask"] > 0, T["lesions"], 0).astype(np.int16)
    A = np.array(fine.affine, float)
    A_c = A.copy()
    A_c[:3, :3] = A[:3, :3] @ np.diag(k)
    A_c[:3, 3] = A[:3, :3] @ ((np.asarray(k) - 1) / 2.0) + A[:3, 3]
    brain = T["mask"] > 0
    sigma = float(T["m0"][brain].mean() / snr) if snr else 0.0
    rng = np.random.default_rng([int(fine.seed), 4242])
    s = _block_mean(fine.gre_mag.astype(np.complex64) * np.exp(1j * fine.gre_phase), k)
    if sigma > 0:
        s = s + (rng.normal(0, sigma, s.shape) + 1j * rng.normal(0, sigma, s.shape))
    gm = np.abs(s).astype(np.float32)
    gp = np.angle(s).astype(np.float32)
    gp[gp >= np.float32(np.pi)] -= np.float32(2 * np.pi)
    del s
    sem = None
    if fine.se_mag is not None:
        sem = _block_mean(fine.se_mag, k).astype(np.float32)
        if sigma > 0:
            sem = np.abs(sem + rng.normal(0, sigma, sem.shape) + 1j * rng.normal(0, sigma, sem.shape)).astype(np.float32)
    vs = np.asarray(fine.voxel_size, float) * np.asarray(k)
    placed = [{"label": r["label"], "subtype": r["subtype"], "rim": r["rim"]} for r in fine.lesion_table]
    table = _lesion_table(placed, T["lesions"], T["chi_para"], T["chi_dia"], vs)
    T["lesions"] = _renumber_lesions(table, T["lesions"])
    params = dict(fine.params, simulated_at_mm=[float(x) for x in fine.voxel_size], block_average=list(k))
    return SimulatedHead(affine=A_c, voxel_size=vs, b0_dir=fine.b0_dir, b0_t=fine.b0_t, te_s=fine.te_s,
                         se_te_s=fine.se_te_s, seed=fine.seed, gre_mag=gm, gre_phase=gp, se_mag=sem, truth=T,
                         lesion_table=table, size=fine.size, snr=snr, noise_sigma=sigma,
                         phase_sign=fine.phase_sign, tilt_deg=fine.tilt_deg, params=params)


def _gre(m0, r2star, f_hz, phi0, te, phase_sign, sigma, rng):
    """Multi-echo GRE magnitude and wrapped phase (X, Y, Z, E) float32."""
    mag = np.empty(m0.shape + (len(te),), np.float32)
    ph = np.empty_like(mag)
    m0d = m0.astype(np.float64)
    for e, t in enumerate(te):
        a = m0d * np.exp(-r2star.astype(np.float64) * t)
        phase = phase_sign * 2.0 * np.pi * f_hz.astype(np.float64) * t + phi0
        if sigma > 0:
            s = a * np.exp(1j * phase)
            s += rng.normal(0, sigma, s.shape) + 1j * rng.normal(0, sigma, s.shape)
            mag[..., e] = np.abs(s)
            p = np.angle(s)
        else:
            mag[..., e] = a
            p = np.angle(np.exp(1j * phase)) * (a > 0)
        p = p.astype(np.float32)
        p[p >= np.float32(np.pi)] -= np.float32(2 * np.pi)
        ph[..., e] = p
    return mag, ph


def _affine(grid: _Grid, tilt_deg: float) -> np.ndarray:
    """Voxel -> RAS affine of the grid, rotated about its centre by -tilt about x (oblique)."""
    t = np.deg2rad(tilt_deg)
    R = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(t), np.sin(t)], [0.0, -np.sin(t), np.cos(t)]])
    A = np.eye(4)
    A[:3, :3] = R @ np.diag(grid.vs)
    c = grid.origin + grid.vs * (np.asarray(grid.shape) - 1) / 2.0
    A[:3, 3] = c + R @ (grid.origin - c)
    return A


# --------------------------------------------------------------------------- writing
TRUTH_FILES = ("chi_para", "chi_dia", "chi_total", "local_field", "total_field", "background_field",
               "r2", "r2star", "r2prime", "m0", "phi0", "mask", "mask_csf", "mask_vessels", "mask_head",
               "lesions", "tissue")
_INT_MAPS = {"mask": np.uint8, "mask_csf": np.uint8, "mask_vessels": np.uint8, "mask_head": np.uint8,
             "lesions": np.int16, "tissue": np.int16}


def _sidecar(head: SimulatedHead, te, kind: str) -> dict:
    return {
        "Modality": "MR", "MagneticFieldStrength": head.b0_t,
        "ImagingFrequency": round(physics.center_frequency_hz(head.b0_t) * 1e-6, 6),
        "EchoTime": [float(t) for t in te], "EchoTimes": [float(t) for t in te],
        "ImageType": ["ORIGINAL", "PRIMARY", kind], "SeriesDescription": f"chisep simulate {kind}",
        "B0Direction": [float(v) for v in head.b0_dir], "PhaseSign": int(head.phase_sign),
        "SimulatedBy": "chisep simulate", "Seed": head.seed, "Size": head.size,
        "SNR": head.snr or 0.0, "NoiseSigma": head.noise_sigma,
    }


def write_simulation(head: SimulatedHead, out_dir, progress=None) -> Path:
    """Write the acquisitions and truth of ``head`` under ``out_dir`` (docs/DESIGN.md, "File contract"), atomically.

    ``gre_mag``/``gre_phase``/``se_mag.nii.gz`` + JSON sidecars, and ``truth/`` with every truth map
    (``.nii.gz``), ``lesions.csv``, ``tissue_labels.json`` and ``simulation.json``.
    """
    out_dir = Path(out_dir)
    rep = progress or (lambda f, m="": None)
    with atomic_output_dir(out_dir) as stage:
        rep(0.0, "writing acquisitions")
        save_nifti(stage / "gre_mag.nii.gz", head.gre_mag, head.affine,
                   sidecar=_sidecar(head, head.te_s, "M"))
        save_nifti(stage / "gre_phase.nii.gz", head.gre_phase, head.affine,
                   sidecar=_sidecar(head, head.te_s, "P"))
        if head.se_mag is not None:
            save_nifti(stage / "se_mag.nii.gz", head.se_mag, head.affine,
                       sidecar=_sidecar(head, head.se_te_s, "M"))
        tdir = stage / "truth"
        for i, name in enumerate(TRUTH_FILES):
            rep(0.3 + 0.65 * i / len(TRUTH_FILES), f"writing truth/{name}")
            if name in head.truth:
                save_nifti(tdir / f"{name}.nii.gz", head.truth[name], head.affine,
                           dtype=_INT_MAPS.get(name, np.float32))
        cols = ("label", "subtype", "rim", "volume_mm3", "n_voxels", "chi_para_mean", "chi_dia_mean",
                "center_i", "center_j", "center_k")
        with open(tdir / "lesions.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(cols)
            for r in head.lesion_table:
                w.writerow([r["label"], r["subtype"], int(r["rim"]), r["volume_mm3"], r["n_voxels"],
                            f"{r['chi_para_mean']:.6f}", f"{r['chi_dia_mean']:.6f}", *r["center_ijk"]])
        write_json(tdir / "tissue_labels.json", TISSUE_LABELS)
        write_json(tdir / "simulation.json", {
            "seed": head.seed, "size": head.size, "snr": head.snr or 0.0, "noise_sigma": head.noise_sigma,
            "b0_t": head.b0_t, "b0_dir": head.b0_dir, "tilt_deg": head.tilt_deg,
            "voxel_size": head.voxel_size, "te_s": list(head.te_s),
            "se_te_s": list(head.se_te_s) if head.se_te_s else None, "phase_sign": head.phase_sign,
            "units": {"chi": "ppm (chi_dia positive magnitude)", "fields": "ppm", "r2": "Hz",
                      "phi0": "rad"},
            "lesions": head.lesion_table, "params": head.params})
        rep(1.0, "written")
    return out_dir
