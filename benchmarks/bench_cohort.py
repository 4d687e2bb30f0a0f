"""Cohort throughput of ``chisep bids participant`` on a Dask LocalCluster: subjects per hour at 1 and
2 workers, and the peak memory of each worker process.

A BIDS dataset of N simulated subjects (64^3 heads, 5 GRE echoes + 4 SE echoes, lesion mask on a
FLAIR-like grid, segmentation) is written once; each configuration then runs the participant level
into a fresh output folder (so nothing is skipped), the configurations interleaved (1, 2, 1, 2, ...
workers) so that load from other jobs on the machine hits both alike. Reported per run: wall time
from submission to the last result (cluster start-up included), subjects/hour = N / wall * 3600,
the mean per-subject task time, and the largest peak resident memory (ru_maxrss) of any worker
process (what ``--memory-limit`` must allow).

    python benchmarks/bench_cohort.py [--subjects 4] [--repeats 2] [--out results_cohort_cpu.txt]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ChiSeparation"))

from chisep import cli  # noqa: E402
from chisep.cohort import simulated as S  # noqa: E402
from chisep.simulate import simulate_head  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--memory-limit", default="3GB")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results_cohort_cpu.txt")))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        bids = Path(td) / "bids"
        S.write_dataset_description(bids)
        for i in range(args.subjects):
            S.write_subject(simulate_head(seed=21 + i, size="small"), bids, f"{i + 1:02d}")
        runs = []
        for rep in range(args.repeats):
            for nw in args.workers:
                out = Path(td) / f"out_{nw}_{rep}"
                t0 = time.perf_counter()
                rc = cli.main(["bids", str(bids), str(out), "participant", "--n-workers", str(nw),
                               "--memory-limit", args.memory_limit, "--progress", "none"])
                total = time.perf_counter() - t0
                log = json.loads(sorted((out / "logs").glob("participant_*.json"))[-1].read_text())
                res = log["results"]
                done = [r for r in res if r["status"] == "done"]
                runs.append({"workers": nw, "rc": rc, "wall_s": log["wall_s"], "command_s": total,
                             "n_done": len(done), "task_s": sum(r["seconds"] for r in done) / max(len(done), 1),
                             "cpu_s": sum(r["cpu_s"] for r in done) / max(len(done), 1),
                             "peak_rss_mb": max(r["peak_rss_mb"] for r in res),
                             "per_worker_rss": sorted({(r["pid"], r["peak_rss_mb"]) for r in res})})
                r = runs[-1]
                print(f"{nw} worker(s), repeat {rep}: {r['n_done']}/{args.subjects} done, wall {r['wall_s']:.1f} s "
                      f"-> {3600 * r['n_done'] / r['wall_s']:.0f} subjects/h; task {r['task_s']:.1f} s; "
                      f"peak worker RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    cpu = subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | head -1"], capture_output=True,
                         text=True).stdout.split(":", 1)[-1].strip()
    load = os.getloadavg()
    lines = [f"# python benchmarks/bench_cohort.py --subjects {args.subjects} --repeats {args.repeats} "
             f"--workers {' '.join(map(str, args.workers))} --memory-limit {args.memory_limit}",
             f"# {time.strftime('%Y-%m-%d %H:%M')}, {cpu}, {os.cpu_count()} cores shared with other jobs "
             f"(load average at the end {load[0]:.1f}); chisep bids participant, chisepnet-r2prime, 64^3 heads, "
             f"1 thread per worker",
             "# wall = first submission to last result, Dask LocalCluster start-up and worker torch import included",
             "# task s = wall time of one subject's task on its worker; cpu s = CPU time of that task (all threads)",
             "", f"{'workers':>8}{'repeat':>8}{'done':>6}{'wall s':>9}{'subj/h':>9}{'task s':>9}{'cpu s':>8}"
             f"{'peak RSS/worker MB':>20}"]
    for i, r in enumerate(runs):
        lines.append(f"{r['workers']:>8}{i // len(args.workers):>8}{r['n_done']:>6}{r['wall_s']:>9.1f}"
                     f"{3600 * r['n_done'] / r['wall_s']:>9.0f}{r['task_s']:>9.1f}{r['cpu_s']:>8.1f}"
                     f"{r['peak_rss_mb']:>20.0f}")
    lines.append("")
    for nw in args.workers:
        rs = [r for r in runs if r["workers"] == nw]
        best = min(r["wall_s"] for r in rs)
        lines.append(f"{nw} worker(s): best {3600 * rs[0]['n_done'] / best:.0f} subjects/h "
                     f"(median wall {float(np.median([r['wall_s'] for r in rs])):.1f} s for {args.subjects} subjects), "
                     f"peak memory per worker {max(r['peak_rss_mb'] for r in rs):.0f} MB")
    cpu_s = float(np.median([r["cpu_s"] for r in runs]))
    lines.append(f"CPU time per subject (median) {cpu_s:.1f} s -> on free cores at most {3600 / cpu_s:.0f} subjects/h "
                 f"per worker (an upper bound from CPU time, not a measurement of wall time)")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
