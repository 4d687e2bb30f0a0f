"""QSM-CI stage runs of our methods on held-out simulated heads, scored by QSM-CI's own scorer.

For each head (seeds training never used; training uses seeds >= 1000) the QSM-CI stage directories
are built as its isolated mode feeds them (true local field and chi map, measured multi-echo
magnitude, true mask, params.json), then:

- chi-separation with chisepnet-r2prime (QSM channel = the stage's chimap, or closed-form QSM), the
  regularized method, and QSM-CI's starter-template split (chi+- = (chi_total +- R2'/Dr)/2 clipped,
  Dr = 137 Hz/ppm), each fed the TRUE R2' ("given R2'") and also the R2' our r2prime-generation
  stage made from the magnitude alone ("generated R2'", QSM-CI's GRE-only composition);
- r2prime-generation with the R2'-prediction network and with R2* minus a constant R2 (14 Hz).

Scores: QSM-CI's ``qsm_eval.score_arrays`` (kind chisep / relaxation, over the whole mask, with a
segmentation in QSM-CI's label scheme mapped from the simulation's tissue labels: DGM and MSPE
metrics), next to our NRMSE (``chisep.metrics.nrmse``, evaluation mask = brain minus CSF and
vessels). Both NRMSE are in percent; QSM-CI's is demeaned over the whole mask, so it differs.

    python benchmarks/bench_qsmci.py [--seeds 11 12 13] [--size small] [--out results_qsmci_cpu.txt]
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ChiSeparation"))

from chisep import metrics  # noqa: E402
from chisep.cohort import qsmci  # noqa: E402
from chisep.io import load_nifti, save_nifti  # noqa: E402
from chisep.simulate import TISSUE_LABELS, simulate_head  # noqa: E402

#: our tissue label -> QSM-CI dseg label (qsm_eval.DSEG_LABELS)
TO_QSMCI_SEG = {"caudate": 1, "globus_pallidus": 2, "putamen": 3, "red_nucleus": 4, "dentate": 5,
                "substantia_nigra": 6, "thalamus": 7, "white_matter": 8, "cortex": 9, "csf": 10, "vessel": 11}


def qsmci_seg(tissue):
    seg = np.zeros(tissue.shape, np.int32)
    for name, lab in TO_QSMCI_SEG.items():
        seg[tissue == TISSUE_LABELS[name]] = lab
    return seg


def template_split(in_dir, out_dir, dr=137.0):
    """QSM-CI's starter chi-separation (closed-form static-dephasing split), as a reference row."""
    chi, aff = load_nifti(Path(in_dir) / "chimap.nii.gz", ndim=3)
    r2p, _ = load_nifti(Path(in_dir) / "r2prime.nii.gz", ndim=3)
    m = load_nifti(Path(in_dir) / "mask.nii.gz", ndim=3)[0] > 0.5
    s = r2p / dr
    save_nifti(Path(out_dir) / "chi-para.nii.gz", np.clip((chi + s) / 2, 0, None) * m, aff)
    save_nifti(Path(out_dir) / "chi-dia.nii.gz", np.clip((s - chi) / 2, 0, None) * m, aff)


def _version(pkg):
    from importlib.metadata import version
    return version(pkg)


