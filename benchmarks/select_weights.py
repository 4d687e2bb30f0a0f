"""Choose between candidate chi-sepnet weights on VALIDATION heads (never the test heads).

Each validation head (seeds 900-999: never trained on, never used by ``bench_chisep.py``'s test
heads) is simulated, written to disk and preprocessed once, exactly as ``chisep run`` does; then
every candidate runs on the same maps. Printed per candidate: chi_para and |chi_dia| NRMSE (%,
evaluation mask) averaged over the heads, and the lesion subtypes read from its maps that agree
with the truth (the rule of :mod:`chisep.lesions`, white-matter reference), with the confusion of
the misread ones.

Candidates are ``r2p:NAME=FILE`` (a chisepnet-r2prime weights file run in the R2' pipeline) or
``r2s:NAME=FILE`` (the same kind of file run as the chi-sepnet of the R2* pipeline, after the
built-in R2'-prediction net, or ``--r2prime-net FILE``)::

    python benchmarks/select_weights.py r2p:shipped=ChiSeparation/chisep/weights/chisepnet_r2prime.safetensors \\
        r2p:new=runs/cands/A.safetensors r2s:new=runs/cands/B.safetensors --seeds 900 901 \\
        --json runs/select.json
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time

import numpy as np

from chisep import metrics
from chisep.evaluation import lesion_rows, preprocess_from_files, run_methods
from chisep.report import accuracy
from chisep.simulate import simulate_head, write_simulation

METHOD = {"r2p": "chisepnet-r2prime", "r2s": "chisepnet-r2star"}


def parse_candidate(spec: str):
    try:
        kind, rest = spec.split(":", 1)
        name, path = rest.split("=", 1)
    except ValueError:
        raise SystemExit(f"candidate {spec!r}: write r2p:NAME=FILE or r2s:NAME=FILE") from None
    if kind not in METHOD:
        raise SystemExit(f"candidate {spec!r}: kind must be r2p or r2s")
    return kind, name, path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("candidates", nargs="+", metavar="KIND:NAME=FILE")
    ap.add_argument("--seeds", type=int, nargs="+", default=[900, 901])
    ap.add_argument("--size", choices=("small", "full"), default="full")
    ap.add_argument("--snr", type=float, default=100.0)
    ap.add_argument("--r2prime-net", help="R2'-prediction weights for r2s candidates (default: built-in)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bg-method", help="background removal of the chain (default: the chain's own); "
                                        "weights trained on LBV-QSM inputs are chosen with lbv-qsm")
    ap.add_argument("--json", help="write all numbers here")
    args = ap.parse_args(argv)
    if any(not 900 <= s <= 999 for s in args.seeds):
        raise SystemExit("select on validation heads only: seeds 900-999")
    cands = [parse_candidate(c) for c in args.candidates]
    res = collections.OrderedDict()
    for seed in args.seeds:
        t0 = time.time()
        head = simulate_head(seed=seed, size=args.size, snr=args.snr)
        with tempfile.TemporaryDirectory() as d:
            write_simulation(head, d)
            maps = preprocess_from_files(d, **({"bg_method": args.bg_method} if args.bg_method else {}))
        T = head.truth
        ev = metrics.evaluation_mask(T["mask"], T.get("mask_csf"), T.get("mask_vessels"))
        print(f"seed {seed}: simulated and preprocessed in {time.time() - t0:.0f} s", flush=True)
        for kind, name, path in cands:
            method = METHOD[kind]
            w = {"chisepnet": path}
            if kind == "r2s" and args.r2prime_net:
                w["r2prime"] = args.r2prime_net
            r = run_methods(maps, [method], weights=w, device=args.device)
            acc = accuracy(r[method].maps, T, ev)
            rows = lesion_rows(head, r) if head.lesion_table else []
            e = res.setdefault(f"{kind}:{name}", {"file": path, "para": [], "dia": [], "lesions": []})
            e["para"].append(acc["chi_para"]["nrmse"])
            e["dia"].append(acc["chi_dia"]["nrmse"])
            e["lesions"] += [[x["true_subtype"], x.get(f"{method}_subtype")] for x in rows]
            ok = sum(a == b for a, b in e["lesions"][-len(rows):]) if rows else 0
            print(f"  {kind}:{name}: chi_para {e['para'][-1]:.1f} %  |chi_dia| {e['dia'][-1]:.1f} %  "
                  f"lesions {ok}/{len(rows)}", flush=True)
    print(f"\n{'candidate':<28}{'chi_para %':>11}{'|chi_dia| %':>12}{'lesions':>10}  misread (truth->read)")
    for key, e in res.items():
        n = len(e["lesions"])
        ok = sum(a == b for a, b in e["lesions"])
        e.update(para_mean=float(np.mean(e["para"])), dia_mean=float(np.mean(e["dia"])),
                 lesion_agreement_pct=100.0 * ok / max(n, 1))
        bad = collections.Counter(f"{a}->{b}" for a, b in e["lesions"] if a != b)
        print(f"{key:<28}{e['para_mean']:>11.2f}{e['dia_mean']:>12.2f}{f'{ok}/{n}':>10}  "
              + ", ".join(f"{k} x{v}" for k, v in bad.most_common()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
