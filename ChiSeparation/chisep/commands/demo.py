"""``chisep demo``: the method end to end on a simulated head, in one command.

Simulates a head (``chisep simulate``), writes its raw acquisitions, runs the preprocessing chain
from the files as a user would, then chi-sepnet-R2', chi-sepnet-R2* and the regularized method;
writes the maps of each method, a lesion table, report.json (inputs, versions, weights and their
model card, timings, accuracy against the simulation's truth) and figure.png.

A method that cannot run (no weights installed, say) stops the demo with exit code 2 and a message
saying what is missing; nothing is written.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from ..io import atomic_output_dir, write_json
from ..options import METHODS
from ..pipeline import versions, write_maps
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


def run(args) -> int:
    from ..evaluation import evaluate_head
    from ..report import make_figure
    from ..simulate import simulate_head

    progress = make_progress(args.progress)
    out = Path(args.out)
    t0 = time.perf_counter()
    if progress:
        progress(0.0, f"simulating a {args.size} head (seed {args.seed})")
    head = simulate_head(seed=args.seed, size=args.size, snr=args.snr, tilt_deg=args.tilt,
                         progress=scaled(progress, 0.0, 0.15))
    t_sim = round(time.perf_counter() - t0, 2)
    weights = None
    if args.weights or args.r2prime_weights:
        weights = {"chisepnet": args.weights, "r2prime": args.r2prime_weights, "qsm": None}
    with atomic_output_dir(out) as stage:
        ev = evaluate_head(head, stage / "data", args.methods, weights, args.device,
                           progress=scaled(progress, 0.15, 0.95))
        for method, res in ev.results.items():
            write_maps(res, stage / method, extra_report={"command": "chisep demo"})
        if ev.lesion_rows:
            keys = []
            for r in ev.lesion_rows:
                keys += [k for k in r if k not in keys]
            with open(stage / "lesions.csv", "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=keys)
                w.writeheader()
                w.writerows(ev.lesion_rows)
        truth = head.truth
        fig_rows = {"truth": truth}
        fig_rows.update({m: r.maps for m, r in ev.results.items()})
        make_figure(fig_rows, stage / "figure.png", mask=truth["mask"], voxel_size=head.voxel_size,
                    title=f"chisep demo: simulated head, seed {args.seed}, SNR {args.snr:g} "
                          f"(rows: truth and each method)")
        timings = {"simulate": t_sim, **ev.timings, "total": round(time.perf_counter() - t0, 2)}
        report = {
            "command": "chisep demo",
            "options": {k: v for k, v in vars(args).items() if not k.startswith("_")},
            "simulation": {"seed": args.seed, "size": args.size, "snr": args.snr, "tilt_deg": args.tilt,
                           "shape": list(truth["mask"].shape), "b0_t": head.b0_t,
                           "te_s": [float(t) for t in head.te_s]},
            "versions": versions(),
            "weights": {m: r.report.get("weights") for m, r in ev.results.items() if r.report.get("weights")},
            "timings_s": timings, "accuracy": ev.accuracy,
            "lesions": ev.lesion_summary,
            "files": {"data": "raw acquisitions (+ truth/)", **{m: f"{m}/" for m in ev.results},
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
