"""Running cohort jobs on Dask ``distributed``: a local cluster, a running scheduler, or SLURM.

One job (subject/session) is one task (:func:`chisep.cohort.subject.process_job`). The client
submits every pending job, then collects results as they complete, reporting progress for the whole
cohort. A task that fails inside returns ``status="failed"`` with its reason; a task whose worker
dies (e.g. killed for exceeding its memory limit) is reported as failed with the scheduler's
reason. Neither stops the other tasks.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional


#: worker resource that limits each worker to one subject at a time (clusters we start)
RESOURCE = "subject"


@dataclass
class SlurmOptions:
    """dask-jobqueue SLURMCluster settings; one SLURM job runs ``processes`` Dask workers.

    queue : partition (``#SBATCH -p``); account : ``#SBATCH -A``; walltime ``HH:MM:SS``;
    memory : per job, e.g. ``"16GB"``; cores : per job; processes : workers per job;
    jobs : how many jobs to request; job_extra : extra ``#SBATCH`` directives (``--gres=gpu:1``);
    prologue : shell lines run before the worker starts (``module load ...``, venv activation);
    local_directory : worker scratch directory on the node; log_directory : SLURM job logs.
    """
    queue: Optional[str] = None
    account: Optional[str] = None
    walltime: str = "01:00:00"
    memory: str = "8GB"
    cores: int = 2
    processes: int = 1
    jobs: int = 1
    job_extra: list = field(default_factory=list)
    prologue: list = field(default_factory=list)
    local_directory: Optional[str] = None
    log_directory: Optional[str] = None


def slurm_cluster(opts: SlurmOptions):
    """A dask-jobqueue SLURMCluster (not yet scaled). ``cluster.job_script()`` is the job script it
    submits with ``sbatch``; ``cluster.scale(jobs=n)`` submits."""
    from dask_jobqueue import SLURMCluster

    kw = dict(queue=opts.queue, account=opts.account, walltime=opts.walltime, memory=opts.memory,
              cores=opts.cores, processes=opts.processes, job_extra_directives=list(opts.job_extra),
              job_script_prologue=list(opts.prologue), python=sys.executable,
              # one subject at a time per worker; its torch/numpy use the job's cores
              worker_extra_args=["--resources", f"{RESOURCE}=1"],
              scheduler_options={"dashboard_address": ":0"})
    if opts.local_directory:
        kw["local_directory"] = opts.local_directory
    if opts.log_directory:
        kw["log_directory"] = opts.log_directory
    return SLURMCluster(**kw)


def make_client(n_workers: int = 1, threads_per_worker: int = 1, memory_limit: str = "4GB",
                scheduler: Optional[str] = None, slurm: Optional[SlurmOptions] = None):
    """A Dask client and the cluster it owns (None for a scheduler we did not start).

    ``scheduler``: address of a running scheduler (``tcp://host:8786``). ``slurm``: a SLURM cluster
    scaled to ``slurm.jobs`` jobs. Otherwise a LocalCluster of ``n_workers`` processes with
    ``threads_per_worker`` threads and ``memory_limit`` each (Dask's nanny restarts a worker that
    exceeds it; its task is then reported failed).
    """
    import dask
    from distributed import Client, LocalCluster

    # a task that kills its worker is a failed subject, not something to retry on every worker
    dask.config.set({"distributed.scheduler.allowed-failures": 0})
    if scheduler:
        return Client(scheduler), None
    if slurm is not None:
        cluster = slurm_cluster(slurm)
        cluster.scale(jobs=slurm.jobs)
        return Client(cluster), cluster
    env = {k: str(threads_per_worker) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    cluster = LocalCluster(n_workers=int(n_workers), threads_per_worker=int(threads_per_worker),
                           memory_limit=memory_limit, processes=True, dashboard_address=":0",
                           env=env, resources={RESOURCE: 1})
    return Client(cluster), cluster


def run_jobs(client, jobs: list, out_root, options: dict, hashes: dict, version: str,
             report: Optional[Callable[[int, int, dict], None]] = None, one_per_worker: bool = True) -> list:
    """Submit one task per job (all at once) and collect the results in completion order.

    ``options``: the options of every job, or a dict job name -> options (jobs may differ, e.g. in
    method when only some have a spin echo). ``hashes``: job name -> run hash. ``report(k, n,
    result)`` is called after each completion. ``one_per_worker``: ask for the worker resource
    :data:`RESOURCE` (set on the clusters :func:`make_client` starts; not on a scheduler someone else
    runs, whose workers would never offer it) so that a worker runs one subject at a time. Returns the result dicts (see
    :func:`chisep.cohort.subject.process_job`).
    """
    from distributed import as_completed

    from .subject import process_job

    per_job = all(j.name in options for j in jobs) and bool(jobs)
    futures = {}
    for job in jobs:
        opts = dict(options[job.name] if per_job else options)
        f = client.submit(process_job, job.to_dict(), str(out_root), opts, hashes[job.name],
                          version, key=f"chisep-{job.name}-{hashes[job.name][:8]}-{time.time_ns()}",
                          pure=False, retries=0, resources={RESOURCE: 1} if one_per_worker else None)
        futures[f] = job
    results = []
    n = len(futures)
    for k, fut in enumerate(as_completed(list(futures)), start=1):
        job = futures[fut]
        try:
            res = fut.result()
        except Exception as exc:  # noqa: BLE001 - the worker died or the task could not run
            res = {"job": job.name, "subject": job.subject, "session": job.session, "status": "failed",
                   "reason": f"task lost: {type(exc).__name__}: {exc} (a worker that exceeds its memory "
                             f"limit is restarted; raise --memory-limit)", "outputs": []}
        results.append(res)
        if report:
            report(k, n, res)
    return results
