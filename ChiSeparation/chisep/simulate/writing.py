"""Writing a simulated head: acquisitions with JSON sidecars and every truth map (docs/DESIGN.md,
"File contract")."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .. import physics
from ..io import atomic_output_dir, save_nifti, write_json
from .acquisition import SimulatedHead
from .anatomy import TISSUE_LABELS


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
