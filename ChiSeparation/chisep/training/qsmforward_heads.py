"""Heads from the QSMxT team's forward model (``qsm-forward``, PyPI; a training/evaluation-only extra).

What qsm-forward needs and what we have
---------------------------------------
``qsm_forward.generate_bids`` builds its heads from the realistic head phantom of the QSM
reconstruction challenge 2.0 (Marques et al. 2021: segmentation, M0/R1/R2* maps, chi model, fibre
directions), which is distributed separately and cannot be obtained on this offline machine. So
this adapter is the nearest honest alternative: **qsm-forward's tissue model, field, shim, phase
offset, relaxation and signal model applied to our anatomy** (the tissue labels of
:func:`chisep.simulate.simulate_head`):

* chi+ / chi- per tissue from ``qsm_forward.CHISEP_TISSUE_PARAMS`` (its base values and its
  R1/R2* texture coefficients; the R2*/R1 deviations that drive the texture are smooth random
  fields here, since the phantom's measured maps are not available), blended at boundaries;
  white-matter anisotropy ``chi- = chi_0 + d_chi cos^2 theta`` with a per-head d_chi from its tract
  range (0.005-0.03 ppm) and the fibre angle of :func:`chisep.fibres.fibre_field`;
* the local field by ``qsm_forward.generate_field`` (its own dipole kernel, zero padding) on the
  acquisition grid; background = the air/tissue field and shim residual of our head (qsm-forward's
  ``generate_shimmed_field`` is not used: it fits x^2, y^2, z^2 separately, a non-harmonic
  "shim" that no background-removal method can or should remove, which would make the truth chi
  inconsistent with the field); phase offset by ``qsm_forward.generate_phase_offset`` plus a
  random constant;
* R2 from its 7 T T2 table (``T2_TISSUE_PARAMS_7T``), scaled to B0; M0 from our anatomy; R1
  per tissue from typical 3 T values;
* GRE by ``qsm_forward.generate_signal`` with its chi-separation decay (Dr = 114 Hz/ppm for both
  signs, the constant the project's methods assume) and its **multi-compartment hollow-cylinder
  white matter** (``multicompartment=True``, pools of ``WM_HC_PARAMS``), SPGR T1 weighting
  (TR 40 ms, flip 15 degrees); SE by ``generate_se_signal`` and ``hc_wm_se_signal`` in white
  matter; complex Gaussian noise (SNR = mean brain |S(TE1)| / sigma); vendor phase sense by
  conjugation.

Lesions keep our simulator's lesion values (qsm-forward has no lesion model), so lesion
agreement can be evaluated on these heads. Labels: chi_para = chi+, |chi_dia| = -chi- (apparent).
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from .. import fibres, physics

#: our tissue label -> qsm-forward's label (CHISEP_TISSUE_PARAMS); 0 inside the head -> muscle
OURS_TO_QSMF = {1: 10, 2: 9, 3: 8, 4: 1, 5: 3, 6: 2, 7: 7, 8: 6, 9: 4, 10: 5, 11: 11}
#: typical 3 T R1 (1/s) per qsm-forward label (texture reference; not qsm-forward's)
R1_3T = {1: 0.75, 2: 0.95, 3: 0.8, 4: 0.9, 5: 0.9, 6: 0.95, 7: 0.85, 8: 1.1, 9: 0.7, 10: 0.25, 11: 0.6}
DR = physics.DR_CHISEPNET


def _require():
    try:
        import qsm_forward as Q  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the extra is missing
        raise ImportError("the qsm-forward heads need the training extra: pip install 'chisep[train]' "
                          "(qsm-forward)") from exc
    return Q


def tissue_chi(tissue, brain, seed: int, voxel_size, theta, d_chi_ratio: float):
    """chi+ (>= 0) and chi- (<= 0) per qsm-forward's tissue table with texture (ppm), 0 outside the brain."""
    Q = _require()
    rng = np.random.default_rng([int(seed), 41])
    vs = np.asarray(voxel_size, float)
    r2s_dev = ndimage.gaussian_filter(rng.standard_normal(tissue.shape), 2.0 / vs) * 6.0 / 0.18  # ~6 Hz SD
    r1_dev = ndimage.gaussian_filter(rng.standard_normal(tissue.shape), 3.0 / vs) * 0.05 / 0.12  # ~0.05 1/s
    pos = np.zeros(tissue.shape, np.float64)
    neg = np.zeros(tissue.shape, np.float64)
    for ours, lab in OURS_TO_QSMF.items():
        sel = tissue == ours
        if not sel.any():
            continue
        cp, cn, r1p, r2p, r1n, r2n = Q.CHISEP_TISSUE_PARAMS[lab]
        pos[sel] = cp + r2p * r2s_dev[sel] + r1p * r1_dev[sel]
        neg[sel] = cn + r2n * r2s_dev[sel] + r1n * r1_dev[sel]
    wm = tissue == 3
    if wm.any():
        # anisotropic white matter: chi- = chi_0 + d_chi cos^2(theta), chi_0 chosen so that the
        # orientation mean is the tissue value
        d = d_chi_ratio * np.abs(neg[wm])
        neg[wm] = neg[wm] + d * (np.cos(theta[wm]) ** 2 - 1.0 / 3.0)
    pos = np.clip(ndimage.gaussian_filter(pos, 0.5 / vs), 0, None) * brain
    neg = np.clip(ndimage.gaussian_filter(neg, 0.5 / vs), None, 0) * brain
    return pos.astype(np.float32), neg.astype(np.float32)


