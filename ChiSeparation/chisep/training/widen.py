"""A wider training distribution: random acquisitions, fibre white matter, a second forward model.

Every volume made here is a *raw* acquisition (multi-echo GRE + SE, with its affine) that goes
through the inference chain itself (:func:`chisep.preprocess.preprocess_gre` with
``bg_method="lbv-qsm"``, then the closed-form QSM on the acquisition grid), and is then taken to
the networks' frame (1 mm isotropic, B0 along the third axis) by :mod:`chisep.geometry` exactly as
inference does; the truth is taken there with the same transform. So the network sees the
resampling blur of tilted and thick-slice data, and its labels are the truth on its own grid.

Acquisition (drawn per seed, :func:`acquisition`): B0 1.5 / 3 / 7 T; 3-8 echoes, first TE
2-6 ms, spacing 2-8 ms; in-plane voxel 0.6-1.5 mm and slices 1-3 mm (full heads: 1 mm in-plane
and 1/2/3 mm slices, block-averaged from 1 mm); B0 tilt 0-30 degrees about a random in-plane axis
(x), stored in the affine; SNR 20-200 (log-uniform); a random constant + smooth phase offset;
vendor phase sense +1 / -1 (given to the chain as a user would from the sidecar).

Forward models (``model``):

``ours``
    :func:`chisep.simulate.simulate_head` anatomy, field and signal, with white matter replaced
    by the hollow-cylinder fibre model of :mod:`chisep.fibres` (orientation-dependent apparent
    |chi_dia|, whose field is added; three-pool GRE decay; SE with the myelin-water T2 mixture).
    In white matter the reversible decay of myelin is the pools' own (myelin-water fraction
    proportional to |chi_dia|, 0.12 at 0.029 ppm, which at 3 T and 5-29 ms echoes with a 30-120 ms
    SE reads as ~3 Hz of R2', close to Dr |chi_dia|), plus Dr chi_para for iron: so the measured
    R2' of white matter depends on the protocol, the field and the fibre angle, as in real data.
``qsmforward``
    see :mod:`chisep.training.qsmforward_heads` (held out of training by default).

Labels: chi_para and the *apparent* |chi_dia| (the one that makes the field; for an isotropic
voxel it is the usual |chi_dia|).
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from .. import fibres, physics

LBV = "lbv-qsm"


def acquisition(seed: int, size: str = "small") -> dict:
    """The random acquisition of a widened volume (deterministic in the seed)."""
    rng = np.random.default_rng([int(seed), 31])
    b0 = float(rng.choice([1.5, 3.0, 3.0, 7.0]))
    n_e = int(rng.integers(3, 9))
    te1 = rng.uniform(0.002, 0.006)
    dte = rng.uniform(0.002, 0.008)
    # keep the last echo within a sensible range of T2* at high field
    if b0 >= 7.0:
        dte = min(dte, 0.004)
    te = tuple(float(te1 + i * dte) for i in range(n_e))
    if size == "full":
        vs = (1.0, 1.0, float(rng.choice([1.0, 1.0, 2.0, 3.0])))
    else:
        ip = float(rng.uniform(0.6, 1.5))
        vs = (ip, ip, float(rng.uniform(1.0, 3.0)))
    tilt = float(rng.uniform(0.0, 30.0)) if rng.random() < 0.7 else 0.0
    return {"b0_t": b0, "te_s": te, "se_te_s": (0.03, 0.06, 0.09, 0.12), "voxel_size": vs,
            "tilt_deg": tilt, "snr": float(np.exp(rng.uniform(np.log(20.0), np.log(200.0)))),
            "phase_sign": int(rng.choice([1, -1])), "n_lesions": int(rng.integers(4, 12) if size == "small"
                                                                     else rng.integers(10, 31)),
            "fibre_ratio": float(rng.uniform(0.2, 0.8)), "fibre_g": float(rng.uniform(0.65, 0.85)),
            "fibre_sigma_mm": float(rng.uniform(5.0, 14.0))}


def _noise(sig_c, sigma, rng):
    return sig_c + (rng.normal(0, sigma, sig_c.shape) + 1j * rng.normal(0, sigma, sig_c.shape))


def synthesize_ours_with_fibres(seed: int, acq: dict, size: str = "small"):
    """Our simulator's head with fibre white matter; returns a noisy SimulatedHead on the acquisition grid."""
    from .. import simulate as S

    vs = np.asarray(acq["voxel_size"], float)
    k = np.rint(vs).astype(int)
    thick_blocks = size == "full" and np.any(k > 1) and np.allclose(vs, k)
    vs_sim = (1.0, 1.0, 1.0) if thick_blocks else tuple(vs)
    h = S.simulate_head(seed=int(seed), size=size, snr=None, b0_t=acq["b0_t"], tilt_deg=acq["tilt_deg"],
                        voxel_size=vs_sim, te_s=acq["te_s"], se_te_s=acq["se_te_s"],
                        phase_sign=acq["phase_sign"], n_lesions=acq["n_lesions"])
    T = dict(h.truth)
    rng = np.random.default_rng([int(seed), 32])
    wm = (T["tissue"] == S.TISSUE_LABELS["white_matter"]) & (T["mask"] > 0)
    fib = fibres.fibre_field(wm.shape, h.voxel_size, rng, acq["fibre_sigma_mm"])
    theta = fibres.fibre_angle(fib, h.b0_dir)
    dia_iso = T["chi_dia"]
    dia_app = np.where(wm, fibres.apparent_dia(dia_iso, theta, acq["fibre_ratio"]), dia_iso).astype(np.float32)
    d_dia = (dia_app - dia_iso).astype(np.float32)
    # the extra field of the anisotropy (same dipole model as the simulator's local field)
    d_field = physics.forward_field(-d_dia * (T["mask"] > 0), h.voxel_size, h.b0_dir, pad_factor=1.5)
    d_field = (d_field * (T["mask_head"] > 0)).astype(np.float32)
    T["chi_dia"] = dia_app
    T["chi_total"] = (T["chi_para"] - dia_app).astype(np.float32)
    T["local_field"] = (T["local_field"] + d_field).astype(np.float32)
    T["total_field"] = (T["total_field"] + d_field).astype(np.float32)
    T["r2prime"] = physics.r2prime_from_chi(T["chi_para"], dia_app, physics.DR_CHISEPNET).astype(np.float32)
    T["r2star"] = (T["r2"] + T["r2prime"]).astype(np.float32)
    p = fibres.FibreParams(g=acq["fibre_g"])
    mwf = fibres.mwf_from_dia(dia_iso)
    f_hz = physics.ppm_to_hz(T["total_field"], acq["b0_t"]).astype(np.float64)
    m0 = T["m0"].astype(np.float64)
    phi0 = T["phi0"].astype(np.float64)
    sgn = acq["phase_sign"]
    gm = np.empty(h.gre_mag.shape, np.float32)
    gp = np.empty(h.gre_mag.shape, np.float32)
    for e, t in enumerate(acq["te_s"]):
        dec = np.exp(-T["r2star"].astype(np.float64) * t).astype(np.complex128)
        # white matter: the diamagnetic (myelin) part of the reversible decay comes from the
        # pools themselves (fast-relaxing myelin water and the pool offsets), only the iron part
        # from the mesoscopic Dr * chi_para (adding Dr * |chi_dia| too would count myelin twice)
        dec[wm] = (fibres.gre_factor(t, theta[wm], acq["b0_t"], mwf[wm], T["r2"][wm], p)
                   * np.exp(-physics.DR_CHISEPNET * T["chi_para"][wm].astype(np.float64) * t))
        if sgn < 0:
            dec = np.conj(dec)
        s = m0 * dec * np.exp(1j * (sgn * 2 * np.pi * f_hz * t + phi0))
        gm[..., e] = np.abs(s)
        gp[..., e] = np.angle(s)
    sem = np.empty(h.se_mag.shape, np.float32)
    for e, t in enumerate(acq["se_te_s"]):
        s = m0 * np.exp(-T["r2"].astype(np.float64) * t)
        s[wm] = m0[wm] * fibres.se_factor(t, mwf[wm], T["r2"][wm], p)
        sem[..., e] = s
    fine = dataclasses.replace(h, gre_mag=gm, gre_phase=gp, se_mag=sem, truth=T)
    if thick_blocks:
        return S._block_average_head(fine, tuple(k), acq["snr"])
    brain = T["mask"] > 0
    sigma = float(T["m0"][brain].mean() / acq["snr"])
    nrng = np.random.default_rng([int(seed), 33])
    c = _noise(gm.astype(np.complex128) * np.exp(1j * gp.astype(np.float64)), sigma, nrng)
    gm2, gp2 = np.abs(c).astype(np.float32), np.angle(c).astype(np.float32)
    gp2[gp2 >= np.float32(np.pi)] -= np.float32(2 * np.pi)
    se2 = np.abs(_noise(sem.astype(np.complex128), sigma, nrng)).astype(np.float32)
    return dataclasses.replace(fine, gre_mag=gm2, gre_phase=gp2, se_mag=se2, snr=acq["snr"], noise_sigma=sigma)


