"""Training data for chi-sepnet: a cache of simulated volumes and a patch sampler over it.

Two kinds of volume go into the cache (``<cache>/<name>.npz``, float16 maps, uint8 masks):

* ``head``: :func:`chisep.simulate.simulate_head` (full head by default) with a per-seed random
  SNR (40-200, log-uniform), lesion count and deformation, then the inference chain itself:
  :func:`chisep.preprocess.preprocess_gre` with ``bg_method="lbv-qsm"`` (:data:`BG_METHOD`, the
  best chain the project has) on the simulated GRE + SE (so the local field carries LBV-QSM's errors
  and R2*/R2' carry the fits' errors; a failing chain is an error, there is no stand-in) and the QSM channel from
  :func:`chisep.qsm.qsm_closed_form`, exactly as :func:`chisep.pipeline.separate` builds it.
* ``shapes``: non-anatomical volumes (96^3 at 1 mm): a random smooth "brain" mask filled with
  random ellipsoids / blobs / tubes of chi_para and |chi_dia| (wide ranges, beyond normative), random
  R2 and M0, CSF-like holes, external air-like sources and a harmonic shim as background field;
  local field = :func:`chisep.physics.forward_field`, then the same GRE/SE signal model and the
  same preprocessing + QSM chain as the heads. These teach the physics rather than one anatomy.

Every volume is cropped to its mask's bounding box (+ margin) and stores:
``field`` (local field, ppm), ``qsm`` (ppm), ``r2p`` (measured R2'/Dr, ppm), ``r2s`` (measured
R2*/Dr, ppm), ``para``/``dia`` (truth chi, ppm), ``r2p_true`` (truth R2'/Dr, ppm), ``mask`` (the
preprocessing mask used at inference), ``fmask`` (eroded mask where the local field is defined),
``emask`` (evaluation mask: brain minus CSF minus vessels), ``lesion`` (truth lesion voxels, heads
only; older caches get it with ``--add-lesions``), optionally ``r2p_pred`` (R2'/Dr predicted from
the measured R2* by an R2'-prediction net, ``--predict-r2prime``: the input the chi-sepnet of the
R2* pipeline sees) and ``meta`` (JSON).

* ``wide`` / ``val_w`` / ``qsmf``: widened volumes (random field strength, echoes, voxel size, B0
  tilt, SNR, phase sense; fibre white matter; a second forward model), made in their acquisition
  frame and resampled to the networks' frame as inference does: see :mod:`chisep.training.widen`.
  ``qsmf`` (qsm-forward's model) volumes are never loaded for training (leave-one-simulator-out).

B0 is along the third array axis in all volumes (the networks' frame; tilted acquisitions are
rotated to it at inference, and the widened volumes were). Seeds: training heads 1000+, shapes 5000+, validation heads 900-999
(never used in training). The patch sampler draws 64^3 patches centred in the mask with augmentations
that are exact for the physics: flips of each axis, a swap of the two axes transverse to B0, and a
common scale factor on chi, field, QSM and R2' (everything is linear; R2* = R2 + R2' gets the scaled
R2').

Build a cache in the background (resumable: existing files are skipped) with ``chisep train-cache``
(:mod:`chisep.commands.train_cache`; ``python -m chisep.training.data`` runs the same command)::

    chisep train-cache --out runs/cache --heads 1000-1011 --val 900-903 \
        --shapes 5000-5011 --workers 2
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

from .. import physics

DR = physics.DR_CHISEPNET
TE_GRE = (0.005, 0.011, 0.017, 0.023, 0.029)
TE_SE = (0.03, 0.06, 0.09, 0.12)

#: channel names stored in a cache file (float16) and masks (uint8)
MAP_KEYS = ("field", "qsm", "r2p", "r2s", "para", "dia", "r2p_true")
MASK_KEYS = ("mask", "fmask", "emask")
#: optional maps (a volume without them cannot train what needs them); a missing ``lesion`` mask reads 0
OPTIONAL_MAP_KEYS = ("r2p_pred",)

#: network input/output channel names (normalisation keys, docs/DESIGN.md, "Network")
CHISEP_INPUTS = ("qsm", "field", "r2prime_over_dr")
CHISEP_OUTPUTS = ("chi_para", "chi_dia")
R2P_INPUTS = ("r2star_over_dr",)
R2P_OUTPUTS = ("r2prime_over_dr",)
#: cache key of each normalisation name
NORM_SOURCE = {"qsm": "qsm", "field": "field", "r2prime_over_dr": "r2p", "r2star_over_dr": "r2s",
               "chi_para": "para", "chi_dia": "dia"}


# --------------------------------------------------------------------------- the inference chain
#: background-field method of the chain the caches are built with (the best the project has)
BG_METHOD = "lbv-qsm"


def _preprocess_and_qsm(mag, phase, te_s, affine, b0_t, se_mag, se_te_s, mask=None, bg_method=BG_METHOD,
                        phase_sign=1):
    """The inference chain: preprocess_gre + closed-form QSM. Returns the preprocessing dict + 'qsm'.

    There is no stand-in: a failure of the chain is an error (a volume made by another chain would
    teach the network inputs it never sees at inference).
    """
    from ..preprocess import preprocess_gre
    from ..qsm import qsm_closed_form

    out = preprocess_gre(mag, phase, te_s, affine, b0_t=b0_t, se_mag=se_mag, se_te_s=se_te_s, mask=mask,
                         bg_method=bg_method, phase_sign=phase_sign)
    m = np.asarray(out["mask"]) > 0
    vs = physics.voxel_size_from_affine(affine)
    b0 = physics.b0_direction_from_affine(affine)
    out["qsm"] = np.asarray(qsm_closed_form(np.asarray(out["local_field"], np.float32), m.astype(np.uint8),
                                            vs, b0), np.float32)
    return out


def _pack(out, truth_para, truth_dia, brain, csf, vessels, meta, margin=6, lesions=None):
    """Crop to the mask's bounding box (+margin) and convert to the cache's dtypes."""
    m = np.asarray(out["mask"]) > 0
    fm = np.asarray(out.get("mask_eroded", m)) > 0
    r2 = out.get("r2")
    r2p = out.get("r2prime")
    r2s = np.asarray(out["r2star"], np.float32)
    if r2p is None:
        r2p = np.maximum(r2s - np.asarray(r2, np.float32), 0)
    em = m & (brain > 0) & ~(csf > 0) & ~(vessels > 0)
    idx = np.argwhere(m)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, m.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    maps = {
        "field": np.asarray(out["local_field"], np.float32) * m,
        "qsm": np.asarray(out["qsm"], np.float32) * m,
        "r2p": np.asarray(r2p, np.float32) / DR * m,
        "r2s": r2s / DR * m,
        "para": np.asarray(truth_para, np.float32) * m,
        "dia": np.asarray(truth_dia, np.float32) * m,
    }
    maps["r2p_true"] = (maps["para"] + maps["dia"]) * m
    res = {k: v[sl].astype(np.float16) for k, v in maps.items()}
    res["mask"] = m[sl].astype(np.uint8)
    res["fmask"] = (fm & m)[sl].astype(np.uint8)
    res["emask"] = em[sl].astype(np.uint8)
    res["lesion"] = ((np.asarray(lesions) > 0) & m)[sl].astype(np.uint8) if lesions is not None else \
        np.zeros(res["mask"].shape, np.uint8)
    meta = dict(meta, crop_lo=lo.tolist(), crop_hi=hi.tolist())
    res["meta"] = np.array(json.dumps(meta))
    return res


def _save_atomic(path: Path, arrays: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def head_params(seed: int) -> dict:
    """The per-seed acquisition variation of a cached head (deterministic in the seed)."""
    rng = np.random.default_rng([int(seed), 77])
    return {"snr": float(np.exp(rng.uniform(np.log(40.0), np.log(200.0)))),
            "n_lesions": int(rng.integers(10, 31))}


def make_head_volume(seed: int, size: str = "full", snr: float | None = None,
                     n_lesions: int | None = None) -> dict:
    """Simulate one head, run the inference chain on it, return the cache arrays."""
    from ..simulate import simulate_head

    p = head_params(seed)
    snr = p["snr"] if snr is None else snr
    n_lesions = p["n_lesions"] if n_lesions is None else n_lesions
    t0 = time.time()
    h = simulate_head(seed=int(seed), size=size, snr=snr, n_lesions=n_lesions)
    t1 = time.time()
    T = h.truth
    out = _preprocess_and_qsm(h.gre_mag, h.gre_phase, h.te_s, h.affine, h.b0_t, h.se_mag, h.se_te_s)
    t2 = time.time()
    meta = {"kind": "head", "seed": int(seed), "size": size, "snr": snr, "n_lesions": n_lesions,
            "chain": "preprocess_gre", "bg_method": BG_METHOD,
            "tilt_deg": 0.0, "t_simulate_s": round(t1 - t0, 1), "t_preprocess_s": round(t2 - t1, 1)}
    return _pack(out, T["chi_para"], T["chi_dia"], T["mask"], T["mask_csf"], T["mask_vessels"], meta,
                 lesions=T["lesions"])


# --------------------------------------------------------------------------- random shapes
def _smooth(rng, shape, sigma):
    x = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return x / max(float(x.std()), 1e-8)


def _ellipsoid(grid, centre, radii, rot, edge=0.7):
    p = np.stack([g - c for g, c in zip(grid, centre)], 0).reshape(3, -1)
    q = rot.T @ p
    r = np.sqrt(sum((q[i] / radii[i]) ** 2 for i in range(3))).reshape(grid[0].shape)
    rm = float(min(radii))
    return np.clip((1.0 - r) * rm / edge + 0.5, 0.0, 1.0).astype(np.float32)


def _rotation(rng):
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _tube(grid, a, b, radius):
    p = np.stack(grid, -1).astype(np.float32)
    ab = (b - a).astype(np.float32)
    t = np.clip(((p - a) @ ab) / float(ab @ ab), 0, 1)
    d = np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)
    return np.clip(radius - d + 0.5, 0, 1).astype(np.float32)


def random_shapes_truth(seed: int, n: int = 96) -> dict:
    """Non-anatomical truth on an n^3 1 mm grid: chi_para, chi_dia, r2, m0, masks, local/background field."""
    rng = np.random.default_rng([int(seed), 5])
    shape = (n, n, n)
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32)] * 3, indexing="ij")
    c = np.array([n / 2.0] * 3) + rng.uniform(-3, 3, 3)
    radii = rng.uniform(0.33, 0.46, 3) * n
    brain_w = _ellipsoid(grid, c, radii, _rotation(rng), edge=6.0)
    if n >= 48:
        brain = (brain_w + 0.15 * _smooth(rng, shape, 8.0)) > 0.5
        brain = ndi.binary_fill_holes(ndi.binary_opening(brain, iterations=2))
    else:
        brain = brain_w > 0.5
    para = np.zeros(shape, np.float32)
    dia = np.zeros(shape, np.float32)
    # smooth background tissue with textures (white-matter-like to cortex-like)
    bp, bd = rng.uniform(0.0, 0.04), rng.uniform(0.0, 0.05)
    para += bp * np.clip(1 + rng.uniform(0.1, 0.5) * _smooth(rng, shape, rng.uniform(2, 6)), 0, None)
    dia += bd * np.clip(1 + rng.uniform(0.1, 0.5) * _smooth(rng, shape, rng.uniform(2, 6)), 0, None)
    r2 = rng.uniform(11, 20) + rng.uniform(0.5, 2.5) * _smooth(rng, shape, 4.0)
    m0 = rng.uniform(0.65, 0.85) + 0.04 * _smooth(rng, shape, 4.0)
    # blobs: ellipsoids replacing the local tissue values (iron-, myelin-, both-, neither-like)
    for _ in range(int(rng.integers(25, 70))):
        rad = rng.uniform(1.5, 14.0) * rng.uniform(0.5, 1.0, 3)
        ctr = c + rng.uniform(-1, 1, 3) * radii * 0.85
        w = _ellipsoid(grid, ctr, rad, _rotation(rng), edge=rng.uniform(0.5, 2.5))
        kind = rng.choice(4, p=[0.35, 0.3, 0.2, 0.15])
        vp = rng.uniform(0.0, 0.3) if kind in (0, 2) else rng.uniform(0.0, 0.03)
        vd = rng.uniform(0.0, 0.12) if kind in (1, 2) else rng.uniform(0.0, 0.02)
        if rng.random() < 0.3:
            vp *= np.clip(1 + 0.3 * _smooth(rng, shape, 2.0), 0, None)
            vd *= np.clip(1 + 0.3 * _smooth(rng, shape, 2.0), 0, None)
        para = para * (1 - w) + vp * w
        dia = dia * (1 - w) + vd * w
        r2 = r2 * (1 - w) + rng.uniform(10, 28) * w
        m0 = m0 * (1 - w) + rng.uniform(0.6, 0.9) * w
    # CSF-like holes: chi 0, low R2, bright M0
    csf_w = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(0, 5))):
        rad = rng.uniform(3, 12) * rng.uniform(0.4, 1.0, 3)
        ctr = c + rng.uniform(-1, 1, 3) * radii * 0.6
        csf_w = np.maximum(csf_w, _ellipsoid(grid, ctr, rad, _rotation(rng), edge=1.0))
    # vessels: paramagnetic tubes
    ves_w = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(3, 14))):
        a = c + rng.uniform(-1, 1, 3) * radii * 0.8
        b = a + rng.standard_normal(3) * rng.uniform(8, 30)
        ves_w = np.maximum(ves_w, _tube(grid, a, b, rng.uniform(0.6, 2.0)))
    vv = rng.uniform(0.15, 0.5)
    para = para * (1 - csf_w) * (1 - ves_w) + vv * ves_w
    dia = dia * (1 - csf_w) * (1 - ves_w)
    r2 = r2 * (1 - csf_w) + rng.uniform(0.5, 2.0) * csf_w
    r2 = r2 * (1 - ves_w) + 18.0 * ves_w
    m0 = m0 * (1 - csf_w) + 1.0 * csf_w
    para = np.clip(para, 0, None) * brain
    dia = np.clip(dia, 0, None) * brain
    r2 = np.clip(r2, 0.5, None).astype(np.float32)
    local = physics.forward_field(para - dia, (1, 1, 1), (0, 0, 1), pad_factor=2.0).astype(np.float32)
    # background: air-like sources outside the brain + harmonic shim residual
    head = ndi.binary_dilation(brain, iterations=int(rng.integers(3, 7)))
    src = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(1, 4))):
        d = rng.standard_normal(3)
        d /= np.linalg.norm(d)
        ctr = c + d * (radii.max() + rng.uniform(2, 10))
        w = _ellipsoid(grid, ctr, rng.uniform(4, 12, 3), _rotation(rng), edge=1.0)
        src += 9.4 * w * (~head)
    bg = physics.forward_field(src, (1, 1, 1), (0, 0, 1), pad_factor=1.5).astype(np.float32)
    x, y, z = [(g - cc) for g, cc in zip(grid, c)]
    g = rng.standard_normal(3)
    g = g / np.linalg.norm(g) * rng.uniform(0.002, 0.006)
    bg += g[0] * x + g[1] * y + g[2] * z + rng.normal(0, 1e-5) * (x * x - y * y) + rng.normal(0, 1e-5) * x * z
    bg -= bg[brain].mean()
    return {"chi_para": para.astype(np.float32), "chi_dia": dia.astype(np.float32), "r2": r2,
            "m0": np.clip(m0, 0.3, None).astype(np.float32), "brain": brain, "head": head,
            "local_field": local, "background_field": bg.astype(np.float32),
            "csf": csf_w >= 0.5, "vessels": ves_w >= 0.5}


def make_shapes_volume(seed: int, n: int = 96, snr: float | None = None, b0_t: float = 3.0) -> dict:
    """A random-shapes volume through the GRE/SE signal model and the inference chain."""
    rng = np.random.default_rng([int(seed), 9])
    snr = float(np.exp(rng.uniform(np.log(40.0), np.log(200.0)))) if snr is None else snr
    t0 = time.time()
    T = random_shapes_truth(seed, n)
    head = T["head"]
    r2p = physics.r2prime_from_chi(T["chi_para"], T["chi_dia"], DR)
    r2s = (T["r2"] + r2p).astype(np.float64)
    f_hz = physics.ppm_to_hz((T["local_field"] + T["background_field"]) * head, b0_t)
    m0 = T["m0"] * head
    phi0 = (rng.uniform(-1, 1) + 0.3 * _smooth(rng, m0.shape, 20.0)) * head
    sigma = float(m0[T["brain"]].mean() / snr)
    mag = np.empty(m0.shape + (len(TE_GRE),), np.float32)
    ph = np.empty_like(mag)
    for e, te in enumerate(TE_GRE):
        s = m0 * np.exp(-r2s * te) * np.exp(1j * (2 * np.pi * f_hz * te + phi0))
        s = s + rng.normal(0, sigma, s.shape) + 1j * rng.normal(0, sigma, s.shape)
        mag[..., e] = np.abs(s)
        ph[..., e] = np.angle(s)
    se = np.empty(m0.shape + (len(TE_SE),), np.float32)
    for e, te in enumerate(TE_SE):
        s = m0 * np.exp(-T["r2"] * te)
        se[..., e] = np.abs(s + rng.normal(0, sigma, s.shape) + 1j * rng.normal(0, sigma, s.shape))
    t1 = time.time()
    out = _preprocess_and_qsm(mag, ph, TE_GRE, np.eye(4), b0_t, se, TE_SE, mask=T["brain"].astype(np.uint8))
    t2 = time.time()
    meta = {"kind": "shapes", "seed": int(seed), "n": n, "snr": snr, "chain": "preprocess_gre",
            "bg_method": BG_METHOD,
            "t_simulate_s": round(t1 - t0, 1), "t_preprocess_s": round(t2 - t1, 1)}
    return _pack(out, T["chi_para"], T["chi_dia"], T["brain"], T["csf"], T["vessels"], meta)


# --------------------------------------------------------------------------- cache building
#: cache file prefix of each volume kind ("wide": our simulator widened, "valw": its validation
#: volumes, "qsmf": the qsm-forward-style model, held out of training; see training/widen.py)
PREFIX = {"head": "head", "val": "val", "shapes": "shapes", "wide": "wide", "valw": "val_w",
          "qsmf": "qsmf"}


def _job(args):
    kind, seed, out_dir, size, n_lesions = args
    name = f"{PREFIX[kind]}_{seed:05d}"
    path = Path(out_dir) / f"{name}.npz"
    if path.exists():
        return name, "exists"
    t0 = time.time()
    # no catch-all: a volume that cannot be made stops the build loudly
    if kind == "shapes":
        arrays = make_shapes_volume(seed)
    elif kind in ("wide", "valw", "qsmf"):
        from .widen import make_widened_volume
        arrays = make_widened_volume(seed, model="qsmforward" if kind == "qsmf" else "ours", size=size)
    else:
        arrays = make_head_volume(seed, size=size, n_lesions=n_lesions)
    _save_atomic(path, arrays)
    return name, f"{time.time() - t0:.0f} s"


def build_cache(out_dir, heads=(), val=(), shapes=(), workers: int = 1, size: str = "full",
                log=print, n_lesions: int | None = None, wide=(), val_wide=(), qsmf=(),
                wide_size: str = "small"):
    """Build (or complete) a cache: validation heads first, then training heads and shapes interleaved.

    ``n_lesions`` overrides the per-seed lesion count (10-30, :func:`head_params`) of the training
    heads, e.g. 60 for lesion-rich heads; validation heads keep theirs.
    """
    for s in list(heads) + list(shapes):
        if 900 <= s <= 999 and s in heads:
            raise ValueError("seeds 900-999 are reserved for validation")
    jobs = [("val", s, str(out_dir), size, None) for s in val]
    jobs += [("valw", s, str(out_dir), wide_size, None) for s in val_wide]
    h, sh, w = list(heads), list(shapes), list(wide)
    while h or sh or w:
        if w:
            jobs.append(("wide", w.pop(0), str(out_dir), wide_size, None))
        if h:
            jobs.append(("head", h.pop(0), str(out_dir), size, n_lesions))
        if sh:
            jobs.append(("shapes", sh.pop(0), str(out_dir), size, None))
    jobs += [("qsmf", s, str(out_dir), wide_size, None) for s in qsmf]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if workers <= 1:
        for j in jobs:
            name, msg = _job(j)
            log(f"[{time.time() - t0:6.0f} s] {name}: {msg}")
    else:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(workers, maxtasksperchild=1) as pool:
            for name, msg in pool.imap_unordered(_job, jobs):
                log(f"[{time.time() - t0:6.0f} s] {name}: {msg}")


# --------------------------------------------------------------------------- loading / sampling
class Volume:
    """One cached volume in memory (float16 maps, uint8 masks) with a list of mask voxels."""

    def __init__(self, arrays: dict, name: str = "", max_centres: int = 50000, seed: int = 0):
        self.name = name
        self.maps = {k: np.asarray(arrays[k]) for k in MAP_KEYS + OPTIONAL_MAP_KEYS if k in arrays}
        self.masks = {k: np.asarray(arrays[k]).astype(np.uint8) for k in MASK_KEYS}
        self.masks["lesion"] = (np.asarray(arrays["lesion"]).astype(np.uint8) if "lesion" in arrays
                                else np.zeros(self.masks["mask"].shape, np.uint8))
        meta = arrays.get("meta")
        self.meta = json.loads(str(meta)) if meta is not None else {}
        self.kind = self.meta.get("kind", "head")
        self.shape = self.masks["mask"].shape
        idx = np.argwhere(self.masks["mask"] > 0)
        if len(idx) > max_centres:
            idx = idx[np.random.default_rng(seed).choice(len(idx), max_centres, replace=False)]
        self.centres = idx.astype(np.int16)
        #: lesion voxels (patch centres for lesion-centred sampling)
        self.lesion_centres = np.argwhere(self.masks["lesion"] > 0).astype(np.int16)

    @classmethod
    def load(cls, path):
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return cls(arrays, name=Path(path).stem)

    def patch(self, centre, size, keys=None, dtype=np.float32):
        """Maps and masks in a ``size``^3 patch at ``centre`` (zero outside the volume).

        ``keys``: which maps/masks (default all); ``dtype``: float32 (default) or None to keep the
        cache's float16/uint8 (cheaper; the loop converts on the device).
        """
        size = np.broadcast_to(np.asarray(size, int), (3,))
        lo = np.asarray(centre, int) - size // 2
        src, dst = [], []
        for a in range(3):
            s0 = max(lo[a], 0)
            s1 = min(lo[a] + size[a], self.shape[a])
            src.append(slice(s0, s1))
            dst.append(slice(s0 - lo[a], s1 - lo[a]))
        out = {}
        allv = dict(self.maps, **self.masks)
        for k in (keys or allv):
            if k not in allv:
                raise KeyError(f"volume {self.name} has no {k!r} array; rebuild or complete the cache "
                               f"(python -m chisep.training.data --help)")
            v = allv[k]
            p = np.zeros(tuple(size), v.dtype if dtype is None else dtype)
            p[tuple(dst)] = v[tuple(src)]
            out[k] = p
        return out


def _cache_files(cache_dir, patterns=("*.npz",)):
    """The finished cache files matching each pattern, sorted (files being written, ``*.tmp*``, skipped)."""
    for pat in patterns:
        for p in sorted(Path(cache_dir).glob(pat)):
            if ".tmp" not in p.name:
                yield p


def load_cache(cache_dir, which: str = "train", names_seen=()):
    """Load cache volumes: ``train`` = head_* + shapes_*, ``val`` = val_*. Skips ``names_seen``."""
    pats = ("head_*.npz", "wide_*.npz", "shapes_*.npz") if which == "train" else ("val_*.npz",)
    vols = []
    for p in _cache_files(cache_dir, pats):
        if p.stem in names_seen:
            continue
        try:
            vols.append(Volume.load(p))
        except Exception as exc:  # noqa: BLE001 - a file being written or broken
            print(f"warning: skipping {p}: {exc!r}", file=sys.stderr)
    return vols


def normalisation_from_volumes(vols) -> dict:
    """Our own z-score constants: mean/std in the mask of every channel over the given volumes."""
    acc = {k: [0.0, 0.0, 0.0] for k in NORM_SOURCE}
    for v in vols:
        m = v.masks["mask"] > 0
        for name, key in NORM_SOURCE.items():
            x = v.maps[key][m].astype(np.float64)
            acc[name][0] += x.size
            acc[name][1] += x.sum()
            acc[name][2] += (x * x).sum()
    norm = {}
    for name, (n, s, s2) in acc.items():
        mean = s / max(n, 1)
        std = np.sqrt(max(s2 / max(n, 1) - mean * mean, 1e-12))
        norm[name] = [float(mean), float(std)]
    return norm


def draw_augmentation(rng, scale_range=(0.6, 1.6), flips=True) -> dict:
    """Random physics-exact augmentation: flips of each axis, x<->y swap, a common chi scale."""
    aug = {"flip": [False, False, False], "swap": False, "scale": 1.0}
    if flips:
        aug["flip"] = [bool(rng.random() < 0.5) for _ in range(3)]
        aug["swap"] = bool(rng.random() < 0.5)
    if scale_range is not None:
        aug["scale"] = float(np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]))))
    return aug


#: maps multiplied by the common scale factor (R2* gets the scaled R2' added: R2* = R2 + R2')
SCALED = ("field", "qsm", "para", "dia", "r2p_true", "r2p", "r2p_pred")


def augment(p: dict, rng_or_aug, scale_range=(0.6, 1.6), flips=True):
    """Apply a physics-exact augmentation to a patch dict of 3-D numpy arrays (returns float32 copies).

    ``rng_or_aug``: a numpy Generator (drawn with ``scale_range``/``flips``) or an augmentation dict.
    Flips of any axis and the swap of the two axes transverse to B0 (along the third axis) leave the
    dipole kernel unchanged; chi, field, QSM and R2' are linear in chi.
    """
    aug = rng_or_aug if isinstance(rng_or_aug, dict) else draw_augmentation(rng_or_aug, scale_range, flips)
    out = {}
    s = aug["scale"]
    for k, v in p.items():
        v = np.asarray(v, np.float32)
        for ax in range(3):
            if aug["flip"][ax]:
                v = np.flip(v, ax)
        if aug["swap"]:
            v = np.swapaxes(v, 0, 1)
        out[k] = v
    if s != 1.0:
        if "r2s" in out and "r2p" in out:
            out["r2s"] = out["r2s"] + (s - 1.0) * out["r2p"]
        for k in SCALED:
            if k in out:
                out[k] = out[k] * s
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def augment_torch(t: dict, augs):
    """The same augmentation on a batch of torch tensors (N, 1, X, Y, Z), one dict per sample."""
    import torch

    out = {}
    for k, v in t.items():
        rows = []
        for i, aug in enumerate(augs):
            x = v[i]
            dims = [d + 1 for d in range(3) if aug["flip"][d]]
            if dims:
                x = torch.flip(x, dims)
            if aug["swap"]:
                x = x.transpose(1, 2)
            rows.append(x)
        out[k] = torch.stack(rows).contiguous()
    sc = torch.tensor([a["scale"] for a in augs], dtype=torch.float32,
                      device=next(iter(out.values())).device).view(-1, 1, 1, 1, 1)
    if "r2s" in out and "r2p" in out:
        out["r2s"] = out["r2s"] + (sc - 1.0) * out["r2p"]
    for k in SCALED:
        if k in out:
            out[k] = out[k] * sc
    return out


#: cache keys each kind of network needs for training
KEYS = {"chisepnet-r2prime": ("field", "qsm", "r2p", "para", "dia", "mask", "fmask"),
        "r2prime-from-r2star": ("r2s", "r2p", "r2p_true", "mask")}


def keys_for(kind: str, lesion: bool = False, r2prime_key: str = "r2p") -> tuple:
    """Cache keys a training run needs: :data:`KEYS` of its kind, ``lesion`` for a lesion-weighted
    loss, and ``r2prime_key`` instead of ``r2p`` for the chi-sepnet's R2' input (``r2p_pred``: the
    R2* pipeline's predicted R2')."""
    ks = [r2prime_key if (k == "r2p" and kind == "chisepnet-r2prime") else k for k in KEYS[kind]]
    if lesion:
        ks.append("lesion")
    return tuple(ks)


class PatchSampler:
    """Random patches from a list of volumes; a pure function of (seed, step).

    :meth:`batch` returns the raw patches (cache dtypes, stacked (N, 1, X, Y, Z)) and one augmentation
    dict per sample; the loop converts and augments them on the training device.
    """

    def __init__(self, volumes, patch=64, p_shapes=0.25, scale_range=(0.6, 1.6), flips=True,
                 seed=0, keys=None, p_lesion=0.0):
        self.p_lesion = float(p_lesion)
        self.set_volumes(volumes)
        self.patch = int(patch)
        self.p_shapes = p_shapes
        self.scale_range = scale_range
        self.flips = flips
        self.seed = int(seed)
        self.keys = keys

    def set_volumes(self, volumes):
        self.volumes = list(volumes)
        self.heads = [v for v in self.volumes if v.kind != "shapes"]
        self.shapes = [v for v in self.volumes if v.kind == "shapes"]
        self.lesioned = [v for v in self.heads if len(v.lesion_centres)]
        if not self.volumes:
            raise ValueError("no training volumes")
        if self.p_lesion > 0 and not self.lesioned:
            raise ValueError("p_lesion > 0 but no training head has a lesion mask; add them with "
                             "python -m chisep.training.data --out CACHE --add-lesions")

    def sample(self, rng):
        """One patch: a random-shape volume with probability ``p_shapes``, else a head; of the head
        patches a fraction ``p_lesion`` is centred on a random lesion voxel (jittered by up to a
        quarter patch, so lesions are seen away from the patch centre too)."""
        pool = self.heads
        if self.shapes and (not self.heads or rng.random() < self.p_shapes):
            pool = self.shapes
        if pool is self.heads and self.p_lesion > 0 and rng.random() < self.p_lesion:
            v = self.lesioned[int(rng.integers(len(self.lesioned)))]
            j = self.patch // 4
            c = v.lesion_centres[int(rng.integers(len(v.lesion_centres)))] + rng.integers(-j, j + 1, 3)
        else:
            v = pool[int(rng.integers(len(pool)))]
            c = v.centres[int(rng.integers(len(v.centres)))]
        p = v.patch(c, self.patch, self.keys, dtype=None)
        return p, draw_augmentation(rng, self.scale_range, self.flips)

    def batch(self, step: int, batch: int):
        rng = np.random.default_rng([self.seed, int(step)])
        ps, augs = zip(*[self.sample(rng) for _ in range(batch)])
        b = {k: np.stack([p[k] for p in ps])[:, None] for k in ps[0]}
        b["_aug"] = list(augs)
        return b


def fixed_patches(volumes, patch=64, n_per_volume=4, seed=12345):
    """Deterministic validation patches (no augmentation) from held-out volumes."""
    rng = np.random.default_rng(seed)
    out = []
    for v in volumes:
        for _ in range(n_per_volume):
            c = v.centres[int(rng.integers(len(v.centres)))]
            out.append(augment(v.patch(c, patch), {"flip": [False] * 3, "swap": False, "scale": 1.0}))
    return out


def _rewrite(path: Path, add: dict):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(add)
    _save_atomic(path, arrays)


def add_lesion_masks(cache_dir, log=print):
    """Add the truth ``lesion`` mask to cached heads made before it was stored.

    Re-simulates each head from its meta (seed, size, SNR, lesion count: the lesions do not depend on
    the noise) and crops the truth lesion labels like the other arrays. Shapes volumes get an empty
    mask. Volumes that already have one are skipped.
    """
    from ..simulate import simulate_head

    for p in _cache_files(cache_dir):
        with np.load(p, allow_pickle=False) as z:
            if "lesion" in z.files:
                continue
            meta = json.loads(str(z["meta"]))
            m = z["mask"] > 0
        if meta.get("kind", "head") == "shapes":
            _rewrite(p, {"lesion": np.zeros(m.shape, np.uint8)})
            log(f"{p.stem}: empty lesion mask (shapes)")
            continue
        t0 = time.time()
        h = simulate_head(seed=int(meta["seed"]), size=meta.get("size", "full"), snr=meta.get("snr"),
                          n_lesions=meta.get("n_lesions"))
        lo, hi = meta["crop_lo"], meta["crop_hi"]
        lab = h.truth["lesions"][tuple(slice(a, b) for a, b in zip(lo, hi))]
        if lab.shape != m.shape:
            raise ValueError(f"{p}: re-simulated head does not match the cached crop {m.shape} vs {lab.shape}")
        _rewrite(p, {"lesion": ((lab > 0) & m).astype(np.uint8)})
        log(f"{p.stem}: {int(lab.max())} lesions, {int(((lab > 0) & m).sum())} voxels ({time.time() - t0:.0f} s)")


def add_predicted_r2prime(cache_dir, weights="builtin", device="cpu", log=print):
    """Add ``r2p_pred`` (R2'/Dr, ppm): the R2'-prediction net applied to each volume's measured R2*.

    This is what the chi-sepnet of the R2* pipeline sees at inference. ``weights``: ``"builtin"``
    (the shipped r2prime-from-r2star net) or a weights file. Recomputes every volume (the weights
    may have changed).
    """
    from ..network.inference import predict_r2prime_from_r2star
    from ..network.weights import load_builtin, load_weights

    ws = load_builtin("r2prime-from-r2star") if weights == "builtin" else \
        load_weights(weights, kind="r2prime-from-r2star")
    for p in _cache_files(cache_dir):
        t0 = time.time()
        with np.load(p, allow_pickle=False) as z:
            r2s = z["r2s"].astype(np.float32) * DR
            m = z["mask"].astype(np.uint8)
        pred = predict_r2prime_from_r2star(ws, r2s, m, np.eye(4), b0_dir=(0.0, 0.0, 1.0), device=device)
        _rewrite(p, {"r2p_pred": (np.asarray(pred, np.float32) / DR * (m > 0)).astype(np.float16)})
        log(f"{p.stem}: r2p_pred ({time.time() - t0:.0f} s)")


def main(argv=None):
    """``python -m chisep.training.data ARGS`` is ``chisep train-cache ARGS``."""
    from ..cli import main as cli_main

    return cli_main(["train-cache", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
