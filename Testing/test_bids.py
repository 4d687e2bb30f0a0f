"""chisep bids: a small simulated BIDS cohort through a Dask LocalCluster with two workers.

Dataset (64^3 simulated heads): sub-01 (seed 3), sub-02 with two sessions (seed 4), sub-03 (seed 3
data with a corrupt phase echo). Lesion masks on a 1x1x2 mm FLAIR-like grid shifted by half a voxel
and tissue segmentations live in derivatives/. Numbers are checked against the simulation truth.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bids")
pytest.importorskip("distributed")
pytest.importorskip("dask_jobqueue")

from chisep import cli, metrics  # noqa: E402
from chisep.cohort import layout as L  # noqa: E402
from chisep.cohort import simulated as S  # noqa: E402
from chisep.io import load_nifti  # noqa: E402
from chisep.simulate import TISSUE_LABELS, simulate_head  # noqa: E402


@pytest.fixture(scope="module")
def scheduler():
    """A Dask LocalCluster with two worker processes (the runs reach it with --scheduler, so that
    its workers stay warm between runs; --n-workers runs start their own)."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="3GB",
                           dashboard_address=":0")
    yield cluster.scheduler_address
    cluster.close()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    bids = root / "bids"
    S.write_dataset_description(bids)
    h3 = simulate_head(seed=3, size="small")
    h4 = simulate_head(seed=4, size="small")
    S.write_subject(h3, bids, "01", truth=False)
    S.write_subject(h4, bids, "02", ses="1", truth=False)
    S.write_subject(h4, bids, "02", ses="2", truth=False)
    bad = S.write_subject(h3, bids, "03", segmentation=False, truth=False)
    S.corrupt_file(bad["phase"][2])
    return {"bids": bids, "out": root / "derivatives" / "chisep", "heads": {"01": h3, "02": h4}}


def _last_log(out):
    logs = sorted((Path(out) / "logs").glob("participant_*.json"))
    return json.loads(logs[-1].read_text())


def _participant(cohort, *extra):
    return cli.main(["bids", str(cohort["bids"]), str(cohort["out"]), "participant", "--progress", "json",
                     "--memory-limit", "3GB", *extra])


# --------------------------------------------------------------------------- pure functions
def test_derivative_names_follow_the_bids_entity_order():
    from bidsschematools import schema

    s = schema.load_schema()
    order = [s.objects.entities[n]["name"] for n in s.rules.entities]
    ours = [order.index(k) for k in L.ENTITY_ORDER]
    assert ours == sorted(ours)
    name = L.derivative_name({"desc": "paramagnetic", "run": "2", "sub": "01", "ses": "1", "acq": "fast"}, "Chimap")
    assert name == "sub-01_ses-1_acq-fast_run-2_desc-paramagnetic_Chimap.nii.gz"
    with pytest.raises(Exception, match="alphanumeric"):
        L.derivative_name({"sub": "0_1"}, "Chimap")


def test_resample_nearest_keeps_labels_and_maps_a_shifted_grid():
    lab = np.zeros((10, 10, 10), np.int32)
    lab[2:5, 3:6, 4:8] = 7
    a_src = np.eye(4)
    a_src[:3, 3] = (-5.0, -5.0, -5.0)
    a_dst = np.eye(4)
    a_dst[:3, 3] = (-4.0, -5.0, -5.0)         # target voxel i is source voxel i + 1
    out = L.resample_nearest(lab, a_src, (10, 10, 10), a_dst)
    assert set(np.unique(out)) == {0, 7}
    assert np.array_equal(out[1:4, 3:6, 4:8], lab[2:5, 3:6, 4:8]) and out.sum() == lab.sum()


def test_roi_names_and_brain_mask_fallback():
    from chisep.cohort.group import roi_means
    from chisep.cohort.subject import roi_key

    assert [roi_key(n) for n in ("Left-Putamen", "Right-Pallidum", "Left-Thalamus-Proper", "thalamus",
                                  "Left-Cerebral-White-Matter", "white_matter", "Left-Hippocampus",
                                  "substantia_nigra")] == [
        "putamen", "globus_pallidus", "thalamus", "thalamus", "white_matter", "white_matter", None,
        "substantia_nigra"]
    mask = np.zeros((6, 6, 6), np.uint8)
    mask[1:5, 1:5, 1:5] = 1
    seg = np.zeros_like(mask, dtype=np.int32)
    seg[1:3] = 11                                                # Left-Putamen
    seg[3:5] = 12                                                # Right-Putamen
    para = np.where(seg == 11, 0.08, 0.02).astype(np.float32)
    maps = {"chi_para": para, "chi_dia": np.full_like(para, 0.01)}
    les = np.zeros_like(mask)
    les[4, 4, 4] = 1                                             # lesion voxels leave the ROIs
    m, src = roi_means(maps, mask, seg, {11: "Left-Putamen", 12: "Right-Putamen"}, les)
    assert src == "segmentation" and m["_n"]["putamen"] == 63
    assert m["putamen"]["chi_para"] == pytest.approx((32 * 0.08 + 31 * 0.02) / 63)
    m, src = roi_means(maps, mask)
    assert src == "brain-mask" and set(m) == {"_n", "brain"}
    assert m["brain"]["chi_para"] == pytest.approx(0.05) and m["_n"]["brain"] == 64