def chain(h, bg_method: str = LBV) -> dict:
    """The inference chain on a raw head: preprocess_gre (no fallback) + the closed-form QSM."""
    from ..preprocess import preprocess_gre
    from ..qsm import qsm_closed_form

    out = preprocess_gre(h.gre_mag, h.gre_phase, h.te_s, h.affine, b0_t=h.b0_t, se_mag=h.se_mag,
                         se_te_s=h.se_te_s, phase_sign=h.phase_sign, bg_method=bg_method)
    m = (np.asarray(out["mask"]) > 0).astype(np.uint8)
    vs = physics.voxel_size_from_affine(h.affine)
    b0 = physics.b0_direction_from_affine(h.affine)
    out["qsm"] = np.asarray(qsm_closed_form(np.asarray(out["local_field"], np.float32), m, vs, b0), np.float32)
    return out


def to_network_frame(h, out) -> tuple:
    """Inputs and truth of a processed head on the networks' grid (as inference resamples them)."""
    from .. import geometry

    T = h.truth
    m = np.asarray(out["mask"]) > 0
    r2p = out.get("r2prime")
    if r2p is None:
        r2p = np.maximum(np.asarray(out["r2star"]) - np.asarray(out["r2"]), 0)
    fm = np.asarray(out.get("mask_eroded", m)) > 0
    em = m & (T["mask"] > 0) & ~(T["mask_csf"] > 0) & ~(T["mask_vessels"] > 0)
    vols = {"mask": m.astype(np.float32), "local_field": out["local_field"], "qsm": out["qsm"],
            "r2prime": r2p, "r2star": out["r2star"], "chi_para": T["chi_para"], "chi_dia": T["chi_dia"],
            "fmask": (fm & m).astype(np.float32), "emask": em.astype(np.float32),
            "lesion": ((T["lesions"] > 0) & m).astype(np.float32)}
    nv, tr = geometry.to_network_space(vols, h.affine, b0_dir=physics.b0_direction_from_affine(h.affine),
                                       masks=("mask", "fmask", "emask", "lesion"))
    return nv, tr


