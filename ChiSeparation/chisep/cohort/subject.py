"""One subject/session from BIDS files to BIDS derivatives: the unit of work of a cohort task.

:func:`process_job` never raises for a problem of the subject's data: it returns a result dict with
``status`` ``"done"`` or ``"failed"`` and a ``reason`` (the :class:`chisep.io.InputError` message,
or the exception type and message), so that one bad subject does not stop the cohort. Outputs are
written through :func:`chisep.io.atomic_output_dir`: a failed subject leaves no new files.
"""
from __future__ import annotations

import os
import resource
import time
import traceback
from pathlib import Path

import numpy as np

from ..io import InputError, atomic_output_dir, load_nifti, save_nifti, write_json
from .layout import OUTPUTS, Job, output_dir_of, output_paths, resample_nearest

#: dseg label names (lower case, spaces/dashes as underscores) -> ROI of the group table
DEEP_GREY = ("caudate", "putamen", "globus_pallidus", "pallidum", "thalamus", "substantia_nigra",
             "red_nucleus", "dentate")
WHITE_MATTER = ("white_matter", "cerebral_white_matter", "wm")
CSF = ("csf", "cerebrospinal_fluid", "lateral_ventricle")


def roi_key(name: str):
    """Group ROI of a segmentation label name: a deep grey nucleus (both hemispheres pooled),
    ``white_matter``, ``csf``, or None (not used)."""
    n = name.lower().replace("-", "_").replace(" ", "_")
    for side in ("left_", "right_", "l_", "r_"):
        if n.startswith(side):
            n = n[len(side):]
    for suffix in ("_left", "_right", "_l", "_r"):
        if n.endswith(suffix):
            n = n[: -len(suffix)]
    if n in ("pallidum", "globus_pallidus"):
        return "globus_pallidus"
    if n in ("thalamus_proper", "thalamus"):             # FreeSurfer < 7 names it Thalamus-Proper
        return "thalamus"
    if n in DEEP_GREY:
        return n
    if n in WHITE_MATTER:
        return "white_matter"
    if n in CSF:
        return "csf"
    return None


def _limit_threads(n: int):
    try:
        import torch
        torch.set_num_threads(max(1, int(n)))
    except Exception:  # torch is optional (regularized method)
        pass


def load_job_maps(job: Job, options: dict, progress=None):
    """Read the job's GRE (+SE) and run the preprocessing chain; returns :class:`chisep.pipeline.Maps`.

    Uses the public loaders and :func:`chisep.pipeline.preprocess_raw` (what ``chisep run`` does
    with raw inputs), with ``options`` ``bg_method``, ``unwrap``, ``phase_sign``.
    """
    from ..options import PreprocessOptions
    from ..pipeline import preprocess_raw
    from ..preprocess import load_echoes, load_gre

    acq = load_gre(list(job.gre_mag), list(job.gre_phase))
    se_mag = se_te = None
    if job.se_mag:
        se = load_echoes(list(job.se_mag), what="SE magnitude")
        if se["data"].shape[:3] != acq["mag"].shape[:3] or not np.allclose(se["affine"], acq["affine"], atol=1e-3):
            raise InputError(f"{job.se_mag[0]}: the MESE grid {se['data'].shape[:3]} differs from the "
                             f"MEGRE grid {acq['mag'].shape[:3]}; register/resample it onto the GRE first")
        se_mag, se_te = se["data"], se["te_s"]
    ps = options.get("phase_sign")
    phase_sign = int(ps) if ps else int(acq.get("phase_sign", 1) or 1)
    pre = PreprocessOptions(**{k: options[k] for k in ("unwrap", "bg_method") if options.get(k) is not None})
    maps = preprocess_raw(acq["mag"], acq["phase"], acq["te_s"], acq["affine"], b0_t=acq["b0_t"],
                          se_mag=se_mag, se_te_s=se_te, phase_sign=phase_sign, b0_dir=acq.get("b0_dir"),
                          options=pre, progress=progress)
    return maps, acq


def _on_grid(path, shape, affine, what):
    data, aff = load_nifti(path, ndim=3)
    if data.shape == tuple(shape) and np.allclose(aff, affine, atol=1e-3):
        return np.rint(data).astype(np.int32), False
    return resample_nearest(np.rint(data), aff, shape, affine), True


def write_lesion_tsv(rows: list, path, map_names=("chi_para", "chi_dia", "chi_total", "r2prime")) -> Path:
    """The lesion table (columns of :func:`chisep.lesions.table_columns`) as TSV, atomically."""
    from ..io import write_tsv
    from ..lesions import table_columns

    cols = table_columns([m for m in map_names if not rows or f"{m}_mean" in rows[0]])
    for r in rows:
        cols += [k for k in r if k not in cols and not isinstance(r[k], (dict, list))]

    return write_tsv(path, cols, rows)


