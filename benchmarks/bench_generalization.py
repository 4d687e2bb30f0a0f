"""Leave-one-simulator-out evaluation: chi-sepnet vs the regularized baseline on heads from each
forward model, straight, tilted and with thick slices, from raw data through the ``chisep run`` chain.

Forward models (``--models``):

``ours``        the project's simulator as it is (:func:`chisep.simulate.simulate_head`): the
                distribution the shipped weights were trained on (their own held-out kind).
``fibres``      our simulator with hollow-cylinder fibre white matter (:mod:`chisep.fibres`, via
                :func:`chisep.training.widen.synthesize_ours_with_fibres`): the fine-tuning kind.
``qsmforward``  qsm-forward's tissue, field and signal model on our anatomy
                (:mod:`chisep.training.qsmforward_heads`): never used in training (held out).

Conditions (``--conditions``): ``straight`` (1 mm, B0 along the slice axis), ``tilt15`` (15 degrees,
in the affine), ``1x1x2`` (1 x 1 x 2 mm voxels); all 3 T, 5 echoes 5-29 ms, SE 30-120 ms, SNR 100.

Each head is written to disk (NIfTI + JSON sidecars, as a scanner export) and run as ``chisep run``
does it (:func:`chisep.evaluation.evaluate_head`: the files are read back and preprocessed with
``--bg-method``, default LBV-QSM), then every method runs on the same maps: chi-sepnet-R2',
chi-sepnet-R2* and the regularized baseline (built-in weights), plus each ``--candidate``
chi-sepnet-R2' weights file. Scored in the evaluation mask (brain - CSF - vessels): NRMSE / PSNR /
SSIM / HFEN per map (:mod:`chisep.metrics`), ROI means, lesion subtype agreement with the truth,
and the R2' vs R2* pipeline lesion-class agreement per map.

    python benchmarks/bench_generalization.py --models ours qsmforward --seeds 31 32 \\
        --candidate new=runs/ft_wide/candidate.safetensors --json out.json
"""
from __future__ import annotations

import argparse
import collections
import json
import platform
import sys
import tempfile
import time

import numpy as np

from chisep import metrics
from chisep.evaluation import lesion_rows, lesion_summary, evaluate_head, run_methods
from chisep.pipeline import METHODS
from chisep.report import accuracy
from chisep.simulate import TISSUE_LABELS, simulate_head

CONDITIONS = {"straight": (0.0, (1.0, 1.0, 1.0)), "tilt15": (15.0, (1.0, 1.0, 1.0)),
              "1x1x2": (0.0, (1.0, 1.0, 2.0))}
TE = (0.005, 0.011, 0.017, 0.023, 0.029)
SE_TE = (0.03, 0.06, 0.09, 0.12)


def make_head(model: str, seed: int, condition: str, size: str, snr: float):
    tilt, vs = CONDITIONS[condition]
    if model == "ours":
        return simulate_head(seed=seed, size=size, snr=snr, tilt_deg=tilt, voxel_size=vs)
    acq = {"b0_t": 3.0, "te_s": TE, "se_te_s": SE_TE, "voxel_size": vs, "tilt_deg": tilt, "snr": snr,
           "phase_sign": 1, "n_lesions": 6 if size == "small" else 20, "fibre_ratio": 0.5, "fibre_g": 0.75,
           "fibre_sigma_mm": 8.0}
    if model == "fibres":
        from chisep.training.widen import synthesize_ours_with_fibres
        return synthesize_ours_with_fibres(seed, acq, size)
    if model == "qsmforward":
        from chisep.training.qsmforward_heads import synthesize_qsmforward
        return synthesize_qsmforward(seed, acq, size)
    raise SystemExit(f"unknown model {model!r}")