def make_widened_volume(seed: int, model: str = "ours", size: str = "small") -> dict:
    """One widened volume: random acquisition, forward ``model``, the LBV-QSM chain, network frame,
    packed as a cache entry (see :func:`chisep.training.data._pack`)."""
    from . import data as D

    acq = acquisition(seed, size)
    t0 = time.time()
    if model == "ours":
        h = synthesize_ours_with_fibres(seed, acq, size)
    elif model == "qsmforward":
        from .qsmforward_heads import synthesize_qsmforward
        h = synthesize_qsmforward(seed, acq, size)
    else:
        raise ValueError(f"unknown forward model {model!r}")
    t1 = time.time()
    out = chain(h)
    t2 = time.time()
    nv, tr = to_network_frame(h, out)
    m = nv["mask"] > 0
    packed_out = {"mask": m, "mask_eroded": nv["fmask"] > 0, "local_field": nv["local_field"],
                  "qsm": nv["qsm"], "r2prime": nv["r2prime"], "r2star": nv["r2star"]}
    shape = m.shape
    meta = {"kind": "head", "model": model, "seed": int(seed), "size": size, "chain": "preprocess_gre",
            "bg_method": LBV, "acq": acq, "tilt_deg": acq["tilt_deg"], "snr": acq["snr"],
            "t_simulate_s": round(t1 - t0, 1), "t_preprocess_s": round(t2 - t1, 1)}
    none = np.zeros(shape, bool)
    return D._pack(packed_out, nv["chi_para"], nv["chi_dia"], nv["emask"] > 0, none, none, meta,
                   lesions=nv["lesion"] > 0)
