"""``chisep demo``: the method end to end on a simulated head, in one command.

Simulates a head (``chisep simulate``), writes its raw acquisitions, runs the preprocessing chain
from the files as a user would, then chi-sepnet-R2', chi-sepnet-R2* and the regularized method;
writes the maps of each method, a lesion table, report.json (inputs, versions, weights and their
model card, timings, accuracy against the simulation's truth) and figure.png.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..io import InputError, atomic_output_dir, write_json
from ..pipeline import METHODS, separate, versions, write_maps
from ..progress import make_progress, scaled


def add_parser(sub):
    p = sub.add_parser("demo", help="simulate a head and run every method on it (the one-command demo)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--seed", type=int, default=1, help="simulation seed (default 1; our weights never saw seeds < 100)")
    p.add_argument("--size", choices=("small", "full"), default="full",
                   help="full 1 mm head (default, a few minutes) or a small 64^3 block (seconds)")
    p.add_argument("--snr", type=float, default=100.0, help="GRE SNR of the simulation (0 = noiseless)")
    p.add_argument("--tilt", type=float, default=0.0, help="B0 tilt in degrees (oblique acquisition)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    p.add_argument("--weights", metavar="PATH", help="chi-sepnet weights (default built-in)")
    p.add_argument("--r2prime-weights", metavar="PATH", help="R2'-prediction weights (default built-in)")
    p.add_argument("--progress", choices=("text", "json", "none"), default="text")
    return p


def _lesion_rows(head, results, affine):
    from .. import lesions as L

    truth = head.truth
    csf = truth.get("mask_csf")
    rows = []
    sources = {"truth": truth}
    sources.update({m: r.maps for m, r in results.items()})
    table = {int(t["label"]): t for t in head.lesion_table}
    per_source = {}
    for src, maps in sources.items():
        per_source[src] = {int(r["label"]): r for r in L.lesion_statistics(
            {k: maps[k] for k in ("chi_para", "chi_dia", "chi_total") if k in maps},
            truth["lesions"], affine, wm_mask=None, csf_mask=csf, brain_mask=truth["mask"])}
    for lab, t in sorted(table.items()):
        row = {"label": lab, "true_subtype": t["subtype"], "true_rim": bool(t["rim"]),
               "volume_mm3": t.get("volume_mm3")}
        for src, st in per_source.items():
            r = st.get(lab)
            if r is None:
                continue
            row[f"{src}_subtype"] = r.get("subtype")
            row[f"{src}_para_class"] = r.get("chi_para_class")
            row[f"{src}_dia_class"] = r.get("chi_dia_class")
            row[f"{src}_rim"] = r.get("rim")
            row[f"{src}_chi_para_mean"] = r.get("chi_para_mean")
            row[f"{src}_chi_dia_mean"] = r.get("chi_dia_mean")
        rows.append(row)
    return rows


def _lesion_summary(rows, methods):
    out = {}
    n = len(rows)
    for src in ["truth"] + list(methods):
        key = f"{src}_subtype"
        ok = sum(1 for r in rows if r.get(key) is not None and r[key] == r["true_subtype"])
        out[src] = {"n_lesions": n, "subtype_agreement_pct": round(100.0 * ok / max(n, 1), 1)}
    if "chisepnet-r2prime" in methods and "chisepnet-r2star" in methods:
        for cls in ("para", "dia"):
            a = [r.get(f"chisepnet-r2prime_{cls}_class") for r in rows]
            b = [r.get(f"chisepnet-r2star_{cls}_class") for r in rows]
            same = sum(1 for x, y in zip(a, b) if x is not None and x == y)
            out[f"r2prime_vs_r2star_{cls}_label_agreement_pct"] = round(100.0 * same / max(n, 1), 1)
    return out


def run(args) -> int:
    from .. import metrics
    from ..pipeline import preprocess_raw
    from ..preprocess import load_echoes, load_gre
    from ..report import accuracy, make_figure
    from ..simulate import simulate_head, write_simulation

    progress = make_progress(args.progress)
    out = Path(args.out)
    timings = {}
    t0 = time.perf_counter()
    if progress:
        progress(0.0, f"simulating a {args.size} head (seed {args.seed})")
    head = simulate_head(seed=args.seed, size=args.size, snr=args.snr, tilt_deg=args.tilt,
                         progress=scaled(progress, 0.0, 0.15))
    timings["simulate"] = round(time.perf_counter() - t0, 2)
    with atomic_output_dir(out) as stage:
        data = stage / "data"
        write_simulation(head, data)
        # read the acquisitions back from the files, as a user's run would
        t = time.perf_counter()
        acq = load_gre(data / "gre_mag.nii.gz", data / "gre_phase.nii.gz")
        se = load_echoes(data / "se_mag.nii.gz", what="SE magnitude")
        maps = preprocess_raw(acq["mag"], acq["phase"], acq["te_s"], acq["affine"], b0_t=acq["b0_t"],
                              se_mag=se["data"], se_te_s=se["te_s"], phase_sign=acq.get("phase_sign", 1),
                              b0_dir=acq.get("b0_dir"), progress=scaled(progress, 0.15, 0.45))
        timings["preprocess"] = round(time.perf_counter() - t, 2)
        gre_only = replace(maps, r2=None, r2prime=None)
        results, skipped = {}, {}
        weights = None
        if args.weights or args.r2prime_weights:
            weights = {"chisepnet": args.weights, "r2prime": args.r2prime_weights, "qsm": None}
        n = len(args.methods)
        for i, method in enumerate(args.methods):
            lo, hi = 0.45 + 0.45 * i / n, 0.45 + 0.45 * (i + 1) / n
            if progress:
                progress(lo, f"running {method}")
            src = gre_only if method == "chisepnet-r2star" else maps
            try:
                res = separate(src, method, weights=weights, device=args.device,
                               progress=scaled(progress, lo, hi))
            except InputError as exc:
                if method.startswith("chisepnet") and "weights" in str(exc):
                    skipped[method] = str(exc)
                    print(f"chisep demo: skipping {method}: {exc}", file=sys.stderr)
                    continue
                raise
            results[method] = res
            write_maps(res, stage / method, extra_report={"command": "chisep demo"})
        # accuracy against the truth
        truth = head.truth
        ev = metrics.evaluation_mask(truth["mask"], truth.get("mask_csf"), truth.get("mask_vessels"))
        import chisep.simulate as S
        acc = {m: accuracy(r.maps, truth, ev, truth.get("tissue"), getattr(S, "TISSUE_LABELS", None))
               for m, r in results.items()}
        # lesions
        rows = _lesion_rows(head, results, head.affine) if head.lesion_table else []
        if rows:
            keys = []
            for r in rows:
                keys += [k for k in r if k not in keys]
            with open(stage / "lesions.csv", "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=keys)
                w.writeheader()
                w.writerows(rows)
        # figure
        fig_rows = {"truth": truth}
        fig_rows.update({m: r.maps for m, r in results.items()})
        make_figure(fig_rows, stage / "figure.png", mask=truth["mask"], voxel_size=head.voxel_size,
                    title=f"chisep demo: simulated head seed {args.seed} (SNR {args.snr:g})")
        weights_info = {m: r.report.get("weights") for m, r in results.items() if r.report.get("weights")}
        timings.update({m: r.report.get("timings_s") for m, r in results.items()})
        timings["total"] = round(time.perf_counter() - t0, 2)
        report = {
            "command": "chisep demo", "options": {k: v for k, v in vars(args).items() if not k.startswith("_")},
            "simulation": {"seed": args.seed, "size": args.size, "snr": args.snr, "tilt_deg": args.tilt,
                           "shape": list(truth["mask"].shape), "b0_t": head.b0_t,
                           "te_s": list(map(float, head.te_s))},
            "versions": versions(), "weights": weights_info, "skipped_methods": skipped,
            "timings_s": timings, "accuracy": acc,
            "lesions": _lesion_summary(rows, list(results)) if rows else {},
            "files": {"data": "raw acquisitions + truth/", **{m: f"{m}/" for m in results},
                      "lesions": "lesions.csv", "figure": "figure.png"},
        }
        write_json(stage / "report.json", report)
    if progress:
        progress(1.0, f"done in {time.perf_counter() - t0:.0f} s: {out}")
    _print_summary(report)
    return 0


def _print_summary(report):
    print("\nmethod               chi_para NRMSE  chi_dia NRMSE  (%, eval mask; lower is better)")
    for m, a in report["accuracy"].items():
        print(f"{m:<20} {a['chi_para']['nrmse']:>14.1f} {a['chi_dia']['nrmse']:>14.1f}")
    if report.get("lesions"):
        print("lesion subtype agreement with truth:",
              json.dumps({k: v["subtype_agreement_pct"] for k, v in report["lesions"].items() if isinstance(v, dict)}))
    for m, why in report.get("skipped_methods", {}).items():
        print(f"skipped {m}: {why}")