def main():
    from qsm_ci import qsm_eval

    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    ap.add_argument("--size", default="small")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results_qsmci_cpu.txt")))
    args = ap.parse_args()
    rows = {}
    r2rows = {}
    times = {}
    for seed in args.seeds:
        head = simulate_head(seed=seed, size=args.size)
        t = head.truth
        em = metrics.evaluation_mask(t["mask"], t["mask_csf"], t["mask_vessels"])
        seg = qsmci_seg(t["tissue"])
        with tempfile.TemporaryDirectory() as td:
            dirs = qsmci.write_stage_dirs(head, td)
            gen = {}
            for m in ("network", "r2star-minus-r2"):
                o = Path(td) / f"r2p_{m}"
                t0 = time.perf_counter()
                qsmci.r2prime_generation(dirs["r2prime-generation"], o, method=m)
                times.setdefault(f"r2prime-generation {m}", []).append(time.perf_counter() - t0)
                r2p = load_nifti(o / "r2prime.nii.gz", ndim=3)[0]
                gen[m] = r2p
                sc, _ = qsm_eval.score_arrays(r2p.astype(float), t["r2prime"].astype(float), t["mask"], "relaxation")
                r2rows.setdefault(m, []).append({"ours_nrmse": metrics.nrmse(r2p, t["r2prime"], em), **sc})
            for r2name, r2p in (("given R2'", None), ("generated R2'", gen["network"])):
                dirs_r = qsmci.write_stage_dirs(head, Path(td) / r2name.split()[0], r2prime=r2p)
                cs = dirs_r["chi-separation"]
                for label, fn in (
                        ("chisepnet-r2prime (chimap)", lambda o: qsmci.chi_separation(cs, o)),
                        ("chisepnet-r2prime (closed-form QSM)", lambda o: qsmci.chi_separation(cs, o, qsm_channel="closed-form")),
                        ("regularized", lambda o: qsmci.chi_separation(cs, o, method="regularized")),
                        ("QSM-CI template split (Dr 137)", lambda o: template_split(cs, o))):
                    o = Path(td) / f"out_{r2name[:3]}_{len(rows)}"
                    o.mkdir(parents=True, exist_ok=True)
                    t0 = time.perf_counter()
                    fn(o)
                    times.setdefault(label, []).append(time.perf_counter() - t0)
                    para = load_nifti(o / "chi-para.nii.gz", ndim=3)[0]
                    dia = load_nifti(o / "chi-dia.nii.gz", ndim=3)[0]
                    sp, _ = qsm_eval.score_arrays(para.astype(float), t["chi_para"].astype(float), t["mask"],
                                                  "chisep", seg=seg, component="para")
                    sd, _ = qsm_eval.score_arrays(dia.astype(float), t["chi_dia"].astype(float), t["mask"],
                                                  "chisep", seg=seg, component="dia")
                    rows.setdefault((r2name, label), []).append({
                        "ours_para": metrics.nrmse(para, t["chi_para"], em),
                        "ours_dia": metrics.nrmse(dia, t["chi_dia"], em), "para": sp, "dia": sd})
        print(f"seed {seed} done", flush=True)

    def mean(vals):
        v = [x for x in vals if x == x]
        return float(np.mean(v)) if v else float("nan")
    cpu = subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | head -1"], capture_output=True,
                         text=True).stdout.split(":", 1)[-1].strip()
    lines = [f"# python benchmarks/bench_qsmci.py --seeds {' '.join(map(str, args.seeds))} --size {args.size}",
             f"# {time.strftime('%Y-%m-%d')}, {cpu or platform.processor()}, 2 shared cores (other jobs running: "
             f"times are indicative only); scorer qsm_ci.qsm_eval from qsm-ci {_version('qsm-ci')}",
             f"# held-out simulated heads (seeds {args.seeds}, {args.size}); means over heads.",
             "# ours = chisep.metrics.nrmse on brain minus CSF and vessels (%); qsmci_* = qsm_eval.score_arrays "
             "over the whole mask (nrmse %, correlation, xsim; para: nrmse_dgm, dgm_linearity, mspe; dia: iron_leak ppm)",
             "",
             f"{'chi-separation':<38}{'R2p input':<15}{'ours para':>10}{'ours dia':>10}{'qci para':>10}{'qci dia':>10}"
             f"{'corr p':>8}{'corr d':>8}{'xsim p':>8}{'xsim d':>8}{'dgm p':>8}{'lin p':>7}{'mspe p':>8}{'leak d':>8}"]
    for (r2name, label), rs in rows.items():
        lines.append(f"{label:<38}{r2name:<15}{mean([r['ours_para'] for r in rs]):>10.2f}{mean([r['ours_dia'] for r in rs]):>10.2f}"
                     f"{mean([r['para']['nrmse'] for r in rs]):>10.2f}{mean([r['dia']['nrmse'] for r in rs]):>10.2f}"
                     f"{mean([r['para']['correlation'] for r in rs]):>8.3f}{mean([r['dia']['correlation'] for r in rs]):>8.3f}"
                     f"{mean([r['para']['xsim'] for r in rs]):>8.3f}{mean([r['dia']['xsim'] for r in rs]):>8.3f}"
                     f"{mean([r['para'].get('nrmse_dgm', float('nan')) for r in rs]):>8.2f}"
                     f"{mean([r['para'].get('dgm_linearity', float('nan')) for r in rs]):>7.3f}"
                     f"{mean([r['para'].get('mspe', float('nan')) for r in rs]):>8.2f}"
                     f"{mean([r['dia'].get('iron_leak', float('nan')) for r in rs]):>8.4f}")
    lines += ["", f"{'r2prime-generation':<38}{'ours nrmse':>11}{'qci nrmse':>11}{'corr':>8}{'xsim':>8}"]
    for m, rs in r2rows.items():
        lines.append(f"{m:<38}{mean([r['ours_nrmse'] for r in rs]):>11.2f}{mean([r['nrmse'] for r in rs]):>11.2f}"
                     f"{mean([r['correlation'] for r in rs]):>8.3f}{mean([r['xsim'] for r in rs]):>8.3f}")
    lines += ["", "median seconds per stage run (shared cores): " + ", ".join(
        f"{k} {np.median(v):.1f}" for k, v in times.items())]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
