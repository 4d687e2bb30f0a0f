"""Group level of ``chisep bids``: per-subject ROI means, the cohort lesion table, a QC figure.

ROIs (the ``roi_source`` column says which were available for each subject/session)
    ``segmentation``: the job's dseg (label names from its dseg.tsv, resampled nearest-neighbour onto
    the GRE grid) gives the deep grey nuclei (caudate, putamen, globus pallidus, thalamus, substantia
    nigra, red nucleus, dentate; left and right pooled) and white matter (minus lesions), each inside
    the brain mask; ``brain-mask``: without a segmentation, only the whole brain mask.
    Lesions, whenever a lesion table exists: counts per subtype (iron, demyelinated, both, neither,
    other, unclassified) and, per subtype, the volume-weighted mean chi_para / |chi_dia| (ppm).
Units: chi_para, |chi_dia|, chi_total in ppm; R2' in Hz. Empty cells are ``n/a``.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..io import InputError, atomic_file, load_nifti, write_tsv
from .layout import find_jobs, output_paths
from .subject import roi_key

MAPS = (("chi_para", "ppm"), ("chi_dia", "ppm"), ("chi_total", "ppm"), ("r2prime", "Hz"))
ROIS = ("caudate", "putamen", "globus_pallidus", "thalamus", "substantia_nigra", "red_nucleus",
        "dentate", "white_matter", "brain")
SUBTYPES = ("iron", "demyelinated", "both", "neither", "other", "unclassified")


def read_tsv(path) -> list:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def roi_means(maps: dict, mask, seg=None, seg_labels=None, lesions=None) -> tuple:
    """Mean of each map in each available ROI.

    Returns ``(means, source)``: ``means`` ``{roi: {map: mean}}`` and ``{roi: n_voxels}`` under
    ``"_n"``; ``source`` ``"segmentation"`` or ``"brain-mask"``.
    """
    brain = np.asarray(mask) > 0
    les = np.zeros_like(brain) if lesions is None else np.asarray(lesions) > 0
    sel = {"brain": brain}
    source = "brain-mask"
    if seg is not None and seg_labels:
        source = "segmentation"
        for idx, name in seg_labels.items():
            key = roi_key(name)
            if key in ROIS:
                sel[key] = sel.get(key, np.zeros_like(brain)) | (np.asarray(seg) == idx)
        for k in list(sel):
            if k != "brain":
                sel[k] = sel[k] & brain & ~les
    out = {"_n": {}}
    for roi, m in sel.items():
        n = int(m.sum())
        out["_n"][roi] = n
        if n == 0:
            continue
        out[roi] = {name: float(np.asarray(maps[name])[m].mean()) for name, _u in MAPS if name in maps}
    return out, source


def _lesion_summary(rows: list) -> dict:
    out = {f"lesions_{s}_n": 0 for s in SUBTYPES}
    out["lesions_n"] = len(rows)
    out["lesions_rims_n"] = 0
    acc = {}
    for r in rows:
        st = r.get("subtype") or "unclassified"
        st = st if st in SUBTYPES else "other"
        out[f"lesions_{st}_n"] += 1
        if r.get("rim") in ("1", 1, True):
            out["lesions_rims_n"] += 1
        try:
            n = float(r.get("n_voxels") or 0)
            a = acc.setdefault(st, [0.0, 0.0, 0.0])
            a[0] += n
            a[1] += n * float(r["chi_para_mean"])
            a[2] += n * float(r["chi_dia_mean"])
        except (KeyError, ValueError, TypeError):
            continue
    for st, (n, p, d) in acc.items():
        if n > 0:
            out[f"lesions_{st}_chi_para_mean"] = p / n
            out[f"lesions_{st}_chi_dia_mean"] = d / n
    return out


def _slice_index(mask):
    idx = np.argwhere(np.asarray(mask) > 0)
    return int(np.round(idx[:, 2].mean())) if len(idx) else mask.shape[2] // 2


def qc_figure(rows: list, path) -> Path:
    """PNG with one row per subject/session: axial chi_para and |chi_dia| through the brain's centre
    (display ranges 0-0.15 and 0-0.06 ppm, as in the single-subject report)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report import CMAPS, DISPLAY_RANGE, TITLES

    n = max(len(rows), 1)
    fig, axes = plt.subplots(n, 2, figsize=(6, 2.8 * n), squeeze=False)
    for i, r in enumerate(rows):
        k = _slice_index(r["mask"])
        for j, name in enumerate(("chi_para", "chi_dia")):
            ax = axes[i, j]
            lo, hi = DISPLAY_RANGE[name]
            im = ax.imshow(np.asarray(r[name])[:, :, k].T[::-1], cmap=CMAPS[name], vmin=lo, vmax=hi)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{r['job']}  {TITLES[name]}", fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    if not rows:
        axes[0, 0].set_title("no completed subjects")
    fig.tight_layout()
    with atomic_file(path, ".png") as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return Path(path)


