"""Accuracy against a known truth and the demo figure (PNG).

The figure shows, for each method and the truth, chi_para (warm), |chi_dia| (cool) and chi_total
(grey) in axial, coronal and sagittal views through the same point, with colour bars in ppm.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

#: display ranges in ppm that suit brain tissue
DISPLAY_RANGE = {"chi_para": (0.0, 0.15), "chi_dia": (0.0, 0.06), "chi_total": (-0.10, 0.15)}
CMAPS = {"chi_para": "hot", "chi_dia": "Blues_r", "chi_total": "gray"}
TITLES = {"chi_para": "χpara (ppm)", "chi_dia": "|χdia| (ppm)", "chi_total": "χtotal (ppm)"}


def accuracy(pred: dict, truth: dict, eval_mask: np.ndarray, tissue=None, tissue_labels=None) -> dict:
    """NRMSE/PSNR/SSIM/HFEN of chi_para and chi_dia (and chi_total) in ``eval_mask``, plus ROI means.

    ``tissue``/``tissue_labels`` (int map, name->label) add mean values per region for prediction
    and truth (ppm).
    """
    from . import metrics

    out = {}
    for name in ("chi_para", "chi_dia", "chi_total"):
        if name in pred and name in truth:
            out[name] = {k: float(v) for k, v in
                         metrics.all_metrics(pred[name], truth[name], eval_mask).items()}
    if tissue is not None and tissue_labels:
        rois = {}
        for rname, lab in tissue_labels.items():
            sel = (tissue == lab) & (eval_mask > 0)
            if lab == 0 or sel.sum() < 5:
                continue
            rois[rname] = {f"{m}_{w}": round(float(src[m][sel].mean()), 5)
                           for m in ("chi_para", "chi_dia") for w, src in (("pred", pred), ("truth", truth))
                           if m in src}
        out["roi_means_ppm"] = rois
    return out


def _center_of_mass(mask):
    idx = np.argwhere(mask > 0)
    return tuple(int(v) for v in np.round(idx.mean(axis=0))) if len(idx) else tuple(s // 2 for s in mask.shape)


def _views(vol, c, voxel_size):
    """Axial, coronal and sagittal slices (display-oriented) with their aspect ratios."""
    vs = np.asarray(voxel_size, dtype=float)
    ax = vol[:, :, c[2]].T[::-1]
    co = vol[:, c[1], :].T[::-1]
    sa = vol[c[0], :, :].T[::-1]
    return [(ax, vs[1] / vs[0]), (co, vs[2] / vs[0]), (sa, vs[2] / vs[1])]


def make_figure(rows: dict, path, mask=None, voxel_size=(1, 1, 1), center=None, title=None) -> Path:
    """Write a PNG with one row per entry of ``rows`` (name -> dict of chi_para/chi_dia/chi_total).

    Each row shows the three maps in axial/coronal/sagittal views; one colour bar in ppm per map.
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(rows)
    maps = ("chi_para", "chi_dia", "chi_total")
    first = next(iter(rows.values()))
    shape = first["chi_para"].shape
    m = np.ones(shape, bool) if mask is None else mask > 0
    c = center or _center_of_mass(m)
    fig, axes = plt.subplots(len(names), 9, figsize=(18, 2.3 * len(names) + 1.2),
                             gridspec_kw={"wspace": 0.03, "hspace": 0.12}, squeeze=False)
    ims = {}
    for r, name in enumerate(names):
        for j, mp in enumerate(maps):
            vol = np.where(m, rows[name].get(mp, np.zeros(shape)), np.nan)
            lo, hi = DISPLAY_RANGE[mp]
            cmap = plt.get_cmap(CMAPS[mp]).copy()
            cmap.set_bad("black")
            for v, (img, aspect) in enumerate(_views(vol, c, voxel_size)):
                ax = axes[r, 3 * j + v]
                ims[mp] = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"{TITLES[mp]} {('axial', 'coronal', 'sagittal')[v]}", fontsize=9)
            axes[r, 0].set_ylabel(name, fontsize=10)
    for j, mp in enumerate(maps):
        cax = fig.add_axes([0.135 + j * 0.262, 0.04, 0.2, 0.015])
        cb = fig.colorbar(ims[mp], cax=cax, orientation="horizontal")
        cb.set_label(TITLES[mp], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.subplots_adjust(left=0.04, right=0.99, top=0.92 if title else 0.95, bottom=0.1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
