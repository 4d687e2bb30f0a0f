"""QSM-CI stage contract: run chisep as QSM-CI's ``chi-separation`` and ``r2prime-generation`` stages.

QSM-CI (the community QSM benchmark, PyPI ``qsm-ci``) hands a method an input directory and an
output directory (``recon IN OUT``). File names are QSM-CI's canonical artifact names
(``qsm_ci.stages.ARTIFACT_FILE``):

``chi-separation``
    IN: ``localfield.nii.gz`` (local field, ppm), ``r2prime.nii.gz`` (R2', Hz), ``chimap.nii.gz``
    (chi_total / QSM, ppm), ``magnitude.nii.gz`` (multi-echo GRE magnitude, 4-D x, y, z, echo),
    ``mask.nii.gz``, ``params.json`` (``TE`` list in s, ``B0`` in T, ``B0_dir`` unit vector in the
    array frame, ``voxel_size`` in mm), optionally ``config.json`` (``--set NAME=VALUE`` overrides).
    OUT: ``chi-para.nii.gz`` (chi+, ppm) and ``chi-dia.nii.gz`` (chi-, ppm, a POSITIVE magnitude),
    on the input grid, zero outside the mask.
``r2prime-generation``
    IN: ``magnitude.nii.gz``, ``mask.nii.gz``, ``params.json``. OUT: ``r2prime.nii.gz`` (Hz).

Methods: ``chi-separation`` with any of :data:`chisep.pipeline.METHODS` (default chisepnet-r2prime;
chi-sepnet's QSM channel is the stage's ``chimap`` unless ``qsm_channel="closed-form"``);
``r2prime-generation`` with chi-sepnet-R2*'s R2'-prediction net on the R2* fitted to the magnitude
(``method="network"``, default) or R2* minus a constant R2 (``method="r2star-minus-r2"``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from ..io import InputError, atomic_output_dir, load_nifti, save_nifti

#: QSM-CI's canonical artifact files (the same names as ``qsm_ci.stages.ARTIFACT_FILE``)
ARTIFACT_FILE = {
    "magnitude": "magnitude.nii.gz", "mask": "mask.nii.gz", "params": "params.json",
    "localfield": "localfield.nii.gz", "chimap": "chimap.nii.gz", "r2prime": "r2prime.nii.gz",
    "chi-para": "chi-para.nii.gz", "chi-dia": "chi-dia.nii.gz",
}
STAGES = {
    "chi-separation": {"consumes": ["localfield", "r2prime", "chimap", "magnitude", "mask", "params"],
                       "produces": ["chi-para", "chi-dia"]},
    "r2prime-generation": {"consumes": ["magnitude", "mask", "params"], "produces": ["r2prime"]},
}
#: R2 (Hz) assumed by the r2star-minus-r2 R2' generator (white/grey matter at 3 T)
DEFAULT_ASSUMED_R2_HZ = 14.0


def read_params(in_dir) -> dict:
    """params.json -> ``te_s`` (list, s), ``b0_t`` (T), ``b0_dir`` (unit 3-vector), ``voxel_size`` (mm),
    plus ``config`` (config.json or {}). Raises :class:`InputError` naming the missing key."""
    p = Path(in_dir) / ARTIFACT_FILE["params"]
    if not p.is_file():
        raise InputError(f"{p}: missing; a QSM-CI stage directory has params.json with TE, B0, B0_dir, voxel_size")
    try:
        d = json.loads(p.read_text())
    except ValueError as exc:
        raise InputError(f"{p}: not valid JSON ({exc})") from None
    for k in ("TE", "B0", "B0_dir", "voxel_size"):
        if k not in d:
            raise InputError(f"{p}: no {k!r}; QSM-CI params.json has TE (s), B0 (T), B0_dir and voxel_size (mm)")
    te = [float(t) for t in (d["TE"] if isinstance(d["TE"], (list, tuple)) else [d["TE"]])]
    if any(t > 1.0 for t in te):
        raise InputError(f"{p}: TE {te} look like milliseconds; QSM-CI gives echo times in seconds")
    b0_dir = np.asarray(d["B0_dir"], float)
    if b0_dir.shape != (3,) or np.linalg.norm(b0_dir) == 0:
        raise InputError(f"{p}: B0_dir must be a non-zero 3-vector, got {d['B0_dir']}")
    cfg_p = Path(in_dir) / "config.json"
    cfg = json.loads(cfg_p.read_text()) if cfg_p.is_file() else {}
    return {"te_s": te, "b0_t": float(d["B0"]), "b0_dir": b0_dir / np.linalg.norm(b0_dir),
            "voxel_size": [float(v) for v in d["voxel_size"]], "config": cfg}


def _affine_for(affine, voxel_size):
    """The image affine when it agrees with params' voxel_size, else a diagonal one with it (QSM-CI's
    voxel_size is authoritative for the dipole kernel)."""
    from ..physics import voxel_size_from_affine

    if np.allclose(voxel_size_from_affine(affine), voxel_size, rtol=1e-3):
        return np.asarray(affine, float)
    a = np.eye(4)
    a[:3, :3] = np.diag(voxel_size)
    return a


def _load(in_dir, art, ndim=3):
    p = Path(in_dir) / ARTIFACT_FILE[art]
    if not p.is_file():
        raise InputError(f"{p}: missing; the stage needs {ARTIFACT_FILE[art]}")
    return load_nifti(p, ndim=ndim)


def _magnitude(in_dir, n_te):
    mag, aff = _load(in_dir, "magnitude", ndim=(3, 4))
    if mag.ndim == 3:
        mag = mag[..., None]
    if mag.shape[-1] != n_te:
        raise InputError(f"{Path(in_dir) / ARTIFACT_FILE['magnitude']}: {mag.shape[-1]} echoes but params.json "
                         f"lists {n_te} TE values")
    return mag, aff


def r2prime_generation(in_dir, out_dir, method: str = "network", assumed_r2_hz: Optional[float] = None,
                       device: str = "cpu") -> Path:
    """QSM-CI ``r2prime-generation``: multi-echo magnitude -> ``r2prime.nii.gz`` (Hz, >= 0, zero
    outside the mask). Returns the output path."""
    from ..preprocess.relaxometry import r2star

    prm = read_params(in_dir)
    mag, aff = _magnitude(in_dir, len(prm["te_s"]))
    mask, _ = _load(in_dir, "mask")
    m = mask > 0.5
    if mag.shape[:3] != m.shape:
        raise InputError(f"{in_dir}: magnitude grid {mag.shape[:3]} differs from the mask's {m.shape}")
    affine = _affine_for(aff, prm["voxel_size"])
    r2s = np.asarray(r2star(mag, prm["te_s"], m), np.float32)
    method = prm["config"].get("method", method)
    if method == "network":
        from ..network.inference import predict_r2prime_from_r2star
        from ..network.weights import load_builtin
        ws = load_builtin("r2prime-from-r2star")
        r2p = predict_r2prime_from_r2star(ws, r2s, m.astype(np.uint8), affine, b0_dir=prm["b0_dir"], device=device)
    elif method == "r2star-minus-r2":
        r2 = float(prm["config"].get("R2", assumed_r2_hz if assumed_r2_hz is not None else DEFAULT_ASSUMED_R2_HZ))
        r2p = np.clip(r2s - r2, 0.0, None)
    else:
        raise InputError(f"unknown r2prime-generation method {method!r}; use network or r2star-minus-r2")
    r2p = np.where(m, np.asarray(r2p, np.float32), 0.0)
    out_dir = Path(out_dir)
    with atomic_output_dir(out_dir) as stage:
        save_nifti(stage / ARTIFACT_FILE["r2prime"], r2p, aff)
    return out_dir / ARTIFACT_FILE["r2prime"]


def chi_separation(in_dir, out_dir, method: str = "chisepnet-r2prime", qsm_channel: str = "chimap",
                   weights=None, device: str = "cpu", dr: Optional[float] = None) -> dict:
    """QSM-CI ``chi-separation``: writes ``chi-para.nii.gz`` and ``chi-dia.nii.gz`` (ppm, chi- positive).

    ``method`` one of :data:`chisep.pipeline.METHODS` (``config.json`` ``method`` overrides);
    ``qsm_channel``: ``chimap`` (the stage's chi map as chi-sepnet's QSM input) or ``closed-form``.
    Returns the :class:`chisep.pipeline.RunResult` report plus the output paths.
    """
    from ..pipeline import Maps, separate
    from ..preprocess.relaxometry import r2star

    prm = read_params(in_dir)
    cfg = prm["config"]
    method = cfg.get("method", method)
    qsm_channel = cfg.get("qsm_channel", qsm_channel)
    if qsm_channel not in ("chimap", "closed-form"):
        raise InputError(f"qsm_channel must be chimap or closed-form, got {qsm_channel!r}")
    field, aff = _load(in_dir, "localfield")
    mask, _ = _load(in_dir, "mask")
    r2p, _ = _load(in_dir, "r2prime")
    chi, _ = _load(in_dir, "chimap")
    mag, _ = _magnitude(in_dir, len(prm["te_s"]))
    for name, arr in (("mask", mask), ("r2prime", r2p), ("chimap", chi), ("magnitude", mag[..., 0])):
        if arr.shape != field.shape:
            raise InputError(f"{in_dir}: {name} grid {arr.shape} differs from localfield's {field.shape}")
    m = (mask > 0.5).astype(np.uint8)
    affine = _affine_for(aff, prm["voxel_size"])
    maps = Maps(affine=affine, mask=m, local_field=field * m, b0_t=prm["b0_t"], b0_dir=prm["b0_dir"],
                r2prime=np.clip(r2p, 0, None) * m, r2star=np.asarray(r2star(mag, prm["te_s"], m > 0), np.float32) * m,
                qsm=(chi * m) if qsm_channel == "chimap" else None,
                magnitude=np.sqrt(np.sum(mag.astype(np.float64) ** 2, -1)).astype(np.float32))
    if "Dr" in cfg and dr is None:
        dr = float(cfg["Dr"])
    res = separate(maps, method, weights=weights, device=device, dr=dr)
    out_dir = Path(out_dir)
    with atomic_output_dir(out_dir) as stage:
        save_nifti(stage / ARTIFACT_FILE["chi-para"], res.maps["chi_para"] * m, aff)
        save_nifti(stage / ARTIFACT_FILE["chi-dia"], np.abs(res.maps["chi_dia"]) * m, aff)
    rep = dict(res.report)
    rep["outputs"] = [str(out_dir / ARTIFACT_FILE["chi-para"]), str(out_dir / ARTIFACT_FILE["chi-dia"])]
    rep["qsm_channel"] = qsm_channel
    return rep


def detect_stage(in_dir) -> str:
    """``chi-separation`` when the directory holds a local field, else ``r2prime-generation``."""
    return "chi-separation" if (Path(in_dir) / ARTIFACT_FILE["localfield"]).is_file() else "r2prime-generation"


def write_stage_dirs(head, root, r2prime=None) -> dict:
    """Build QSM-CI stage input directories from a simulated head (as QSM-CI's isolated mode feeds
    them: the ground-truth local field and chi map, the measured magnitude, the true mask).

    ``r2prime``: the R2' (Hz) to feed the chi-separation stage (default: the true R2'). Returns
    ``{"chi-separation": dir, "r2prime-generation": dir}``.
    """
    from ..io import write_json

    root = Path(root)
    t = head.truth
    params = {"TE": [float(x) for x in head.te_s], "B0": float(head.b0_t),
              "B0_dir": [float(v) for v in head.b0_dir], "voxel_size": [float(v) for v in head.voxel_size]}
    dirs = {}
    for stage in STAGES:
        d = root / stage / "input"
        save_nifti(d / ARTIFACT_FILE["magnitude"], head.gre_mag, head.affine)
        save_nifti(d / ARTIFACT_FILE["mask"], t["mask"], head.affine, dtype=np.uint8)
        write_json(d / ARTIFACT_FILE["params"], params)
        if stage == "chi-separation":
            save_nifti(d / ARTIFACT_FILE["localfield"], t["local_field"] * (t["mask"] > 0), head.affine)
            save_nifti(d / ARTIFACT_FILE["chimap"], t["chi_total"] * (t["mask"] > 0), head.affine)
            save_nifti(d / ARTIFACT_FILE["r2prime"], t["r2prime"] if r2prime is None else r2prime, head.affine)
        dirs[stage] = d
    return dirs


def write_algorithm(dest, stage: str = "chi-separation", python: Optional[str] = None,
                    method: Optional[str] = None) -> Path:
    """Write a QSM-CI method folder (``algorithm.yml`` + ``run.sh``) that runs this chisep as
    ``stage`` with QSM-CI's local runner: ``qsm-ci run DEST --runner local --localfield ...``.

    ``python``: the interpreter that has chisep installed (default: this one). ``method``: the
    chi-separation method (default chisepnet-r2prime; ``--set method=...`` overrides per run).
    """
    import sys

    if stage not in STAGES:
        raise InputError(f"unknown QSM-CI stage {stage!r}; chisep provides {', '.join(STAGES)}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    py = python or sys.executable
    name = "chisep chi-sepnet" if stage == "chi-separation" else "chisep R2' from R2*"
    params = ("method (chisepnet-r2prime|chisepnet-r2star|regularized), qsm_channel (chimap|closed-form), Dr"
              if stage == "chi-separation" else "method (network|r2star-minus-r2), R2 (Hz)")
    # JSON strings are valid YAML scalars (the description holds ':' and '|')
    yml = (f"name: {json.dumps(name)}\n"
           f"stage: {stage}\n"
           f"description: {json.dumps(f'chisep (ChiSeparation) as the QSM-CI {stage} stage; --set parameters: {params}')}\n"
           f"inputs: [{', '.join(STAGES[stage]['consumes'])}]\n")
    extra = f" --method {method}" if method else ""
    sh = ("#!/usr/bin/env bash\n"
          f"# chisep as a QSM-CI {stage} method: reads the stage's input dir ($1), writes its output dir ($2)\n"
          "set -euo pipefail\n"
          f'exec "${{CHISEP_PYTHON:-{py}}}" -m chisep qsmci "${{1:-/input}}" "${{2:-/output}}" --stage {stage}{extra}\n')
    (dest / "algorithm.yml").write_text(yml)
    (dest / "run.sh").write_text(sh)
    (dest / "run.sh").chmod(0o755)
    return dest