def geometry_check(seed: int, size: str, snr: float, bg_method: str):
    """The regularized baseline's geometry on our heads (straight, tilt15, 1x1x2), NRMSE chi_para/|chi_dia|:
    native (as ``chisep run``: the affine's B0 direction and voxel size), in the networks' frame (as the
    network path resamples), with the true local field and R2' (inversion alone), and with the geometry
    ignored (1 mm, B0 = z: a control)."""
    from chisep import geometry, physics
    from chisep.preprocess import preprocess_gre
    from chisep.regularized import chi_separation_regularized as reg

    for name, (tilt, vs) in CONDITIONS.items():
        h = simulate_head(seed, size, snr=snr, tilt_deg=tilt, voxel_size=vs)
        T = h.truth
        out = preprocess_gre(h.gre_mag, h.gre_phase, h.te_s, h.affine, b0_t=h.b0_t, se_mag=h.se_mag,
                             se_te_s=h.se_te_s, bg_method=bg_method)
        m = out["mask"] > 0
        em = metrics.evaluation_mask(T["mask"], T["mask_csf"], T["mask_vessels"]) & m
        vsz, b = physics.voxel_size_from_affine(h.affine), physics.b0_direction_from_affine(h.affine)
        mag = out["magnitude"] if out["magnitude"].ndim == 3 else out["magnitude"][..., 0]

        def ev(p, d):
            return f"{metrics.nrmse(p, T['chi_para'], em):.1f} / {metrics.nrmse(d, T['chi_dia'], em):.1f}"
        r1 = reg(out["local_field"], out["r2prime"], out["mask"], vsz, b, field_weight=out.get("field_weight"),
                 magnitude=out["magnitude"], dr_pos=114)
        r3 = reg(T["local_field"] * m, T["r2prime"] * m, out["mask"], vsz, b, magnitude=out["magnitude"],
                 dr_pos=114)
        nv, tr = geometry.to_network_space({"mask": m.astype(np.float32), "f": out["local_field"],
                                            "r": out["r2prime"], "w": out.get("field_weight"), "g": mag},
                                           h.affine, b0_dir=b)
        r2 = reg(nv["f"], nv["r"], nv["mask"], (1, 1, 1), (0, 0, 1), field_weight=nv["w"], magnitude=nv["g"],
                 dr_pos=114)
        bk = geometry.from_network_space({"p": r2["chi_para"], "d": r2["chi_dia"]}, tr, weight=tr.net_mask)
        r4 = reg(out["local_field"], out["r2prime"], out["mask"], (1, 1, 1), (0, 0, 1),
                 field_weight=out.get("field_weight"), magnitude=out["magnitude"], dr_pos=114)
        print(f"{name:<9} native {ev(r1['chi_para'], r1['chi_dia'])}  network-frame "
              f"{ev(bk['p'] * m, bk['d'] * m)}  true inputs {ev(r3['chi_para'], r3['chi_dia'])}  "
              f"geometry ignored {ev(r4['chi_para'], r4['chi_dia'])}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["ours", "qsmforward"], choices=("ours", "fibres", "qsmforward"))
    ap.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[31, 32])
    ap.add_argument("--size", choices=("small", "full"), default="small")
    ap.add_argument("--snr", type=float, default=100.0)
    ap.add_argument("--bg-method", default="lbv-qsm")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--candidate", action="append", default=[], metavar="NAME=FILE",
                    help="extra chi-sepnet-R2' weights to score on the same maps (repeatable)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="write every number here")
    ap.add_argument("--geometry-check", action="store_true",
                    help="only the regularized baseline's geometry check on our heads (see geometry_check)")
    args = ap.parse_args(argv)
    if args.geometry_check:
        for seed in args.seeds:
            geometry_check(seed, args.size, args.snr, args.bg_method)
        return 0
    if any(900 <= s <= 9999 for s in args.seeds):
        raise SystemExit("test seeds must not be 900-999 (validation) or 1000-9999 (training)")
    cands = [c.split("=", 1) for c in args.candidate]
    print(f"# bench_generalization: {' '.join(sys.argv[1:])}\n# cpu: {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}", flush=True)
    rows = []
    for model in args.models:
        for cond in args.conditions:
            for seed in args.seeds:
                t0 = time.perf_counter()
                head = make_head(model, seed, cond, args.size, args.snr)
                with tempfile.TemporaryDirectory() as d:
                    ev = evaluate_head(head, d, args.methods, device=args.device,
                                       preprocess_options={"bg_method": args.bg_method})
                acc = dict(ev.accuracy)
                les = list(ev.lesion_rows)
                T = head.truth
                em = metrics.evaluation_mask(T["mask"], T.get("mask_csf"), T.get("mask_vessels"))
                for name, path in cands:
                    r, _ = run_methods(ev.maps, ["chisepnet-r2prime"], weights={"chisepnet": path},
                                       device=args.device, skip_missing_weights=False)
                    key = f"cand:{name}"
                    acc[key] = accuracy(r["chisepnet-r2prime"].maps, T, em, T.get("tissue"), TISSUE_LABELS)
                    if head.lesion_table:
                        cr = lesion_rows(head, {key: r["chisepnet-r2prime"]})
                        for a, b in zip(les, cr):
                            for k in (f"{key}_subtype", f"{key}_para_class", f"{key}_dia_class"):
                                a[k] = b.get(k)
                row = {"model": model, "condition": cond, "seed": seed, "accuracy": acc, "lesion_rows": les,
                       "seconds": round(time.perf_counter() - t0, 1)}
                rows.append(row)
                print(f"{model:<11}{cond:<9} seed {seed}: " + "  ".join(
                    f"{m}: {a['chi_para']['nrmse']:.1f}/{a['chi_dia']['nrmse']:.1f}" for m, a in acc.items())
                    + f"  ({row['seconds']:.0f} s)", flush=True)
    # summary
    methods = list(rows[0]["accuracy"]) if rows else []
    summary = collections.OrderedDict()
    print("\nNRMSE chi_para / |chi_dia| (%), mean over seeds; ratio = method / regularized baseline")
    for model in args.models:
        for cond in args.conditions:
            sel = [r for r in rows if r["model"] == model and r["condition"] == cond]
            if not sel:
                continue
            s = summary.setdefault(f"{model}/{cond}", {})
            for m in methods:
                s[m] = {mp: {k: float(np.mean([r["accuracy"][m][mp][k] for r in sel]))
                             for k in ("nrmse", "psnr", "ssim", "hfen")} for mp in ("chi_para", "chi_dia")}
            base = s.get("regularized")
            line = f"{model + '/' + cond:<24}"
            for m in methods:
                p, q = s[m]["chi_para"]["nrmse"], s[m]["chi_dia"]["nrmse"]
                line += f" {m}: {p:.1f}/{q:.1f}"
                if base and m != "regularized":
                    rp, rq = p / base["chi_para"]["nrmse"], q / base["chi_dia"]["nrmse"]
                    s[m]["ratio_to_baseline"] = [rp, rq]
                    s[m]["meets_issue_bar"] = bool(rp <= 0.75 and rq <= 0.75 and p <= 20 and q <= 20)
                    line += f" ({rp:.2f}/{rq:.2f})"
            print(line)
            lr = [x for r in sel for x in r["lesion_rows"]]
            if lr:
                ls = lesion_summary(lr, [m for m in methods if m in METHODS])
                for m in methods:
                    if m.startswith("cand:"):
                        ok = sum(1 for x in lr if x.get(f"{m}_subtype") == x["true_subtype"])
                        ls[m] = {"n_lesions": len(lr), "subtype_agreement_pct": round(100.0 * ok / len(lr), 1)}
                s["lesions"] = ls
                print("    lesions: " + ", ".join(f"{k} {v['subtype_agreement_pct']}%" if isinstance(v, dict)
                                                 else f"{k} {v}%" for k, v in ls.items() if k != "truth"))
    print("\nfull per-metric numbers (PSNR dB, SSIM, HFEN %):")
    for key, s in summary.items():
        for m, v in s.items():
            if m == "lesions":
                continue
            print(f"  {key:<22}{m:<20}" + "  ".join(
                f"{mp}: NRMSE {v[mp]['nrmse']:.1f} PSNR {v[mp]['psnr']:.1f} SSIM {v[mp]['ssim']:.3f} "
                f"HFEN {v[mp]['hfen']:.1f}" for mp in ("chi_para", "chi_dia")))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "summary": summary, "rows": rows}, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