def process_job(job, out_root, options: dict, run_hash: str, version: str) -> dict:
    """Run one job and write its derivatives; returns a result dict (never raises for bad data).

    Parameters
    ----------
    job : :class:`Job` or its dict.
    out_root : the derivatives folder (OUTPUT_DIR).
    options : ``method`` (see :data:`chisep.pipeline.METHODS`), ``bg_method``, ``unwrap``,
        ``phase_sign``, ``weights`` (path or None), ``threads`` (torch threads per task),
        ``device``.
    run_hash : recorded in every sidecar (``ChisepRunHash``) for skip-on-rerun.

    Returns
    -------
    dict: ``job``, ``status`` (done|failed), ``reason``, ``seconds`` (wall), ``cpu_s`` (CPU time),
    ``peak_rss_mb`` (the worker process's peak resident memory), ``outputs`` (paths), ``n_lesions``.
    """
    if isinstance(job, dict):
        job = Job(**job)
    t0, c0 = time.perf_counter(), time.process_time()
    res = {"job": job.name, "subject": job.subject, "session": job.session, "status": "failed",
           "reason": None, "outputs": [], "host": os.uname().nodename, "pid": os.getpid()}
    try:
        _limit_threads(options.get("threads", 1))
        res.update(_run(job, Path(out_root), options, run_hash, version))
        res["status"] = "done"
    except InputError as exc:
        res["reason"] = str(exc)
    except MemoryError:
        res["reason"] = "out of memory: give the workers more memory (--memory-limit / --slurm-memory)"
    except Exception as exc:  # noqa: BLE001 - a subject's failure must not stop the cohort
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
        res["reason"] = f"{type(exc).__name__}: {exc}{where}"
    res["seconds"] = round(time.perf_counter() - t0, 2)
    res["cpu_s"] = round(time.process_time() - c0, 2)        # CPU time of the worker process (all threads)
    res["peak_rss_mb"] = peak_rss_mb()
    return res


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB: ``VmHWM`` from /proc/self/status (Linux), else
    ``ru_maxrss`` (which a forked worker may inherit from its parent)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def _run(job: Job, out_root: Path, options: dict, run_hash: str, version: str) -> dict:
    from ..pipeline import separate, versions

    maps, acq = load_job_maps(job, options)
    method = options.get("method", "chisepnet-r2prime")
    if method == "chisepnet-r2prime" and maps.r2prime is None:
        raise InputError(f"{job.name}: chisepnet-r2prime needs R2 from a multi-echo spin echo "
                         f"(*_MESE) and none was found; use --method chisepnet-r2star for GRE-only data")
    weights = options.get("weights")
    result = separate(maps, method, weights=weights, device=options.get("device", "cpu"))
    out = dict(result.maps)
    affine = result.affine
    shape = out["mask"].shape
    lesion_rows = None
    lesion_note = None
    if job.lesion_mask:
        from ..lesions import lesion_statistics
        labels, resampled = _on_grid(job.lesion_mask, shape, affine, "lesion mask")
        wm = None
        if job.dseg and job.dseg_labels:
            seg, _ = _on_grid(job.dseg, shape, affine, "segmentation")
            wm_ids = [i for i, n in job.dseg_labels.items() if roi_key(n) == "white_matter"]
            wm = np.isin(seg, wm_ids) if wm_ids else None
        lmaps = {k: out[k] for k in ("chi_para", "chi_dia", "chi_total", "r2prime") if k in out}
        lesion_rows = lesion_statistics(lmaps, labels, affine, brain_mask=out["mask"], wm_mask=wm)
        out["lesions"] = labels
        lesion_note = ("resampled nearest-neighbour from its own grid onto the GRE grid"
                       if resampled else "on the GRE grid")
    paths = output_paths(out_root, job.entities)
    odir = output_dir_of(out_root, job.entities)
    rep = result.report
    winfo = rep.get("weights") or {}
    weights_sha = {k: v.get("sha256") for k, v in winfo.items() if isinstance(v, dict)} \
        if isinstance(winfo, dict) else {}
    sources = [job.bids_uri(p) for p in job.gre_mag + job.gre_phase + job.se_mag]
    common = {"ChisepRunHash": run_hash, "ChisepVersion": version, "Method": method,
              "MethodOptions": {k: v for k, v in options.items() if k not in ("threads",)},
              "WeightsSHA256": weights_sha, "B0FieldStrength_T": float(acq["b0_t"]),
              "B0Direction": [float(v) for v in maps.b0_dir], "EchoTime_s": [float(t) for t in acq["te_s"]],
              "Sources": sources, "SoftwareVersions": versions()}
    written = []
    with atomic_output_dir(odir) as stage:
        for key, (_e, suffix, ext, units, desc) in OUTPUTS.items():
            if key == "lesion_table":
                continue
            if key not in out or out[key] is None:
                continue
            name = paths[key].name
            dtype = np.uint8 if key == "mask" else (np.int16 if key == "lesions" else np.float32)
            sc = {**common, "Description": desc}
            if units:
                sc["Units"] = units
            if key == "mask":
                sc["Type"] = "Brain"
            if key == "lesions":
                sc["Sources"] = [job.bids_uri(job.lesion_mask)]
                sc["Resampling"] = lesion_note
            save_nifti(stage / name, out[key], affine, dtype=dtype, sidecar=sc)
            written.append(str(paths[key]))
        if lesion_rows is not None:
            write_lesion_tsv(lesion_rows, stage / paths["lesion_table"].name)
            write_json(stage / paths["lesion_table"].with_suffix("").with_suffix(".json").name,
                       {**common, "Description": OUTPUTS["lesion_table"][4],
                        "Columns": "see chisep.lesions; chi in ppm (chi_dia = |chi_dia|), r2prime in Hz",
                        "LesionMask": Path(job.lesion_mask).name, "Resampling": lesion_note})
            written.append(str(paths["lesion_table"]))
    return {"outputs": written, "n_lesions": None if lesion_rows is None else len(lesion_rows),
            "notes": rep.get("notes", [])}
