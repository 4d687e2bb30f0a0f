"""Accuracy of chi-sepnet-R2', chi-sepnet-R2* and the regularized baseline on held-out simulated heads.

Each head is simulated with a seed that training never used (training uses seeds >= 1000 and
validation 900-999), written to disk, preprocessed from the raw GRE (+ SE) files exactly as
``chisep run`` does, and separated by every method. Metrics (:mod:`chisep.metrics`, docs/DESIGN.md "Evaluation") are computed in
the evaluation mask (brain minus CSF minus vessels) and averaged over heads.

    python benchmarks/bench_chisep.py [--seeds 11 12 13] [--size full] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from chisep.evaluation import evaluate_head
from chisep.pipeline import METHODS
from chisep.simulate import simulate_head

METRICS = ("nrmse", "psnr", "ssim", "hfen")
LOWER_IS_BETTER = {"nrmse": True, "psnr": False, "ssim": False, "hfen": True}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    ap.add_argument("--size", choices=("small", "full"), default="full")
    ap.add_argument("--snr", type=float, default=100.0)
    ap.add_argument("--tilt", type=float, default=0.0)
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--bg-method", help="background removal of the chain (default: the chain's own)")
    ap.add_argument("--json", help="write all numbers here")
    ap.add_argument("--weights-dir", help="evaluate the weights in this folder instead of the built-in ones "
                                          "(same file names as the built-in chisep/weights; sets CHISEP_WEIGHTS_DIR)")
    args = ap.parse_args(argv)
    if args.weights_dir:
        os.environ["CHISEP_WEIGHTS_DIR"] = os.path.abspath(args.weights_dir)

    per_head, lesion_rows, timings = [], [], []
    for seed in args.seeds:
        t0 = time.perf_counter()
        head = simulate_head(seed=seed, size=args.size, snr=args.snr, tilt_deg=args.tilt)
        with tempfile.TemporaryDirectory() as tmp:
            ev = evaluate_head(head, tmp, args.methods, device=args.device,
                               preprocess_options={"bg_method": args.bg_method} if args.bg_method else None)
        per_head.append(ev.accuracy)
        lesion_rows += ev.lesion_rows
        timings.append(ev.timings)
        print(f"seed {seed}: done in {time.perf_counter() - t0:.0f} s "
              + " ".join(f"{m}: para {a['chi_para']['nrmse']:.1f}% dia {a['chi_dia']['nrmse']:.1f}%"
                         for m, a in ev.accuracy.items()), flush=True)

    methods = [m for m in args.methods if all(m in h for h in per_head)]
    mean = {m: {mp: {k: float(np.mean([h[m][mp][k] for h in per_head])) for k in METRICS}
                for mp in ("chi_para", "chi_dia")} for m in methods}
    print(f"\nheld-out simulated heads: seeds {args.seeds}, size {args.size}, SNR {args.snr:g}, tilt {args.tilt:g}°")
    print(f"{'method':<20}" + "".join(f"{mp[4:] + ' ' + k:>13}" for mp in ("chi_para", "chi_dia") for k in METRICS))
    for m in methods:
        print(f"{m:<20}" + "".join(f"{mean[m][mp][k]:>13.3f}" for mp in ("chi_para", "chi_dia") for k in METRICS))

    # ROI means (first head's regions, averaged over heads)
    rois = {}
    for h in per_head:
        for m in methods:
            for r, v in h[m].get("roi_means_ppm", {}).items():
                for k, x in v.items():
                    rois.setdefault(r, {}).setdefault(f"{m}:{k}" if "pred" in k else k, []).append(x)
    print("\nmean chi in regions (ppm): truth and each method")
    for r, v in rois.items():
        tp = np.mean(v.get("chi_para_truth", [np.nan]))
        td = np.mean(v.get("chi_dia_truth", [np.nan]))
        line = f"  {r:<18} truth para {tp:.4f} dia {td:.4f} |"
        for m in methods:
            line += f" {m.split('-')[-1]} {np.mean(v.get(f'{m}:chi_para_pred', [np.nan])):.4f}/{np.mean(v.get(f'{m}:chi_dia_pred', [np.nan])):.4f}"
        print(line)

    from chisep.evaluation import lesion_summary
    les = lesion_summary(lesion_rows, methods) if lesion_rows else {}
    print("\nlesions:", json.dumps(les, indent=1))
    subtypes = ("iron", "demyelinated", "both", "neither")
    for m in ["truth"] + methods:
        print(f"\nlesion subtypes read from {m} (rows: truth; columns: read)")
        print(f"  {'':<14}" + "".join(f"{s:>14}" for s in subtypes))
        for t in subtypes:
            print(f"  {t:<14}" + "".join(f"{sum(1 for r in lesion_rows if r['true_subtype'] == t and r.get(m + '_subtype') == s):>14}"
                                       for s in subtypes))

    checks = {}
    if "chisepnet-r2prime" in mean and "regularized" in mean:
        a, b = mean["chisepnet-r2prime"], mean["regularized"]
        better = all((a[mp][k] < b[mp][k]) if LOWER_IS_BETTER[k] else (a[mp][k] > b[mp][k])
                     for mp in a for k in METRICS)
        quarter = all(a[mp]["nrmse"] <= 0.75 * b[mp]["nrmse"] for mp in a)
        checks["r2prime_better_than_regularized_on_every_metric"] = bool(better)
        checks["r2prime_nrmse_at_least_25pct_lower"] = bool(quarter)
        if "chisepnet-r2star" in mean:
            c = mean["chisepnet-r2star"]
            checks["r2star_between_r2prime_and_regularized_nrmse"] = bool(all(
                a[mp]["nrmse"] <= c[mp]["nrmse"] <= b[mp]["nrmse"] for mp in a))
    for m in methods:
        if m in les:
            checks[f"{m}_lesion_subtype_agreement_ge_90pct"] = les[m]["subtype_agreement_pct"] >= 90.0
    print("\nchecks:")
    for k, v in checks.items():
        print(f"  {'PASS' if v else 'FAIL'}  {k}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"seeds": args.seeds, "size": args.size, "snr": args.snr, "per_head": per_head,
                       "mean": mean, "rois": {r: {k: float(np.mean(x)) for k, x in v.items()} for r, v in rois.items()},
                       "lesions": les, "lesion_rows": lesion_rows, "checks": checks, "timings": timings}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