def test_find_jobs_collects_echoes_se_lesions_and_segmentation(cohort):
    jobs = L.find_jobs(cohort["bids"])
    assert [j.name for j in jobs] == ["sub-01", "sub-02_ses-1", "sub-02_ses-2", "sub-03"]
    j = jobs[0]
    assert [Path(p).name for p in j.gre_mag] == [f"sub-01_echo-{i}_part-mag_MEGRE.nii.gz" for i in range(1, 6)]
    assert [Path(p).name for p in j.gre_phase] == [f"sub-01_echo-{i}_part-phase_MEGRE.nii.gz" for i in range(1, 6)]
    assert len(j.se_mag) == 4 and j.lesion_mask.endswith("sub-01_space-FLAIR_label-lesion_mask.nii.gz")
    assert j.dseg_labels[TISSUE_LABELS["putamen"]] == "putamen"
    assert jobs[2].lesion_mask.endswith("sub-02_ses-2_space-FLAIR_label-lesion_mask.nii.gz")
    assert [j.name for j in L.find_jobs(cohort["bids"], ["02"], ["2"])] == ["sub-02_ses-2"]
    with pytest.raises(Exception, match="no such subject"):
        L.find_jobs(cohort["bids"], ["09"])


def test_lesion_mask_from_the_flair_grid_matches_the_truth(cohort):
    h = cohort["heads"]["01"]
    mask, aff = load_nifti(L.find_jobs(cohort["bids"], ["01"])[0].lesion_mask, ndim=3)
    assert not np.allclose(aff, h.affine)                       # really another grid
    back = L.resample_nearest(mask, aff, h.shape, h.affine) > 0
    truth = h.truth["lesions"] > 0
    dice = 2 * (back & truth).sum() / (back.sum() + truth.sum())
    assert dice > 0.75
    from scipy import ndimage as ndi
    lab = L.resample_nearest(mask, aff, h.shape, h.affine)
    for les in np.unique(h.truth["lesions"][truth]):             # centroids within 0.75 mm (2 mm slices)
        d = np.subtract(ndi.center_of_mass(lab == les), ndi.center_of_mass(h.truth["lesions"] == les))
        assert np.linalg.norm(d) < 0.75, (les, d)


