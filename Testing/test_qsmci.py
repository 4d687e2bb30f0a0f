"""chisep qsmci: QSM-CI's chi-separation and r2prime-generation stage directories, in and out.

Stage inputs are built from a 64^3 simulated head as QSM-CI's isolated mode feeds them (true local
field and chi map, measured multi-echo magnitude, true mask, params.json); outputs are checked
against the simulation truth with our metrics and with QSM-CI's own scorer.
"""
import json

import numpy as np
import pytest

from chisep import cli, metrics
from chisep.cohort import qsmci
from chisep.io import load_nifti
from chisep.simulate import simulate_head

qsm_ci = pytest.importorskip("qsm_ci")


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    root = tmp_path_factory.mktemp("qsmci")
    head = simulate_head(seed=5, size="small")
    dirs = qsmci.write_stage_dirs(head, root)
    t = head.truth
    em = metrics.evaluation_mask(t["mask"], t["mask_csf"], t["mask_vessels"])
    return {"root": root, "head": head, "dirs": dirs, "em": em}


def test_our_contract_is_qsm_cis():
    from qsm_ci import stages

    for name in ("chi-separation", "r2prime-generation"):
        assert qsmci.STAGES[name] == stages.STAGES[name]
        for art in stages.STAGES[name]["consumes"] + stages.STAGES[name]["produces"]:
            assert qsmci.ARTIFACT_FILE[art] == stages.ARTIFACT_FILE[art]


def test_chi_separation_stage_against_truth_and_qsm_ci_scorer(stage, capsys):
    from qsm_ci import qsm_eval

    out = stage["root"] / "chi-separation" / "output"
    assert cli.main(["qsmci", str(stage["dirs"]["chi-separation"]), str(out)]) == 0
    msg = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert msg["stage"] == "chi-separation" and msg["method"] == "chisepnet-r2prime"
    h, t, em = stage["head"], stage["head"].truth, stage["em"]
    para, aff = load_nifti(out / "chi-para.nii.gz", ndim=3)
    dia, _ = load_nifti(out / "chi-dia.nii.gz", ndim=3)
    assert np.allclose(aff, h.affine, atol=1e-4) and para.shape == h.shape
    assert dia.min() >= 0 and para.min() >= 0                   # chi- stored as a positive magnitude
    assert not para[t["mask"] == 0].any() and not dia[t["mask"] == 0].any()
    assert metrics.nrmse(para, t["chi_para"], em) < 30
    assert metrics.nrmse(dia, t["chi_dia"], em) < 30
    putamen = (t["tissue"] == 5) & (em > 0)
    assert abs(para[putamen].mean() - t["chi_para"][putamen].mean()) < 0.3 * t["chi_para"][putamen].mean()
    # QSM-CI's scorer (whole mask, as its CI scores a submission)
    mp, _ = qsm_eval.score_arrays(para.astype(float), t["chi_para"].astype(float), t["mask"], "chisep", component="para")
    md, _ = qsm_eval.score_arrays(dia.astype(float), t["chi_dia"].astype(float), t["mask"], "chisep", component="dia")
    assert mp["correlation"] > 0.9 and md["correlation"] > 0.85
    assert mp["coverage"] > 0.95 and md["coverage"] > 0.95
    assert mp["nrmse"] < 40 and md["nrmse"] < 45


def test_r2prime_generation_stage_against_truth(stage, capsys):
    out = stage["root"] / "r2prime-generation" / "output"
    assert cli.main(["qsmci", str(stage["dirs"]["r2prime-generation"]), str(out)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["stage"] == "r2prime-generation"
    t, em = stage["head"].truth, stage["em"]
    r2p, _ = load_nifti(out / "r2prime.nii.gz", ndim=3)
    assert r2p.min() >= 0 and not r2p[t["mask"] == 0].any()
    err_net = metrics.nrmse(r2p, t["r2prime"], em)
    assert err_net < 30
    # the network beats R2* minus a constant R2 on the same stage directory
    out2 = stage["root"] / "r2prime-generation" / "output_const"
    assert cli.main(["qsmci", str(stage["dirs"]["r2prime-generation"]), str(out2),
                     "--r2prime-method", "r2star-minus-r2"]) == 0
    assert err_net < metrics.nrmse(load_nifti(out2 / "r2prime.nii.gz", ndim=3)[0], t["r2prime"], em)


def test_bad_stage_directory_is_a_user_error(stage, tmp_path, capsys):
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "params.json").write_text(json.dumps({"TE": [5, 10], "B0": 3, "B0_dir": [0, 0, 1], "voxel_size": [1, 1, 1]}))
    assert cli.main(["qsmci", str(bad), str(tmp_path / "o"), "--stage", "r2prime-generation"]) == 2
    assert "milliseconds" in capsys.readouterr().err
    (bad / "params.json").write_text(json.dumps({"TE": [0.005], "B0": 3, "voxel_size": [1, 1, 1]}))
    assert cli.main(["qsmci", str(bad), str(tmp_path / "o")]) == 2
    assert "B0_dir" in capsys.readouterr().err


def test_qsm_cis_own_runner_runs_and_scores_chisep(stage, tmp_path, capsys):
    """QSM-CI's runner (qsm-ci run, local runner) places the inputs, runs our run.sh, checks the
    outputs and scores them with its scorer."""
    from qsm_ci import runner

    from chisep.io import save_nifti

    algo = tmp_path / "chisep-chisepnet"
    assert cli.main(["qsmci", "--write-algorithm", str(algo), "--stage", "chi-separation"]) == 0
    h, t = stage["head"], stage["head"].truth
    src = stage["dirs"]["chi-separation"]
    truth = tmp_path / "truth"
    save_nifti(truth / "chi-para.nii.gz", t["chi_para"], h.affine)
    save_nifti(truth / "chi-dia.nii.gz", t["chi_dia"], h.affine)
    logs = []
    rc = runner.run_command([str(algo), "--runner", "local",
                             *[x for a in ("localfield", "r2prime", "chimap", "magnitude", "mask")
                               for x in (f"--{a}", str(src / qsmci.ARTIFACT_FILE[a]))],
                             "--params", str(src / "params.json"), "-o", str(tmp_path / "out"),
                             "--truth", str(truth)], log=logs.append)
    assert rc == 0, logs
    para = load_nifti(tmp_path / "out" / "chi-para.nii.gz", ndim=3)[0]
    assert metrics.nrmse(para, t["chi_para"], stage["em"]) < 30
    text = "\n".join(map(str, logs))
    scores = [float(line.split()[-1]) for line in text.splitlines() if line.strip().startswith("correlation")]
    assert len(scores) == 2 and min(scores) > 0.85               # its scorer ran on chi-para and chi-dia
