"""simulate_head: one subject's acquisitions and truth, assembled from the anatomy, the fields and
the acquisition steps."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import scipy.ndimage as ndi

from .. import physics
from ..io import InputError
from .acquisition import SimulatedHead, _affine, _block_average_head, _gre, _se
from .anatomy import CHI_TISSUE_VS_AIR, _air_tissue_source, _anatomy, _draw_subject, _shim
from .lesions import _lesion_table, _place_lesions, _renumber_lesions
from .template import _NECK_MM, _TPL_ORIGIN, _TPL_SHAPE, _Grid, _template

#: The small block: 64 mm cube around the basal ganglia / midbrain, lower corner in MNI mm.
_SMALL_LO = np.array([-32.0, -38.0, -24.0])
_SMALL_MM = 64.0
#: Lesions of the small block stay this far (mm, plus their radius + 2) inside the block faces.
_SMALL_INSET_MM = 5.0

_SIZES = ("small", "full")


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
    anatomy_and_background = _full_head if size == "full" else _small_block
    grid, placed, A, bg, pad_local = anatomy_and_background(P, vs, int(n_lesions), b0_dir, rep)
    rep(0.55, "local field")
    truth, table = _truth(A, P, placed, vs, b0_dir, bg, pad_local)
    del A
    rep(0.7, "acquisitions")
    gm, gp, sem, sigma = _acquire(truth, P["rng_noise"], te, se, phase_sign, b0_t, snr)
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


def _sub_progress(rep, lo, hi):
    """``rep`` restricted to the fraction range [lo, hi]."""
    return lambda f, m="": rep(lo + (hi - lo) * f, m)


def _full_head(P, vs, n_lesions, b0_dir, rep):
    """Whole head: anatomy on the template grid extended by a neck (the air/tissue source continues
    below the field of view), background field of the whole head on that grid, then the neck cropped.
    Returns (grid, placed lesions, anatomy maps, background field (ppm), pad factor of the local field)."""
    ext_vox = int(np.ceil(_NECK_MM / vs[2]))
    shape = tuple(int(np.floor(e / v + 1e-6)) for e, v in zip(_TPL_SHAPE, vs))
    origin = _TPL_ORIGIN + (vs - 1.0) / 2.0
    grid = _Grid(origin, vs, shape)
    ext = _Grid(origin - np.array([0, 0, ext_vox * vs[2]]), vs, shape[:2] + (shape[2] + ext_vox,))
    placed = _place_lesions(P, n_lesions, _TPL_ORIGIN, _TPL_ORIGIN + np.array(_TPL_SHAPE) - 1)
    rep(0.05, "anatomy")
    A = _anatomy(ext, P, placed, progress=_sub_progress(rep, 0.05, 0.45))
    crop = (slice(None), slice(None), slice(ext_vox, None))
    src = _air_tissue_source(A["head"], A["brain"], max(1.0, float(vs.max())) / vs)
    rep(0.45, "background field (air/tissue)")
    bg = physics.forward_field(src, vs, b0_dir, pad_factor=1.5)[crop].astype(np.float32)
    del src
    A = {k: (v[(slice(None),) + crop] if k == "x" else v[crop]) for k, v in A.items()}
    return grid, placed, A, bg, 1.5


def _small_block(P, vs, n_lesions, b0_dir, rep):
    """The 64 mm block: anatomy on the block; background = the field of the whole head (air/tissue and
    all chi outside the block) computed on a 2 mm grid and interpolated onto the block.
    Returns (grid, placed lesions, anatomy maps, background field (ppm), pad factor of the local field)."""
    n = tuple(int(np.floor(_SMALL_MM / v + 1e-6)) for v in vs)
    origin = _SMALL_LO + (vs - 1.0) / 2.0
    grid = _Grid(origin, vs, n)
    hi = origin + vs * (np.array(n) - 1)
    # keep lesions clear of the block faces (background removal erodes the mask there)
    placed = _place_lesions(P, n_lesions, origin + _SMALL_INSET_MM, hi - _SMALL_INSET_MM)
    rep(0.05, "anatomy")
    A = _anatomy(grid, P, placed, progress=_sub_progress(rep, 0.05, 0.35))
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
    return grid, placed, A, bg, 2.0


def _truth(A, P, placed, vs, b0_dir, bg, pad_local):
    """The truth maps from the anatomy ``A`` and the background ``bg``: local field of the brain's chi,
    shim residual, the brain-mean frequency adjustment, relaxation; and the lesion table."""
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
    return truth, table


def _acquire(truth, rng, te, se, phase_sign, b0_t, snr):
    """GRE magnitude/phase and SE magnitude from the truth maps, with noise of sigma = mean brain
    M0 / snr. Returns (gre_mag, gre_phase, se_mag or None, sigma)."""
    m0 = truth["m0"]
    brain = truth["mask"].astype(bool)
    sigma = 0.0
    if snr:
        sigma = float(m0[brain].mean() / snr) if brain.any() else float(m0.mean() / snr)
    f_hz = physics.ppm_to_hz(truth["total_field"], b0_t).astype(np.float32)
    gm, gp = _gre(m0, truth["r2star"], f_hz, truth["phi0"], te, phase_sign, sigma, rng)
    sem = None if se is None else _se(m0, truth["r2"], se, sigma, rng)
    return gm, gp, sem, sigma