def run_group(out_root, bids_dir, participant_label=None, session_label=None) -> dict:
    """Summarise the participant-level derivatives in ``out_root`` (see module docstring).

    Jobs come from ``bids_dir`` (same selection rules as the participant level); jobs without
    complete outputs are listed with ``status`` ``missing`` in the ROI table.
    """
    from .subject import _on_grid

    out_root = Path(out_root)
    if not (out_root / "dataset_description.json").is_file():
        raise InputError(f"{out_root}: no participant-level derivatives here (no dataset_description.json); "
                         f"run `chisep bids BIDS_DIR {out_root} participant` first")
    jobs = find_jobs(bids_dir, participant_label, session_label, exclude_dir=out_root)
    roi_rows, lesion_rows, fig_rows, sources = [], [], [], []
    map_cols = ["participant_id", "session_id", "status", "roi_source"]
    for job in jobs:
        paths = output_paths(out_root, job.entities)
        row = {"participant_id": f"sub-{job.subject}", "session_id": f"ses-{job.session}" if job.session else "n/a"}
        if not all(paths[k].exists() for k in ("chi_para", "chi_dia", "chi_total", "mask")):
            row["status"] = "missing"
            roi_rows.append(row)
            continue
        maps = {}
        for name, _u in MAPS:
            if paths[name].exists():
                maps[name], affine = load_nifti(paths[name], ndim=3)
        mask, affine = load_nifti(paths["mask"], ndim=3)
        lesions = load_nifti(paths["lesions"], ndim=3)[0] if paths["lesions"].exists() else None
        seg = None
        if job.dseg and job.dseg_labels:
            seg, _ = _on_grid(job.dseg, mask.shape, affine, "segmentation")
        means, source = roi_means(maps, mask, seg, job.dseg_labels, lesions)
        sources.append(source)
        row.update({"status": "done", "roi_source": source})
        for roi in ROIS:
            if roi in means:
                row[f"{roi}_n_voxels"] = means["_n"][roi]
                for name, unit in MAPS:
                    if name in means[roi]:
                        row[f"{roi}_{name}_mean_{unit.lower()}"] = means[roi][name]
        if paths["lesion_table"].exists():
            rows = read_tsv(paths["lesion_table"])
            row.update(_lesion_summary(rows))
            for r in rows:
                lesion_rows.append({"participant_id": row["participant_id"], "session_id": row["session_id"], **r})
        roi_rows.append(row)
        fig_rows.append({"job": job.name, "mask": mask, "chi_para": maps["chi_para"], "chi_dia": maps["chi_dia"]})
    cols = list(map_cols)
    for r in roi_rows:
        cols += [k for k in r if k not in cols]
    gdir = out_root / "group"
    roi_path = write_tsv(gdir / "group_roi_means.tsv", cols, roi_rows)
    lcols = ["participant_id", "session_id"]
    for r in lesion_rows:
        lcols += [k for k in r if k not in lcols]
    les_path = write_tsv(gdir / "group_lesions.tsv", lcols, lesion_rows)
    fig_path = qc_figure(fig_rows, gdir / "group_qc.png")
    return {"n_subjects": len(fig_rows), "n_lesions": len(lesion_rows), "roi_sources": sources,
            "roi_table": roi_path, "lesion_table": les_path, "figure": fig_path, "rows": roi_rows}
