"""Write simulated heads (:func:`chisep.simulate.simulate_head`) as a BIDS dataset.

Per subject/session: ``anat/sub-<s>[_ses-<t>]_echo-<n>_part-mag|phase_MEGRE.nii.gz`` (one 3-D file
per echo; sidecar ``EchoTime`` in s, ``MagneticFieldStrength`` in T, ``B0Direction``, ``PhaseSign``),
``..._echo-<n>_MESE.nii.gz`` when the head has a spin echo; in ``derivatives/lesionseg`` the true
lesion labels as ``..._label-lesion_mask.nii.gz`` on a FLAIR-like grid (``flair_voxel_mm``, shifted
by 0.3 voxel, so that it must be resampled), and in ``derivatives/segmentation`` the tissue map as
``..._dseg.nii.gz`` with ``dseg.tsv`` (index, name). The truth maps go to ``sourcedata/truth/`` (not
BIDS data; benchmarks and tests read them).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from ..io import save_nifti, write_json
from .layout import derivative_name, resample_nearest


def write_dataset_description(bids_dir, name: str = "chisep simulated cohort") -> Path:
    d = Path(bids_dir)
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / "dataset_description.json", {"Name": name, "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    return d


def _deriv_description(d: Path, name: str):
    write_json(d / "dataset_description.json", {
        "Name": name, "BIDSVersion": "1.10.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "chisep simulate", "Description": "simulation ground truth"}]})


def flair_grid(shape, affine, flair_voxel_mm=(1.0, 1.0, 2.0), shift_vox: float = 0.3):
    """A coarser grid covering the same field of view, its origin shifted by ``shift_vox`` GRE voxels
    along each axis (0.3, not 0.5: an exact half-voxel shift puts every sample on a rounding tie)."""
    vs = np.asarray(flair_voxel_mm, float)
    gvs = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    fshape = tuple(int(np.ceil(s * g / v)) for s, g, v in zip(shape, gvs, vs))
    A = np.array(affine, float)
    A[:3, :3] = A[:3, :3] / gvs * vs
    A[:3, 3] = A[:3, 3] + A[:3, :3] @ (shift_vox * gvs / vs)
    return fshape, A


def write_subject(head, bids_dir, sub: str, ses: Optional[str] = None, lesions: bool = True,
                  segmentation: bool = True, flair_voxel_mm=(1.0, 1.0, 2.0), truth: bool = True) -> dict:
    """Write one simulated head as subject ``sub`` (session ``ses``); returns the paths written
    (``truth=False``: no sourcedata/truth copy, for tests that hold the head in memory)."""
    bids_dir = Path(bids_dir)
    ents = {"sub": sub, "ses": ses}
    anat = bids_dir / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
    out = {"mag": [], "phase": [], "se": []}
    base_sc = {"MagneticFieldStrength": float(head.b0_t), "B0Direction": [float(v) for v in head.b0_dir],
               "PhaseSign": int(head.phase_sign), "Modality": "MR"}
    for i, te in enumerate(head.te_s):
        for part, vol, key in (("mag", head.gre_mag, "mag"), ("phase", head.gre_phase, "phase")):
            p = anat / derivative_name({**ents, "echo": str(i + 1), "part": part}, "MEGRE")
            save_nifti(p, vol[..., i], head.affine, sidecar={**base_sc, "EchoTime": float(te),
                                                                   "EchoNumber": i + 1})
            out[key].append(p)
    if head.se_mag is not None:
        for i, te in enumerate(head.se_te_s):
            p = anat / derivative_name({**ents, "echo": str(i + 1)}, "MESE")
            save_nifti(p, head.se_mag[..., i], head.affine, sidecar={**base_sc, "EchoTime": float(te),
                                                                       "EchoNumber": i + 1})
            out["se"].append(p)
    if lesions:
        ld = bids_dir / "derivatives" / "lesionseg"
        _deriv_description(ld, "simulated lesion segmentation (FLAIR grid)")
        fshape, faff = flair_grid(head.shape, head.affine, flair_voxel_mm)
        lab = resample_nearest(head.truth["lesions"], head.affine, fshape, faff)
        p = ld / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat" / derivative_name(
            {**ents, "space": "FLAIR", "label": "lesion"}, "mask")
        save_nifti(p, lab, faff, dtype=np.int16)
        out["lesion_mask"] = p
    if segmentation:
        from ..simulate import TISSUE_LABELS
        sd = bids_dir / "derivatives" / "segmentation"
        _deriv_description(sd, "simulated tissue segmentation")
        with open(sd / "dseg.tsv", "w") as fh:
            fh.write("index\tname\n")
            for n, i in sorted(TISSUE_LABELS.items(), key=lambda kv: kv[1]):
                if i:
                    fh.write(f"{i}\t{n}\n")
        p = sd / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat" / derivative_name(ents, "dseg")
        save_nifti(p, head.truth["tissue"], head.affine, dtype=np.int16)
        out["dseg"] = p
    if not truth:
        return out
    tdir = bids_dir / "sourcedata" / "truth" / ("_".join(f"{k}-{v}" for k, v in ents.items() if v))
    for k in ("chi_para", "chi_dia", "chi_total", "r2prime", "mask", "mask_csf", "mask_vessels",
              "tissue", "lesions", "local_field", "r2star"):
        if k in head.truth:
            save_nifti(tdir / f"{k}.nii.gz", head.truth[k], head.affine,
                       dtype=np.float32 if k.startswith(("chi", "r2", "local")) else np.int16)
    (tdir / "lesions.json").write_text(json.dumps(head.lesion_table, default=float))
    out["truth"] = tdir
    return out


def corrupt_file(path) -> Path:
    """Overwrite a NIfTI file with bytes that are not a NIfTI (a failed transfer, for tests)."""
    Path(path).write_bytes(b"\x1f\x8b\x08\x00corrupt transfer")
    return Path(path)
