"""Benchmark: the whole raw -> maps run (``chisep run``) on a simulated 1 mm head, and where each second goes.

Each repetition is a fresh process running ``chisep run`` (GRE + SE, ``--bg-method lbv-qsm``,
``--method chisepnet-r2prime`` by default) from the NIfTI files to the written maps; the wall time
of the process (imports included) is reported with the median over the repetitions. Inside the
process every stage is timed by wrapping the functions the pipeline calls (inclusive times;
indented rows are parts of the row above): loading, brain mask, R2*, unwrapping, echo fit,
background removal and its parts, R2, the QSM channel, resampling to the network grid, the networks,
resampling back and writing the maps.

    python benchmarks/bench_run.py --head DIR [--reps 3] [--bg-method lbv-qsm] [--method chisepnet-r2prime]

``DIR`` is made by ``chisep simulate --out DIR --size full`` (gre_mag/gre_phase/se_mag.nii.gz). The
CPU model and features are printed with every figure; a GPU run is reported only when measured.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

#: (module, attribute, label, depth): functions timed inside the run (depth 1 = part of the row above)
STAGES = [
    ("chisep.preprocess", "load_gre", "load GRE NIfTI", 0),
    ("chisep.preprocess", "load_echoes", "load SE NIfTI", 0),
    ("chisep.preprocess", "preprocess_gre", "preprocessing (all)", 0),
    ("chisep.preprocess.pipeline", "brain_mask", "brain mask", 1),
    ("chisep.preprocess.pipeline", "r2star", "R2* fit", 1),
    ("chisep.preprocess.pipeline", "unwrap_echoes", "unwrapping", 1),
    ("chisep.preprocess.pipeline", "combine_echoes", "echo fit (field)", 1),
    ("chisep.preprocess.pipeline", "echo_fit_residual", "echo fit residual", 1),
    ("chisep.preprocess.pipeline", "dephasing_significance", "dephasing test", 1),
    ("chisep.preprocess.pipeline", "initial_frequency", "quadratic phase fit", 1),
    ("chisep.preprocess.pipeline", "surface_field_correction", "surface correction", 1),
    ("chisep.preprocess.pipeline", "lbv_boundary_mask", "LBV boundary mask", 1),
    ("chisep.preprocess.pipeline", "vsharp", "background removal V-SHARP", 1),
    ("chisep.preprocess.pipeline", "lbv", "background removal LBV", 1),
    ("chisep.preprocess.pipeline", "lbv_qsm", "background removal LBV-QSM", 1),
    ("chisep.preprocess.background", "_lbv_solver", "LBV assembly (x2)", 2),
    ("chisep.preprocess.background", "first_susceptibility_map", "first chi maps (x2)", 2),
    ("chisep.preprocess.background", "_without_linear_trend", "trend projection", 2),
    ("chisep.preprocess.pipeline", "pdf", "background removal PDF", 1),
    ("chisep.preprocess.pipeline", "r2_from_se", "R2 fit (SE)", 1),
    ("chisep.pipeline", "qsm_channel", "QSM channel (closed form)", 0),
    ("chisep.network.inference", "run_chisepnet", "chi-sepnet (all)", 0),
    ("chisep.network.inference", "_geometry_in", "resample to network grid", 1),
    ("chisep.network.inference", "_net_pass", "network passes", 1),
    ("chisep.network.inference", "_geometry_out", "resample back", 1),
    ("chisep.commands.run", "write_maps", "write maps", 0),
]


def _wrap_stages(acc):
    import importlib

    for mod, attr, label, _ in STAGES:
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        fn = getattr(m, attr, None)
        if fn is None:
            continue

        def make(fn, label):
            @functools.wraps(fn)
            def timed(*a, **k):
                t, c = time.perf_counter(), time.process_time()
                try:
                    return fn(*a, **k)
                finally:
                    acc[label] = acc.get(label, 0.0) + time.perf_counter() - t
                    acc["cpu " + label] = acc.get("cpu " + label, 0.0) + time.process_time() - c
            return timed
        setattr(m, attr, make(fn, label))


def child(argv, out_json):
    acc = {}
    t0 = time.perf_counter()
    from chisep import cli
    import chisep.commands.run  # noqa: F401  (so that write_maps can be wrapped)
    import chisep.network.inference  # noqa: F401
    _wrap_stages(acc)
    acc["imports"] = time.perf_counter() - t0
    rc = cli.main(argv)
    acc["in-process total"] = time.perf_counter() - t0
    if rc:   # a refused or failed run must not be timed (nor its folder's older report read)
        sys.exit(rc)
    rep = json.load(open(os.path.join(argv[argv.index("--out") + 1], "report.json")))
    from chisep.network.inference import cpu_features
    json.dump({"rc": rc, "stages": acc, "engine": (rep.get("weights") or {}).get("engine"),
               "device": rep.get("device"), "precision": rep.get("precision"), "cpu": cpu_features(),
               "report_timings": rep.get("timings_s")}, open(out_json, "w"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--head", help="folder made by chisep simulate --size full")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--bg-method", default="lbv-qsm")
    ap.add_argument("--method", default="chisepnet-r2prime")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    a, rest = ap.parse_known_args()
    if a.child:
        child(json.loads(a.child), a.json)
        return
    from chisep.network.inference import cpu_summary

    h = a.head
    walls, runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["run", "--gre-mag", f"{h}/gre_mag.nii.gz", "--gre-phase", f"{h}/gre_phase.nii.gz",
                "--se-mag", f"{h}/se_mag.nii.gz", "--bg-method", a.bg_method, "--method", a.method,
                "--out", os.path.join(tmp, "out"), "--progress", "none"] + rest
        print(f"chisep {' '.join(argv[:1])} on {h} (--bg-method {a.bg_method}, --method {a.method}); "
              f"CPU: {cpu_summary()}; load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
              flush=True)
        for r in range(a.reps):
            js = os.path.join(tmp, f"r{r}.json")
            argv[argv.index("--out") + 1] = os.path.join(tmp, f"out{r}")   # a fresh folder per run
            la = os.getloadavg()[0]
            t = time.perf_counter()
            ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            p = subprocess.run([sys.executable, __file__, "--child", json.dumps(argv), "--json", js],
                               capture_output=True, text=True)
            wall = time.perf_counter() - t
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_s = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
            if p.returncode or not os.path.exists(js):
                print(f"run {r + 1}: FAILED rc={p.returncode}: {p.stderr.strip().splitlines()[-3:]}")
                continue
            res = json.load(open(js))
            walls.append(wall)
            res["cpu_s"] = cpu_s
            runs.append(res)
            print(f"run {r + 1}: {wall:6.2f} s wall, {cpu_s:6.2f} s CPU (user+sys, all threads) (process, imports "
                  f"included; load average {la:.1f} before, "
                  f"{os.getloadavg()[0]:.1f} after)  engine {(res['engine'] or {}).get('engine')}  "
                  f"CPU: {cpu_summary(res['cpu'])}", flush=True)
    if not walls:
        return
    med = statistics.median(walls)
    print(f"\nwhole raw -> maps: median {med:.2f} s over {len(walls)} runs (min {min(walls):.2f}, max {max(walls):.2f}); "
          f"target <= 30 s: {'met' if med <= 30 else 'MISSED'}")
    cpus = [r["cpu_s"] for r in runs]
    print(f"CPU time (user+sys, all threads): median {statistics.median(cpus):.2f} s; on 2 dedicated cores the wall "
          f"time lies between CPU/2 = {statistics.median(cpus) / 2:.2f} s (all parallel) and CPU = "
          f"{statistics.median(cpus):.2f} s (all serial) when other processes do not slow the memory system")
    print("where the time goes (median over runs; wall and process CPU seconds; indented rows are parts of the row above):")
    labels = ["imports"] + [s[2] for s in STAGES]
    depth = {s[2]: s[3] for s in STAGES}
    for lab in labels:
        vals = [r["stages"][lab] for r in runs if lab in r["stages"]]
        cv = [r["stages"]["cpu " + lab] for r in runs if "cpu " + lab in r["stages"]]
        if vals:
            cpu = f"  CPU {statistics.median(cv):7.2f}" if cv else ""
            print(f"  {'  ' * depth.get(lab, 0)}{lab:{34 - 2 * depth.get(lab, 0)}s} {statistics.median(vals):7.2f}{cpu}")
    tot = statistics.median([r["stages"]["in-process total"] for r in runs])
    print(f"  {'in-process total':34s} {tot:7.2f}")
    print("GPU: not measured (no GPU on this machine)" if not _has_cuda() else "GPU: see bench_inference.py --only cuda")


def _has_cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


if __name__ == "__main__":
    main()
