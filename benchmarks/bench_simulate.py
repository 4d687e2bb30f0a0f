"""Time (and peak memory of) the simulated head: ``simulate_head`` for small and full, and writing.

Usage: python benchmarks/bench_simulate.py [--sizes small full] [--seeds 1 2] [--write DIR]
The issue's target: a full 1 mm head in under 60 s on two cores.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["small", "full"], choices=["small", "full"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1])
    ap.add_argument("--snr", type=float, default=100.0)
    ap.add_argument("--tilt", type=float, default=0.0)
    ap.add_argument("--write", action="store_true", help="also time write_simulation (to a temp folder)")
    args = ap.parse_args(argv)

    from chisep.simulate import _template, simulate_head, write_simulation

    t = time.perf_counter()
    _template()
    print(f"template load (once per process): {time.perf_counter() - t:.2f} s")
    worst = 0.0
    for size in args.sizes:
        for seed in args.seeds:
            t = time.perf_counter()
            head = simulate_head(seed=seed, size=size, snr=args.snr, tilt_deg=args.tilt)
            dt = time.perf_counter() - t
            if size == "full":
                worst = max(worst, dt)
            T = head.truth
            b = T["mask"] > 0
            import numpy as np
            ratio = np.percentile(abs(T["background_field"][b]), 95) / np.percentile(abs(T["local_field"][b]), 95)
            print(f"simulate_head(size={size!r}, seed={seed}): {dt:6.2f} s  shape {head.shape}  "
                  f"{len(head.lesion_table)} lesions  bg/local p95 ratio {ratio:.1f}  "
                  f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
            if args.write:
                with tempfile.TemporaryDirectory() as d:
                    t = time.perf_counter()
                    write_simulation(head, d)
                    print(f"  write_simulation: {time.perf_counter() - t:6.2f} s")
            del head
    if "full" in args.sizes:
        ok = worst < 60.0
        print(f"full head: worst {worst:.1f} s -> {'PASS' if ok else 'FAIL'} (target < 60 s on 2 cores)")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
