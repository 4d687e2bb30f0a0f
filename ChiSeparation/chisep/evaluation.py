"""Evaluation on simulated heads: every method from raw acquisitions, scored against the truth.

Shared by ``chisep demo`` (one head, files written) and ``benchmarks/bench_chisep.py`` (held-out
heads, numbers aggregated). Metrics (:mod:`chisep.metrics`, docs/DESIGN.md "Evaluation") are taken
on the evaluation mask: brain minus CSF minus vessels.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .options import METHODS
from .pipeline import Maps, preprocess_raw, separate
from .progress import scaled


@dataclass
class Evaluation:
    head: object
    maps: Maps
    results: dict = field(default_factory=dict)       # method -> RunResult
    accuracy: dict = field(default_factory=dict)      # method -> metrics
    lesion_rows: list = field(default_factory=list)
    lesion_summary: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


def preprocess_from_files(data_dir, progress=None, **options) -> Maps:
    """Read ``gre_mag/gre_phase[/se_mag].nii.gz`` + sidecars as a user's run would, and preprocess.

    ``options``: fields of :class:`chisep.options.PreprocessOptions` (e.g. ``bg_method``)."""
    from .options import PreprocessOptions
    from .acquisition import load_acquisition

    data_dir = Path(data_dir)
    se = data_dir / "se_mag.nii.gz"
    acq = load_acquisition(data_dir / "gre_mag.nii.gz", data_dir / "gre_phase.nii.gz",
                           se=se if se.exists() else None)
    return preprocess_raw(**acq.preprocess_kwargs(), options=PreprocessOptions(**options), progress=progress)


def run_methods(maps: Maps, methods=METHODS, weights=None, device="auto", progress=None) -> dict:
    """Run each method on ``maps`` (chi-sepnet-R2* sees the GRE-only maps): method -> RunResult.

    A method that cannot run (no weights installed, say) raises: a demo or benchmark that quietly
    left a method out would report on fewer methods than it was asked for."""
    gre_only = replace(maps, r2=None, r2prime=None)
    results = {}
    n = len(methods)
    for i, method in enumerate(methods):
        p = scaled(progress, i / n, (i + 1) / n)
        if p:
            p(0.0, f"running {method}")
        src = gre_only if method == "chisepnet-r2star" else maps
        results[method] = separate(src, method, weights=weights, device=device, progress=p)
    return results


def lesion_rows(head, results: dict) -> list:
    """One row per simulated lesion: truth subtype/rim and the class read from each method's maps."""
    from . import lesions as L
    from .simulate import TISSUE_LABELS

    truth = head.truth
    # the NAWM reference is the white-matter segmentation, as a user would give with --wm-mask
    wm = (truth["tissue"] == TISSUE_LABELS["white_matter"]) if "tissue" in truth else None
    sources = {"truth": truth}
    sources.update({m: r.maps for m, r in results.items()})
    per_source = {}
    for src, maps in sources.items():
        stats = L.lesion_statistics(
            {k: maps[k] for k in ("chi_para", "chi_dia", "chi_total") if k in maps},
            truth["lesions"], head.affine, wm_mask=wm, csf_mask=truth.get("mask_csf"),
            brain_mask=truth["mask"])
        per_source[src] = {int(r["label"]): r for r in stats}
    rows = []
    for t in sorted(head.lesion_table, key=lambda t: int(t["label"])):
        lab = int(t["label"])
        row = {"label": lab, "true_subtype": t["subtype"], "true_rim": bool(t["rim"]),
               "volume_mm3": t.get("volume_mm3")}
        for src, st in per_source.items():
            r = st.get(lab)
            if r is None:
                continue
            row[f"{src}_subtype"] = L.subtype_from_classes(r["chi_para_class"], r["chi_dia_class"])
            row[f"{src}_para_class"] = r["chi_para_class"]
            row[f"{src}_dia_class"] = r["chi_dia_class"]
            row[f"{src}_rim"] = r.get("rim")
            row[f"{src}_chi_para_mean"] = r.get("chi_para_mean")
            row[f"{src}_chi_dia_mean"] = r.get("chi_dia_mean")
        rows.append(row)
    return rows


def lesion_summary(rows: list, methods) -> dict:
    """Subtype agreement with truth per source, and R2' vs R2* label agreement per map (%)."""
    out = {}
    n = len(rows)
    for src in ["truth"] + list(methods):
        ok = sum(1 for r in rows if r.get(f"{src}_subtype") == r["true_subtype"])
        rim_ok = sum(1 for r in rows if bool(r.get(f"{src}_rim")) == r["true_rim"])
        out[src] = {"n_lesions": n, "subtype_agreement_pct": round(100.0 * ok / max(n, 1), 1),
                    "rim_agreement_pct": round(100.0 * rim_ok / max(n, 1), 1)}
    if "chisepnet-r2prime" in methods and "chisepnet-r2star" in methods:
        for cls in ("para", "dia"):
            same = sum(1 for r in rows if r.get(f"chisepnet-r2prime_{cls}_class") is not None
                       and r.get(f"chisepnet-r2prime_{cls}_class") == r.get(f"chisepnet-r2star_{cls}_class"))
            out[f"r2prime_vs_r2star_{cls}_label_agreement_pct"] = round(100.0 * same / max(n, 1), 1)
    return out


def evaluate_head(head, data_dir, methods=METHODS, weights=None, device="auto", progress=None,
                  preprocess_options=None) -> Evaluation:
    """Write ``head``'s acquisitions to ``data_dir``, run the whole chain and every method, score them.

    ``preprocess_options`` (dict): fields of :class:`chisep.options.PreprocessOptions`."""
    from . import metrics
    from .report import accuracy
    from .simulate import TISSUE_LABELS, write_simulation

    timings = {}
    t = time.perf_counter()
    write_simulation(head, data_dir)
    maps = preprocess_from_files(data_dir, progress=scaled(progress, 0.0, 0.35), **(preprocess_options or {}))
    timings["preprocess"] = round(time.perf_counter() - t, 2)
    results = run_methods(maps, methods, weights, device, scaled(progress, 0.35, 0.95))
    for m, r in results.items():
        timings[m] = r.report.get("timings_s")
    truth = head.truth
    ev = metrics.evaluation_mask(truth["mask"], truth.get("mask_csf"), truth.get("mask_vessels"))
    acc = {m: accuracy(r.maps, truth, ev, truth.get("tissue"), TISSUE_LABELS) for m, r in results.items()}
    rows = lesion_rows(head, results) if head.lesion_table else []
    return Evaluation(head=head, maps=maps, results=results, accuracy=acc,
                      lesion_rows=rows, lesion_summary=lesion_summary(rows, list(results)) if rows else {},
                      timings=timings)