def synthesize_qsmforward(seed: int, acq: dict, size: str = "small"):
    """A raw head (SimulatedHead, noisy) made with qsm-forward's tissue and signal model on our anatomy."""
    Q = _require()
    from .. import simulate as S

    vs = tuple(float(v) for v in acq["voxel_size"])
    h = S.simulate_head(seed=int(seed), size=size, snr=None, b0_t=acq["b0_t"], tilt_deg=acq["tilt_deg"],
                        voxel_size=vs, te_s=acq["te_s"], se_te_s=acq["se_te_s"], phase_sign=1,
                        n_lesions=acq["n_lesions"])
    T = dict(h.truth)
    brain = T["mask"] > 0
    head = T["mask_head"] > 0
    tissue = T["tissue"]
    rng = np.random.default_rng([int(seed), 42])
    fib = fibres.fibre_field(brain.shape, h.voxel_size, rng, acq["fibre_sigma_mm"])
    theta = fibres.fibre_angle(fib, h.b0_dir).astype(np.float64)
    pos, neg = tissue_chi(tissue, brain, seed, h.voxel_size, theta, acq["fibre_ratio"])
    les = T["lesions"] > 0
    pos[les] = T["chi_para"][les]
    neg[les] = -T["chi_dia"][les]
    chi = (pos + neg).astype(np.float64)
    # generate_field pads with the corner value of its input: a zero border makes that zero padding
    local = Q.generate_field(np.pad(chi * brain, 1), voxel_size=list(h.voxel_size),
                             B0_dir=list(h.b0_dir))[1:-1, 1:-1, 1:-1]
    local = local - local[brain].mean()
    total = (local + T["background_field"]) * head
    # relaxation
    b0 = float(acq["b0_t"])
    r2 = np.full(tissue.shape, 1.0 / 0.07)
    r1 = np.full(tissue.shape, 1.0)
    scale = 0.65 + 0.35 * (b0 - 1.5) / 5.5
    for ours, lab in OURS_TO_QSMF.items():
        sel = tissue == ours
        r2[sel] = 1000.0 / Q.T2_TISSUE_PARAMS_7T[lab] * scale
        r1[sel] = R1_3T[lab]
    r2[les] = T["r2"][les]
    r2 = ndimage.gaussian_filter(r2, 0.5 / np.asarray(h.voxel_size))
    m0 = T["m0"].astype(np.float64) * head
    phase_offset = (Q.generate_phase_offset(m0, brain, m0.shape) + rng.uniform(-np.pi, np.pi)) * head
    wm = (tissue == 3) & brain
    te = acq["te_s"]
    sig = np.empty(m0.shape + (len(te),), np.complex128)
    for e, t in enumerate(te):
        sig[..., e] = Q.generate_signal(total, B0=b0, TR=0.04, TE=t, flip_angle=15, phase_offset=phase_offset,
                                        R1=r1, M0=m0, R2=r2, dr_pos=DR, dr_neg=DR, chi_pos=pos, chi_neg=neg,
                                        multicompartment=True, theta=theta, wm_mask=wm)
    sig *= head[..., None]
    se = np.empty(m0.shape + (len(acq["se_te_s"]),), np.float64)
    mwf = Q.hc_mwf_from_myelin_content(neg[wm])
    for e, t in enumerate(acq["se_te_s"]):
        s = Q.generate_se_signal(TR=3.0, TE=t, R1=r1, R2=r2, M0=m0)
        s[wm] = m0[wm] * (1 - np.exp(-3.0 * r1[wm])) * Q.hc_wm_se_signal(t, mwf)
        se[..., e] = s * head
    sigma = float(np.abs(sig[..., 0])[brain].mean() / acq["snr"])
    nrng = np.random.default_rng([int(seed), 43])
    sig = Q.add_noise(sig, peak_snr=float(np.abs(sig).max() / sigma), rng=nrng)
    se = np.abs(Q.add_noise(se.astype(np.complex128), peak_snr=float(np.abs(se).max() / sigma), rng=nrng))
    if acq["phase_sign"] < 0:
        sig = np.conj(sig)
    gp = np.angle(sig).astype(np.float32)
    gp[gp >= np.float32(np.pi)] -= np.float32(2 * np.pi)
    T.update(chi_para=pos, chi_dia=(-neg).astype(np.float32), chi_total=(pos + neg).astype(np.float32),
             local_field=(local * head).astype(np.float32), total_field=total.astype(np.float32),
             r2=r2.astype(np.float32), r2prime=(DR * (pos - neg)).astype(np.float32))
    T["r2star"] = (T["r2"] + T["r2prime"]).astype(np.float32)
    return dataclasses.replace(h, gre_mag=np.abs(sig).astype(np.float32), gre_phase=gp,
                               se_mag=se.astype(np.float32), truth=T, snr=acq["snr"], noise_sigma=sigma,
                               phase_sign=int(acq["phase_sign"]), params=dict(h.params, model="qsmforward"))
