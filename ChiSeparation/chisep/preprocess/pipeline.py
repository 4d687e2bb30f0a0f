"""The whole preprocessing chain in one call: raw GRE (+ SE) -> local field, R2*, R2, R2', mask."""
from __future__ import annotations

import numpy as np

from .. import physics
from ..io import InputError
from ..options import BG_METHODS
from ..progress import scaled
from .background import lbv, lbv_qsm, pdf, vsharp
from .combine import (combine_echoes, dephasing_significance, echo_fit_residual, initial_frequency,
                      surface_field_correction)
from .mask import brain_mask, lbv_boundary_mask, reliable_mask
from .relaxometry import r2_from_se, r2star
from .unwrap import unwrap_echoes



def _check(name, arr, ndim):
    arr = np.asarray(arr)
    if arr.ndim != ndim:
        raise InputError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN/inf values")
    return arr


def preprocess_gre(mag, phase, te_s, affine, b0_t: float = 3.0, se_mag=None, se_te_s=None, r2=None,
                   mask=None, phase_sign: int = 1, unwrap: str = "region-growing", bg_method: str = "vsharp",
                   vsharp_radius_mm: float = 12.0, b0_dir=None, bipolar: bool = False, phi0_smooth_mm: float = 1.0,
                   max_fit_residual_hz: float | None = 2.0, dephasing_fit_z: float | None = 5.0,
                   partial_volume_ratio: float | None = 0.9, surface_correction: bool = True,
                   lbv_qsm_refine: int = 1, progress=None) -> dict:
    """Raw multi-echo GRE (+ optional SE or R2 map) -> maps for chi-separation.

    Parameters
    ----------
    mag, phase : (X, Y, Z, E) GRE magnitude and phase (rad, wrapped).
    te_s : E echo times (s).
    affine : 4x4 voxel->RAS (mm); gives voxel size and (unless ``b0_dir``) the B0 direction.
    b0_t : field strength (T).
    se_mag, se_te_s : optional multi-echo spin-echo magnitudes (X, Y, Z, E_se) and echo times (s).
    r2 : optional R2 map (Hz) instead of the SE.
    mask : optional brain mask (overrides the automatic one).
    phase_sign : +1 if phase increases with frequency, -1 for the opposite vendor convention.
    unwrap : "laplacian" or "region-growing"; bg_method : "vsharp", "lbv", "lbv-qsm" (LBV with the
        local field's boundary values estimated from a first QSM) or "pdf".
    vsharp_radius_mm : largest V-SHARP radius (mm).
    b0_dir : (3,) B0 direction in the array frame (default from ``affine``; used by PDF).
    bipolar : remove odd/even echo phase offsets (bipolar readouts).
    phi0_smooth_mm : smoothing (mm) of the estimated phase offset phi0 (see :func:`unwrap_echoes`).
    max_fit_residual_hz : surface voxels whose per-echo fields scatter more than this about the
        combined field (:func:`echo_fit_residual`; intra-voxel dephasing in thick slices next to the
        sinuses) are left out of background removal and of ``mask_eroded``; None keeps them.
    dephasing_fit_z : in mask voxels whose phase bends away from linear in TE by more than this many
        noise SDs (:func:`dephasing_significance`: veins and steep fields, in thick slices above
        all) the field is the initial slope of a quadratic phase fit (:func:`initial_frequency`)
        instead of the linear fit; None = linear fit everywhere. Needs 3 or more echoes.
    partial_volume_ratio : LBV and LBV-QSM leave out of their boundary the surface voxels the brain
        only partly fills (:func:`lbv_boundary_mask` with this ratio); None keeps them.
    surface_correction : move the field of the background mask's partial-volume surface voxels to
        their centres along the thick axis of anisotropic voxels (:func:`surface_field_correction`;
        ``total_field_hz`` is the corrected field); isotropic voxels are not changed.
    lbv_qsm_refine : LBV-QSM's re-estimations of its susceptibility map (:func:`lbv_qsm` ``refine``).
    progress : optional ``progress(fraction, message)``.

    Returns
    -------
    dict of 3-D float32 maps on the input grid: ``local_field`` (ppm, 0 outside ``mask_eroded``),
    ``total_field_hz``, ``field_weight`` (0..1), ``mask``, ``mask_eroded`` (uint8), ``mask_background``
    (uint8, the mask background removal worked on), ``mask_boundary`` (uint8, LBV and LBV-QSM
    only: ``mask_background`` without its partial-volume surface voxels, their boundary), ``r2star`` (Hz),
    ``r2`` and ``r2prime`` (Hz, when SE or R2 is given), ``magnitude``.
    """
    mag = _check("GRE magnitude", mag, 4).astype(np.float32)
    phase = _check("GRE phase", phase, 4).astype(np.float32)
    if mag.shape != phase.shape:
        raise InputError(f"GRE magnitude {mag.shape} and phase {phase.shape} differ in shape")
    te = np.asarray(te_s, float)
    if te.size != mag.shape[-1]:
        raise InputError(f"{te.size} echo times for {mag.shape[-1]} echoes")
    if mag.shape[-1] < 2:
        raise InputError("chi-separation needs at least 2 GRE echoes (3 or more for a good R2*)")
    if not np.any(phase):
        raise InputError("the GRE phase is zero everywhere")
    # the one check of bg_method (choices declared in chisep.options)
    if bg_method not in BG_METHODS:
        raise InputError(f"unknown background removal {bg_method!r}; use one of {', '.join(BG_METHODS)}")
    vs = physics.voxel_size_from_affine(affine)
    b0_dir = physics.b0_direction_from_affine(affine) if b0_dir is None else np.asarray(b0_dir, float)
    p = progress or (lambda f, m="": None)

    p(0.0, "brain mask")
    magnitude = np.sqrt(np.sum(mag.astype(np.float64) ** 2, -1)).astype(np.float32)
    if mask is None:
        mask = brain_mask(magnitude, vs)
    else:
        mask = (_check("mask", mask, 3) > 0).astype(np.uint8)
        if mask.shape != mag.shape[:3]:
            raise InputError(f"mask {mask.shape} is not on the GRE grid {mag.shape[:3]}")
    if not mask.any():
        raise InputError("the brain mask is empty (is the magnitude all zero?)")
    p(0.05, "R2*")
    r2s = r2star(mag, te, mask)
    unw, _ = unwrap_echoes(mag, phase, te, mask, vs, method=unwrap, bipolar=bipolar,
                           phi0_smooth_mm=phi0_smooth_mm,
                           progress=scaled(progress, 0.1, 0.45))
    p(0.45, "echo combination")
    field_hz, weight = combine_echoes(unw, mag, te, mask, phase_sign)
    bg_mask = mask
    if max_fit_residual_hz is not None:
        resid = echo_fit_residual(unw, mag, te, field_hz, phase_sign, mask=mask)
        bg_mask = reliable_mask(mask, resid <= float(max_fit_residual_hz))
        if bg_mask.sum() < 0.5 * mask.sum():   # a poor fit almost everywhere: keep the mask as it is
            bg_mask = mask
    initial = None
    if dephasing_fit_z is not None and te.size >= 3:
        initial = dephasing_significance(unw, mag, te, mask) > float(dephasing_fit_z)
        field_hz[initial] = initial_frequency(unw[initial], mag[initial], te, phase_sign)
    del unw
    if surface_correction:
        field_hz = surface_field_correction(field_hz, mag, te, bg_mask, vs, initial)
    bnd_mask = bg_mask
    if partial_volume_ratio is not None and bg_method in ("lbv", "lbv-qsm"):
        bnd_mask = lbv_boundary_mask(bg_mask, magnitude, partial_volume_ratio)
    p(0.5, f"background field removal ({bg_method})")
    if bg_method == "vsharp":
        local_hz, mask_eroded = vsharp(field_hz, bg_mask, vs, max_radius_mm=vsharp_radius_mm)
    elif bg_method == "lbv":
        local_hz, mask_eroded = lbv(field_hz, bnd_mask, vs)
    elif bg_method == "lbv-qsm":
        local_hz, mask_eroded = lbv_qsm(field_hz, bg_mask, vs, b0_dir, boundary_mask=bnd_mask, refine=lbv_qsm_refine)
    else:
        local_hz, mask_eroded = pdf(field_hz, bg_mask, vs, b0_dir, weight=weight)
    out = {"local_field": physics.hz_to_ppm(local_hz, b0_t).astype(np.float32),
           "total_field_hz": field_hz, "field_weight": weight * mask_eroded,
           "mask": mask.astype(np.uint8), "mask_eroded": mask_eroded.astype(np.uint8),
           "mask_background": np.asarray(bg_mask, np.uint8),
           "r2star": r2s, "magnitude": magnitude}
    if bg_method in ("lbv", "lbv-qsm"):
        out["mask_boundary"] = np.asarray(bnd_mask, np.uint8)
    p(0.9, "R2 and R2'")
    if se_mag is not None:
        se_mag = _check("SE magnitude", se_mag, 4)
        if se_mag.shape[:3] != mag.shape[:3]:
            raise InputError(f"SE grid {se_mag.shape[:3]} differs from the GRE grid {mag.shape[:3]}")
        if se_te_s is None or len(se_te_s) != se_mag.shape[-1]:
            raise InputError("the SE magnitudes need one echo time (s) per echo")
        r2 = r2_from_se(se_mag, se_te_s, mask)
    elif r2 is not None:
        r2 = _check("R2 map", r2, 3).astype(np.float32) * mask
    if r2 is not None:
        out["r2"] = r2.astype(np.float32)
        out["r2prime"] = physics.r2prime_from_r2star_r2(r2s, r2).astype(np.float32) * mask
    p(1.0, "preprocessing done")
    return out
