"""The module's sample data: a small simulated head shipped with the module (no Qt, numpy only).

``Resources/SampleData/ChiSeparationSampleHead.npz`` holds the tissue parameters of one head made
by the core simulator (``chisep.simulate.simulate_head(seed=1, size="small")``: 64 mm block around
the basal ganglia, 1 mm, 3 T): proton density, R2, R2*, the total field (ppm), the phase offset, the
brain mask, the lesion labels and the true χpara / |χdia| maps, quantised to small integers
(about 1.3 MB). The multi-echo GRE
(magnitude, phase) and SE magnitude are made from them here with the same signal equations the
simulator uses, with seeded complex Gaussian noise, so loading the sample needs only numpy: no
nilearn, nibabel or template files, and nothing is downloaded.

``write_sample_asset`` (run once by a developer, needs the core simulator and nilearn) rewrites the
file: ``python -c "from ChiSeparationLib.sample import write_sample_asset; write_sample_asset()"``
with ``ChiSeparation/`` on the Python path.
"""
import os
from dataclasses import dataclass

import numpy as np

GAMMA_HZ_PER_T = 42.577478          # proton gyromagnetic ratio / 2 pi (MHz/T = Hz/ppm/T)
SAMPLE_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "Resources", "SampleData", "ChiSeparationSampleHead.npz")

# quantisation steps of the stored maps
_R2_STEP_HZ = 0.1
_FIELD_STEP_PPM = 1e-4


@dataclass
class SampleHead:
    """Arrays in (i, j, k[, echo]) order on ``affine`` (voxel -> RAS mm)."""
    gre_mag: np.ndarray
    gre_phase: np.ndarray
    se_mag: np.ndarray
    lesions: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    te_s: list
    se_te_s: list
    b0_t: float
    truth: dict          # the simulation's chi_para, chi_dia (ppm, positive magnitudes)


def write_sample_asset(path=SAMPLE_FILE, seed: int = 1):
    """Simulate the sample head with the core and store its quantised tissue parameters."""
    from chisep.simulate import simulate_head
    head = simulate_head(seed=seed, size="small")
    t = head.truth
    m0max = float(t["m0"].max())
    arrays = {
        "m0": np.round(t["m0"] / m0max * 255).astype(np.uint8),
        "r2": np.round(t["r2"] / _R2_STEP_HZ).astype(np.uint16),
        "r2star": np.round(t["r2star"] / _R2_STEP_HZ).astype(np.uint16),
        "field": np.round(t["total_field"] / _FIELD_STEP_PPM).astype(np.int16),
        "phi0": np.round(t["phi0"] / np.pi * 127).astype(np.int8),
        "lesions": t["lesions"].astype(np.int8),
        "mask": t["mask"].astype(np.uint8),
        "truth_chi_para": np.round(t["chi_para"] / _FIELD_STEP_PPM).astype(np.int16),
        "truth_chi_dia": np.round(t["chi_dia"] / _FIELD_STEP_PPM).astype(np.int16),
        "affine": np.asarray(head.affine, np.float64),
        "te_s": np.asarray(head.te_s, np.float64),
        "se_te_s": np.asarray(head.se_te_s, np.float64),
        "b0_t": np.float64(head.b0_t),
        "noise_sigma": np.float64(head.noise_sigma / m0max),
        "phase_sign": np.int8(head.phase_sign),
        "seed": np.int64(seed),
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = str(path) + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load_sample_head(path=SAMPLE_FILE, noise_seed: int = 1) -> SampleHead:
    """The sample head's acquisitions, made from the stored tissue parameters (numpy only)."""
    with np.load(path, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    m0 = d["m0"].astype(np.float64) / 255.0
    r2 = d["r2"].astype(np.float64) * _R2_STEP_HZ
    r2star = d["r2star"].astype(np.float64) * _R2_STEP_HZ
    b0 = float(d["b0_t"])
    f_hz = d["field"].astype(np.float64) * _FIELD_STEP_PPM * GAMMA_HZ_PER_T * b0
    phi0 = d["phi0"].astype(np.float64) / 127 * np.pi
    te = [float(x) for x in d["te_s"]]
    se_te = [float(x) for x in d["se_te_s"]]
    sigma = float(d["noise_sigma"])
    sign = int(d["phase_sign"])
    rng = np.random.default_rng(noise_seed)
    mag = np.empty(m0.shape + (len(te),), np.float32)
    pha = np.empty_like(mag)
    for e, t in enumerate(te):
        s = m0 * np.exp(-r2star * t) * np.exp(1j * (sign * 2 * np.pi * f_hz * t + phi0))
        if sigma > 0:
            s = s + rng.normal(0, sigma, s.shape) + 1j * rng.normal(0, sigma, s.shape)
        mag[..., e] = np.abs(s)
        pha[..., e] = np.angle(s)
    se = np.empty(m0.shape + (len(se_te),), np.float32)
    for e, t in enumerate(se_te):
        s = m0 * np.exp(-r2 * t)
        if sigma > 0:
            s = np.abs(s + rng.normal(0, sigma, s.shape) + 1j * rng.normal(0, sigma, s.shape))
        se[..., e] = s
    return SampleHead(gre_mag=mag, gre_phase=pha, se_mag=se, lesions=d["lesions"].astype(np.int16),
                      mask=d["mask"].astype(np.uint8), affine=np.asarray(d["affine"], float),
                      te_s=te, se_te_s=se_te, b0_t=b0,
                      truth={k: d["truth_" + k].astype(np.float32) * np.float32(_FIELD_STEP_PPM)
                             for k in ("chi_para", "chi_dia")})
