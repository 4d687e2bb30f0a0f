"""``chisep bids``: a BIDS App. ``participant`` runs every subject/session on Dask; ``group``
summarises the derivatives (ROI means, lesion table, QC figure)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from ..io import InputError, write_json

HELP = """BIDS App (BIDS-Apps convention: bids_dir output_dir analysis_level).

participant: every subject/session with a multi-echo GRE
(*_echo-<n>_part-mag|phase_MEGRE.nii.gz + JSON sidecars) and, when present, a multi-echo spin echo
(*_echo-<n>_MESE.nii.gz), one Dask task each. A lesion mask (*_label-lesion_mask / *_desc-lesion_mask)
and a segmentation (*_dseg + dseg.tsv) are taken from BIDS_DIR/derivatives/* or --derivatives, on any
grid (resampled nearest-neighbour onto the GRE grid). Writes BIDS derivatives in OUTPUT_DIR:
sub-*/[ses-*/]anat/*_desc-paramagnetic_Chimap.nii.gz, *_desc-diamagnetic_Chimap.nii.gz (|chi_dia|),
*_Chimap.nii.gz (chi_total), all ppm; *_R2starmap, *_R2primemap[, *_R2map] (Hz); *_desc-brain_mask;
*_desc-lesions_dseg and *_desc-lesions_stats.tsv (lesion table); JSON sidecars (Units, Method,
options, weights SHA-256, ChisepRunHash). A rerun skips every subject whose outputs are complete for
the same inputs, options and weights, and redoes the rest. Exit status 0 when every subject
succeeded, 1 when some failed (listed with their reasons and in OUTPUT_DIR/logs/), 2 on usage errors.

group: OUTPUT_DIR/group/group_roi_means.tsv (per subject: ROI means of chi_para, |chi_dia|,
chi_total in ppm and R2' in Hz in deep grey nuclei and white matter when a segmentation exists,
else the brain mask; lesion counts and means by class), group_lesions.tsv (every lesion of every
subject), group_qc.png (one row per subject: chi_para and |chi_dia| slices).

Execution: a local Dask cluster (--n-workers, --memory-limit per worker), a running scheduler
(--scheduler tcp://host:8786), or SLURM through dask-jobqueue (--slurm, --slurm-queue, ...)."""


def add_parser(sub):
    from .. import options as O

    p = sub.add_parser("bids", help="BIDS App: many subjects on Dask (participant / group level)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bids_dir", help="the BIDS dataset (raw)")
    p.add_argument("output_dir", help="where the derivatives go (e.g. BIDS_DIR/derivatives/chisep)")
    p.add_argument("analysis_level", choices=("participant", "group"))
    p.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                   help="subjects to process (without sub-); default all")
    p.add_argument("--session-label", "--session_label", nargs="+", metavar="LABEL",
                   help="sessions to process (without ses-); default all")
    p.add_argument("--derivatives", nargs="+", metavar="DIR", help="more derivative folders with lesion masks / segmentations")
    m = p.add_argument_group("method")
    O.add_arguments(m, O.RunOptions, only=("method",), overrides={"method": {
        "default": None, "help": "default chisepnet-r2prime when a MESE exists, else chisepnet-r2star (per subject)"}})
    O.add_arguments(m, O.PreprocessOptions, only=("bg_method", "unwrap"))
    O.add_arguments(m, O.AcquisitionOptions, only=("phase_sign",))
    O.add_arguments(m, O.RunOptions, only=("weights",))
    e = p.add_argument_group("execution (Dask)")
    e.add_argument("--n-workers", type=int, default=1, help="local cluster worker processes (default 1)")
    e.add_argument("--threads-per-worker", type=int, default=1, help="threads per worker (torch/numpy), default 1")
    e.add_argument("--memory-limit", default="4GB", help="memory per local worker, e.g. 4GB (default)")
    e.add_argument("--scheduler", metavar="ADDRESS", help="use a running Dask scheduler (tcp://host:8786)")
    e.add_argument("--slurm", action="store_true", help="run workers as SLURM jobs (dask-jobqueue)")
    e.add_argument("--slurm-queue", metavar="PARTITION")
    e.add_argument("--slurm-account", metavar="ACCOUNT")
    e.add_argument("--slurm-walltime", default="01:00:00", metavar="HH:MM:SS")
    e.add_argument("--slurm-memory", default="8GB", help="memory per SLURM job (default 8GB)")
    e.add_argument("--slurm-cores", type=int, default=2, help="cores per SLURM job (default 2)")
    e.add_argument("--slurm-jobs", type=int, default=None, help="SLURM jobs to request (default: one per subject, at most 20)")
    e.add_argument("--slurm-extra", nargs="+", default=[], metavar="DIRECTIVE", help="extra #SBATCH directives, e.g. --gres=gpu:1")
    e.add_argument("--slurm-prologue", nargs="+", default=[], metavar="LINE", help="shell lines before the worker starts (module load ...)")
    e.add_argument("--slurm-print-job-script", action="store_true", help="print the job script that would be submitted and exit")
    O.add_arguments(p, O.OutputOptions, only=("progress",))
    return p


def _options(args, has_se: bool) -> dict:
    method = args.method or ("chisepnet-r2prime" if has_se else "chisepnet-r2star")
    return {"method": method, "bg_method": args.bg_method, "unwrap": args.unwrap,
            "phase_sign": args.phase_sign, "weights": str(Path(args.weights).resolve()) if args.weights else None,
            "device": "cpu", "threads": args.slurm_cores if args.slurm else args.threads_per_worker}


def weights_fingerprint(method: str, weights=None) -> dict:
    """SHA-256 of the weight files ``method`` will use (empty for the regularized method)."""
    from ..io import file_sha256

    if method == "regularized":
        return {}
    from ..network.weights import BUILTIN_R2STAR_CHISEPNET, builtin_path, builtin_weights_dir

    out = {}
    if weights:
        out["chisepnet"] = file_sha256(weights)
    elif method == "chisepnet-r2star" and (builtin_weights_dir() / BUILTIN_R2STAR_CHISEPNET).is_file():
        out["chisepnet"] = file_sha256(builtin_weights_dir() / BUILTIN_R2STAR_CHISEPNET)
    else:
        p = builtin_path("chisepnet-r2prime")
        if not p.is_file():
            raise InputError(f"no chi-sepnet weights installed ({p}); give --weights PATH or --method regularized")
        out["chisepnet"] = file_sha256(p)
    if method == "chisepnet-r2star":
        p = builtin_path("r2prime-from-r2star")
        if not p.is_file():
            raise InputError(f"no R2'-prediction weights installed ({p}); use a MESE or --method regularized")
        out["r2prime"] = file_sha256(p)
    return out


def _slurm_options(args, n_jobs: int):
    from ..cohort.engine import SlurmOptions

    return SlurmOptions(queue=args.slurm_queue, account=args.slurm_account, walltime=args.slurm_walltime,
                        memory=args.slurm_memory, cores=args.slurm_cores, processes=1,
                        jobs=args.slurm_jobs or max(1, min(n_jobs, 20)), job_extra=list(args.slurm_extra),
                        prologue=list(args.slurm_prologue))


class _Reporter:
    def __init__(self, mode, n_total, n_skipped):
        self.mode, self.n_total, self.n_skipped = mode, n_total, n_skipped
        self.failed = 0
        self.t0 = time.perf_counter()

    def emit(self, obj, text):
        if self.mode == "json":
            print(json.dumps(obj), flush=True)
        elif self.mode == "text":
            print(text, file=sys.stderr, flush=True)

    def __call__(self, k, n, res):
        if res["status"] != "done":
            self.failed += 1
        done = self.n_skipped + k
        el = time.perf_counter() - self.t0
        eta = el / k * (n - k)
        msg = (f"[{done}/{self.n_total}] {res['job']}: {res['status']}"
               + (f" in {res.get('seconds', 0):.1f} s" if res["status"] == "done" else f": {res['reason']}")
               + f"  (elapsed {el:.0f} s, ~{eta:.0f} s left, {self.failed} failed)")
        self.emit({"progress": round(done / self.n_total, 4), "job": res["job"], "status": res["status"],
                   "reason": res.get("reason"), "seconds": res.get("seconds"),
                   "peak_rss_mb": res.get("peak_rss_mb")}, msg)


def run_participant(args) -> int:
    from .. import __version__
    from ..cohort.engine import make_client, run_jobs, slurm_cluster
    from ..cohort.layout import NONSTANDARD_PATTERNS, dataset_description, find_jobs, is_complete, run_hash

    bids_dir, out = Path(args.bids_dir), Path(args.output_dir)
    if out.resolve() == bids_dir.resolve():
        raise InputError("output_dir must differ from bids_dir (use e.g. BIDS_DIR/derivatives/chisep)")
    jobs = find_jobs(bids_dir, args.participant_label, args.session_label, args.derivatives, exclude_dir=out)
    if not jobs:
        raise InputError(f"{bids_dir}: no multi-echo GRE found (*_echo-<n>_part-mag_MEGRE.nii.gz with "
                         f"*_part-phase_MEGRE partners) for the selected subjects/sessions")
    if args.slurm and args.slurm_print_job_script:
        cluster = slurm_cluster(_slurm_options(args, len(jobs)))
        try:
            print(cluster.job_script())
        finally:
            cluster.close()
        return 0
    opts_by_job, hashes, fingerprints = {}, {}, {}
    for j in jobs:
        o = _options(args, bool(j.se_mag))
        if o["method"] not in fingerprints:
            fingerprints[o["method"]] = weights_fingerprint(o["method"], o["weights"])
        opts_by_job[j.name] = o
        hashed = {k: v for k, v in o.items() if k not in ("threads", "device", "weights")}
        hashes[j.name] = run_hash(j, hashed, fingerprints[o["method"]], __version__)
    pending = [j for j in jobs if not is_complete(out, j, hashes[j.name])]
    skipped = [j for j in jobs if j not in pending]
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "dataset_description.json", dataset_description(bids_dir, __version__))
    tmp = out / ".bidsignore.tmp"
    tmp.write_text("\n".join(NONSTANDARD_PATTERNS) + "\n")
    os.replace(tmp, out / ".bidsignore")
    rep = _Reporter(args.progress, len(jobs), len(skipped))
    for j in skipped:
        rep.emit({"job": j.name, "status": "skipped"},
                 f"{j.name}: skipped (outputs complete for the same inputs, options and weights)")
    results = []
    t0 = time.perf_counter()
    n_workers = None
    if pending:
        slurm = _slurm_options(args, len(pending)) if args.slurm else None
        client, cluster = make_client(args.n_workers, args.threads_per_worker, args.memory_limit,
                                      scheduler=args.scheduler, slurm=slurm)
        try:
            n_workers = len(client.scheduler_info().get("workers", {}))
            rep.emit({"submitted": len(pending), "workers": n_workers},
                     f"running {len(pending)} of {len(jobs)} subject/sessions on {n_workers} Dask worker(s)"
                     + (f" ({len(skipped)} skipped)" if skipped else ""))
            results = run_jobs(client, pending, out, opts_by_job, hashes, __version__, report=rep,
                               one_per_worker=not args.scheduler)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    wall = time.perf_counter() - t0
    failed = [r for r in results if r["status"] != "done"]
    log = {"command": "chisep bids participant", "argv": sys.argv[1:], "version": __version__,
           "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "n_jobs": len(jobs), "skipped": [j.name for j in skipped], "results": results,
           "wall_s": round(wall, 2), "workers": n_workers}
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    write_json(out / "logs" / f"participant_{stamp}.json", log)
    done = len(results) - len(failed)
    summary = (f"chisep bids participant: {done} done, {len(skipped)} skipped (up to date), "
               f"{len(failed)} failed of {len(jobs)} subject/sessions in {wall:.1f} s")
    if args.progress != "none":
        print(summary, file=sys.stderr)
        for r in failed:
            print(f"  FAILED {r['job']}: {r['reason']}", file=sys.stderr)
    return 1 if failed else 0


def run_group(args) -> int:
    from ..cohort.group import run_group as _group

    res = _group(Path(args.output_dir), bids_dir=Path(args.bids_dir),
                 participant_label=args.participant_label, session_label=args.session_label)
    if args.progress != "none":
        print(f"chisep bids group: {res['n_subjects']} subject/sessions, {res['n_lesions']} lesions; "
              f"ROIs from {', '.join(sorted(set(res['roi_sources']))) or 'none'}; wrote {res['roi_table']}, "
              f"{res['lesion_table']}, {res['figure']}", file=sys.stderr)
    return 0


def run(args) -> int:
    if args.analysis_level == "participant":
        return run_participant(args)
    return run_group(args)