def test_slurm_job_script_is_built_from_the_options():
    from chisep.cohort.engine import SlurmOptions, slurm_cluster

    opts = SlurmOptions(queue="short", account="lab42", walltime="02:30:00", memory="16GB", cores=4,
                        jobs=3, job_extra=["--gres=gpu:1"], prologue=["module load python/3.11"])
    cluster = slurm_cluster(opts)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    for want in ("#SBATCH -p short", "#SBATCH -A lab42", "#SBATCH -t 02:30:00", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --mem=15G", "#SBATCH --gres=gpu:1"):
        assert want in lines, (want, script)
    assert lines.index("module load python/3.11") < next(i for i, s in enumerate(lines) if "distributed.cli.dask_worker" in s)
    worker = next(s for s in lines if "distributed.cli.dask_worker" in s)
    assert worker.startswith(sys.executable) and "tcp://" in worker
    assert "--nthreads 4" in worker and "--memory-limit 14.90GiB" in worker
    assert "--resources subject=1" in worker                    # one subject at a time per worker job


# --------------------------------------------------------------------------- the cohort run
def test_participant_on_two_workers_then_rerun_then_changed_option(cohort, scheduler, capsys):
    out = cohort["out"]
    rc = _participant(cohort, "--scheduler", scheduler)
    assert rc == 1                                               # one subject failed
    log = _last_log(out)
    assert log["workers"] == 2
    res = {r["job"]: r for r in log["results"]}
    assert set(res) == {"sub-01", "sub-02_ses-1", "sub-02_ses-2", "sub-03"}
    assert res["sub-03"]["status"] == "failed"
    assert "sub-03_echo-3_part-phase_MEGRE.nii.gz" in res["sub-03"]["reason"]
    assert "not a readable NIfTI" in res["sub-03"]["reason"]
    assert all(res[k]["status"] == "done" for k in ("sub-01", "sub-02_ses-1", "sub-02_ses-2"))
    assert len({(r["host"], r["pid"]) for r in res.values()}) == 2   # both workers did work
    assert all(200 < r["peak_rss_mb"] < 3000 for r in res.values())
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [e["progress"] for e in events if "progress" in e] == [0.25, 0.5, 0.75, 1.0]
    assert not any(out.glob("sub-03/**/*.nii.gz"))               # nothing half-written for the bad one

    # numbers against the truth
    for sub, ses in (("01", None), ("02", "1"), ("02", "2")):
        h = cohort["heads"][sub]
        p = L.output_paths(out, {"sub": sub, "ses": ses})
        t = h.truth
        mask = load_nifti(p["mask"], ndim=3)[0] > 0
        dice = 2 * (mask & (t["mask"] > 0)).sum() / (mask.sum() + (t["mask"] > 0).sum())
        assert dice > 0.85
        em = metrics.evaluation_mask(t["mask"], t["mask_csf"], t["mask_vessels"]) & mask
        para, aff = load_nifti(p["chi_para"], ndim=3)
        dia = load_nifti(p["chi_dia"], ndim=3)[0]
        total = load_nifti(p["chi_total"], ndim=3)[0]
        assert np.allclose(aff, h.affine, atol=1e-4)
        assert metrics.nrmse(para, t["chi_para"], em) < 35 and metrics.nrmse(dia, t["chi_dia"], em) < 35
        assert dia.min() >= 0 and np.allclose(total, para - dia, atol=1e-5)
        r2p = load_nifti(p["r2prime"], ndim=3)[0]
        assert metrics.nrmse(r2p, t["r2prime"], em) < 35
        sc = json.loads(L.sidecar_of(p["chi_para"]).read_text())
        assert sc["Units"] == "ppm" and sc["Method"] == "chisepnet-r2prime"
        assert len(sc["WeightsSHA256"]["chisepnet"]) == 64 and len(sc["ChisepRunHash"]) == 64
        anat = f"sub-{sub}/" + (f"ses-{ses}/" if ses else "") + "anat/"
        assert sc["Sources"][0] == f"bids:raw:{anat}" + L.derivative_name(
            {"sub": sub, "ses": ses, "echo": "1", "part": "mag"}, "MEGRE")
        assert all((cohort["bids"] / u.split(":", 2)[2]).is_file() for u in sc["Sources"])
        assert json.loads(L.sidecar_of(p["r2prime"]).read_text())["Units"] == "Hz"
        rows = open(p["lesion_table"]).read().splitlines()
        n_true = len(np.unique(t["lesions"][t["lesions"] > 0]))
        assert len(rows) - 1 == n_true
        cols = rows[0].split("\t")
        vols = sorted(float(r.split("\t")[cols.index("volume_mm3")]) for r in rows[1:])
        tvols = sorted(float((t["lesions"] == lab).sum()) for lab in np.unique(t["lesions"][t["lesions"] > 0]))
        assert np.allclose(vols, tvols, rtol=0.35, atol=8)

    # the derivatives follow the BIDS derivative rules of the schema
    assert L.derivative_problems(out) == []
    dd = json.loads((out / "dataset_description.json").read_text())
    assert dd["DatasetType"] == "derivative" and dd["GeneratedBy"][0]["Name"] == "chisep"

    # rerun: nothing to do for the good subjects; the failed one is retried (and fails again)
    stamp = {f: f.stat().st_mtime_ns for f in out.glob("sub-0[12]/**/*") if f.is_file()}
    rc = _participant(cohort, "--scheduler", scheduler)
    log = _last_log(out)
    assert rc == 1 and sorted(log["skipped"]) == ["sub-01", "sub-02_ses-1", "sub-02_ses-2"]
    assert [r["job"] for r in log["results"]] == ["sub-03"]
    rc = _participant(cohort, "--participant-label", "01", "02")
    log = _last_log(out)
    assert rc == 0 and log["results"] == [] and log["workers"] is None       # no cluster was started
    assert stamp == {f: f.stat().st_mtime_ns for f in stamp}

    # a changed option reruns (only the selected subject; on a LocalCluster of its own), a new hash is recorded
    old = json.loads(L.sidecar_of(L.output_paths(out, {"sub": "01"})["chi_para"]).read_text())["ChisepRunHash"]
    rc = _participant(cohort, "--participant-label", "01", "--unwrap", "laplacian", "--n-workers", "1")
    log = _last_log(out)
    assert rc == 0 and [r["job"] for r in log["results"]] == ["sub-01"]
    sc = json.loads(L.sidecar_of(L.output_paths(out, {"sub": "01"})["chi_para"]).read_text())
    assert sc["MethodOptions"]["unwrap"] == "laplacian" and sc["ChisepRunHash"] != old
    f2 = L.output_paths(out, {"sub": "02", "ses": "1"})["chi_para"]
    assert f2.stat().st_mtime_ns == stamp[f2]

    # group level: ROI means from the segmentation vs the truth, lesion table, QC figure
    capsys.readouterr()
    assert cli.main(["bids", str(cohort["bids"]), str(out), "group", "--progress", "none"]) == 0
    rows = {(r["participant_id"], r["session_id"]): r for r in _read_tsv(out / "group" / "group_roi_means.tsv")}
    assert rows[("sub-03", "n/a")]["status"] == "missing"
    r = rows[("sub-02", "ses-1")]
    assert r["roi_source"] == "segmentation"
    t = cohort["heads"]["02"].truth
    pred, true = [], []
    for roi in ("caudate", "putamen", "globus_pallidus", "thalamus", "white_matter"):
        sel = (t["tissue"] == TISSUE_LABELS[roi]) & (t["mask"] > 0) & (t["lesions"] == 0)
        pred.append(float(r[f"{roi}_chi_para_mean_ppm"]))
        true.append(float(t["chi_para"][sel].mean()))
    assert np.all(np.abs(np.array(pred) - true) < 0.35 * np.array(true) + 0.005), (pred, true)
    assert np.argsort(pred).tolist() == np.argsort(true).tolist()
    les = _read_tsv(out / "group" / "group_lesions.tsv")
    assert {x["participant_id"] for x in les} == {"sub-01", "sub-02"}
    assert sum(int(x["lesions_n"]) for x in rows.values() if x["status"] == "done") == len(les)
    import matplotlib.image as mpimg
    png = mpimg.imread(out / "group" / "group_qc.png")
    assert png.shape[0] == int(round(2.8 * 3 * 80))              # one row per completed subject/session


def _read_tsv(path):
    lines = Path(path).read_text().splitlines()
    cols = lines[0].split("\t")
    return [dict(zip(cols, line.split("\t"))) for line in lines[1:]]


def test_derivative_check_catches_wrong_names(tmp_path):
    out = tmp_path / "d"
    (out / "sub-01" / "anat").mkdir(parents=True)
    (out / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.10.0",
                                                              "DatasetType": "derivative"}))
    for name in ("sub-01_desc-x_ses-1_Chimap.nii.gz", "sub-02_Chimap.nii.gz", "sub-01_R2primemap.nii.gz",
                 "sub-01_desc-paramagnetic_Chimap.nii.gz"):
        (out / "sub-01" / "anat" / name).write_bytes(b"")
    probs = "\n".join(L.derivative_problems(out))
    assert "GeneratedBy" in probs
    assert "out of the BIDS order" in probs and "does not match sub-02" in probs
    assert "R2primemap" in probs and "paramagnetic" not in probs
    (out / ".bidsignore").write_text("\n".join(L.NONSTANDARD_PATTERNS))
    assert "R2primemap" not in "\n".join(L.derivative_problems(out))


def test_usage_errors_exit_2(cohort, tmp_path, capsys):
    assert cli.main(["bids", str(tmp_path), str(tmp_path / "o"), "participant"]) == 2
    assert "not a BIDS dataset" in capsys.readouterr().err
    assert cli.main(["bids", str(cohort["bids"]), str(tmp_path / "o"), "participant", "--participant-label", "99"]) == 2


def test_a_worker_killed_for_memory_is_a_failed_subject(cohort, tmp_path):
    """Dask's nanny restarts a worker that exceeds --memory-limit; the subject is reported failed
    (not retried on every worker) and the run's exit status says so."""
    out = tmp_path / "out"
    rc = cli.main(["bids", str(cohort["bids"]), str(out), "participant", "--participant-label", "01",
                   "--n-workers", "1", "--memory-limit", "350MB", "--progress", "none"])
    assert rc == 1
    (res,) = _last_log(out)["results"]
    assert res["status"] == "failed" and "KilledWorker" in res["reason"] and "--memory-limit" in res["reason"]
    assert not any(out.glob("sub-01/**/*.nii.gz"))
