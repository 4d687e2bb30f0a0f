"""Output folders: one run's files, --overwrite, lock, umask permissions, and runs killed by signals."""
import json
import multiprocessing as mp
import os
import signal
import stat
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from chisep.io import LOCK_NAME, MANIFEST_NAME, InputError, OutputFolder, save_nifti, write_json

MAPS = {"chi_para.nii.gz", "chi_dia.nii.gz", "chi_total.nii.gz", "local_field.nii.gz", "mask.nii.gz",
        "r2prime.nii.gz", "report.json"}


def _files(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _write(o, names, value=1.0):
    for n in names:
        if n.endswith(".json"):
            write_json(o.stage / n, {"v": value})
        else:
            save_nifti(o.stage / n, np.full((4, 4, 4), value, np.float32), np.eye(4))


# ------------------------------------------------------------------ protocol, in process
def test_one_runs_files_overwrite_and_foreign_files(tmp_path):
    out = tmp_path / "out"
    with OutputFolder(out) as o:
        _write(o, ["a.nii.gz", "b.nii.gz", "report.json"])
    assert o.written == ["a.nii.gz", "b.nii.gz", "report.json"]
    assert o.message.startswith(f"wrote 3 files to {out}")
    assert set(_files(out)) == {"a.nii.gz", "b.nii.gz", "report.json", MANIFEST_NAME}
    # a second run into the folder: refused without --overwrite, before anything is written
    with pytest.raises(InputError, match="--overwrite"):
        with OutputFolder(out) as o:
            pytest.fail("entered")
    # with overwrite: the earlier run's b.nii.gz (not written again) is removed, a is replaced
    with OutputFolder(out, overwrite=True) as o:
        _write(o, ["a.nii.gz", "report.json"], 2.0)
    assert set(_files(out)) == {"a.nii.gz", "report.json", MANIFEST_NAME}
    assert o.removed == ["b.nii.gz"] and "removed 1" in o.message
    assert float(nib.load(str(out / "a.nii.gz")).get_fdata().max()) == 2.0
    assert json.loads((out / MANIFEST_NAME).read_text())["files"] == ["a.nii.gz", "report.json"]
    # a file that is not from a chisep run is never removed, even with overwrite
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="notes.txt"):
        with OutputFolder(out, overwrite=True):
            pass
    assert (out / "notes.txt").read_text() == "mine"


def test_failed_run_leaves_the_folder_as_it_was(tmp_path):
    out = tmp_path / "out"
    with OutputFolder(out) as o:
        _write(o, ["a.nii.gz", "report.json"])
    before = {f: (out / f).read_bytes() for f in _files(out)}
    with pytest.raises(RuntimeError):
        with OutputFolder(out, overwrite=True) as o:
            _write(o, ["a.nii.gz"], 5.0)
            raise RuntimeError("computation failed")
    assert {f: (out / f).read_bytes() for f in _files(out)} == before
    # a folder the run created is removed again
    new = tmp_path / "new" / "deeper"
    with pytest.raises(RuntimeError):
        with OutputFolder(new) as o:
            _write(o, ["a.nii.gz"])
            raise RuntimeError("x")
    assert not new.exists()


def test_lock_refuses_a_second_run(tmp_path):
    out = tmp_path / "out"
    with OutputFolder(out) as o:
        assert (out / LOCK_NAME).read_text() == str(os.getpid())
        with pytest.raises(InputError, match=f"another chisep run \\(pid {os.getpid()}\\)"):
            with OutputFolder(out):
                pass
        _write(o, ["a.nii.gz"])
    assert not (out / LOCK_NAME).exists() and set(_files(out)) == {"a.nii.gz", MANIFEST_NAME}


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_permissions_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        with OutputFolder(tmp_path / "out") as o:
            _write(o, ["a.nii.gz", "report.json"])
    finally:
        os.umask(old)
    for f in ("a.nii.gz", "report.json"):
        assert stat.S_IMODE((tmp_path / "out" / f).stat().st_mode) == mode


# ------------------------------------------------------------------ killed runs (real `chisep run`)
@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """Processed maps of a 24^3 block of a small simulated head (a fast regularized run)."""
    from chisep.simulate import simulate_head
    d = tmp_path_factory.mktemp("kill")
    h = simulate_head(seed=4, size="small")
    sl = (slice(20, 44),) * 3
    aff = h.affine.copy()
    aff[:3, 3] = h.affine[:3, :3] @ np.array([20, 20, 20]) + h.affine[:3, 3]
    for name in ("local_field", "r2prime", "mask"):
        save_nifti(d / f"{name}.nii.gz", h.truth[name][sl], aff,
                   dtype=np.uint8 if name == "mask" else np.float32)
    return d


def _argv(d, out, overwrite):
    return ["run", "--local-field", str(d / "local_field.nii.gz"), "--field-unit", "ppm", "--b0", "3",
            "--mask", str(d / "mask.nii.gz"), "--r2prime", str(d / "r2prime.nii.gz"),
            "--method", "regularized", "--out", str(out), "--progress", "none"] + (["--overwrite"] if overwrite else [])


def _child(argv, point, conn, errfile):
    """Run the CLI; at ``point`` tell the parent (marker) and wait to be signalled."""
    import sys
    sys.stderr = open(errfile, "w", buffering=1)     # (pytest's capture is not ours to write to)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    import chisep.commands.run as run_cmd
    import chisep.io as io
    from chisep.cli import main

    def wait():
        conn.send(point)
        time.sleep(20)          # interrupted by the parent's signal
    if point == "compute":
        orig_sep = run_cmd.separate

        def separate(*a, **k):
            wait()
            return orig_sep(*a, **k)
        run_cmd.separate = separate
    elif point == "writing":
        orig_save, n = io.save_nifti, [0]

        def save_nifti(*a, **k):
            r = orig_save(*a, **k)
            n[0] += 1
            if n[0] == 2:
                wait()
            return r
        io.save_nifti = save_nifti
    elif point == "commit":
        orig_commit = io.OutputFolder._commit

        def _commit(self):
            conn.send(point)     # signals are held back here: the parent's signal waits
            time.sleep(0.5)
            return orig_commit(self)
        io.OutputFolder._commit = _commit
    rc = main(argv)
    sys.stderr.flush()
    os._exit(rc)


def _killed_run(d, out, overwrite, point, sig, tmp_path):
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    err = str(tmp_path / f"err_{point}_{int(sig)}.txt")
    p = ctx.Process(target=_child, args=(_argv(d, out, overwrite), point, child, err))
    p.start()
    assert parent.poll(60), "the run never reached the marker"
    assert parent.recv() == point
    os.kill(p.pid, sig)
    p.join(60)
    return p.exitcode, Path(err).read_text()


def _earlier_run(d, out):
    from chisep.cli import main
    assert main(_argv(d, out, False)) == 0
    (out / "qsm.nii.gz").write_bytes(b"x")   # an extra file of the earlier run, listed in its manifest
    m = json.loads((out / MANIFEST_NAME).read_text())
    m["files"].append("qsm.nii.gz")
    (out / MANIFEST_NAME).write_text(json.dumps(m))
    return {f: (out / f).read_bytes() for f in _files(out)}


def test_signals_never_leave_a_partial_map_set_and_the_next_run_cleans_up(processed, tmp_path):
    """Must-show: SIGTERM/SIGINT while computing, while writing and during the final moves; SIGKILL
    while writing. The folder holds the earlier run's files or the complete new set, never a mix;
    staging folders are removed on the signal (or, after SIGKILL, by the next run)."""
    d = processed
    earlier_dir = tmp_path / "earlier"
    earlier = _earlier_run(d, earlier_dir)
    cases = [("compute", signal.SIGTERM, False), ("compute", signal.SIGINT, True),
             ("writing", signal.SIGTERM, True), ("writing", signal.SIGINT, False),
             ("commit", signal.SIGTERM, True), ("commit", signal.SIGINT, False)]
    for point, sig, overwrite in cases:
        out = tmp_path / f"out_{point}_{int(sig)}"
        if overwrite:
            import shutil
            shutil.copytree(earlier_dir, out)
        rc, err = _killed_run(d, out, overwrite, point, sig, tmp_path)
        assert rc == (143 if sig == signal.SIGTERM else 130), (point, sig, rc, err)
        assert "Traceback" not in err
        staging = [p for p in out.glob(".staging_*")] if out.exists() else []
        assert not staging and not (out / LOCK_NAME).exists()
        if point == "commit":     # the moves completed before the signal was let through
            assert set(_files(out)) == MAPS | {MANIFEST_NAME}, (point, _files(out))
            assert "already finished" in err and "wrote 7 files" in err
        elif overwrite:           # the earlier run's files, byte for byte
            assert {f: (out / f).read_bytes() for f in _files(out)} == earlier, (point, sig)
            assert "nothing was written" in err
        else:                     # a folder the run created is gone again
            assert not out.exists(), (point, sig, _files(out))
            assert "nothing was written" in err
    # SIGKILL while writing: the staging folder stays behind, but never in place of the maps ...
    out = tmp_path / "out_kill"
    rc, err = _killed_run(d, out, False, "writing", signal.SIGKILL, tmp_path)
    assert rc == -signal.SIGKILL
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == []
    assert list(out.glob(".staging_*"))
    # ... and the next run removes it (the kernel released the dead run's lock) and writes its maps
    from chisep.cli import main
    assert main(_argv(d, out, False)) == 0
    assert set(_files(out)) == MAPS | {MANIFEST_NAME}


def test_cli_warns_about_assumed_field_and_replaces_only_with_overwrite(processed, tmp_path, capsys):
    """A default that matters is printed and written to report.json; a second run into the folder
    needs --overwrite, which replaces the earlier run's files and says so."""
    from chisep.cli import main
    d, out = processed, tmp_path / "o"
    argv = [a for a in _argv(d, out, False) if a not in ("--b0", "3")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "warning: field strength not given" in err and "assumed 3 T" in err
    rep = json.loads((out / "report.json").read_text())
    assert any("assumed 3 T" in w for w in rep["warnings"]) and rep["b0_t"] == 3.0
    assert set(rep["outputs"]) == MAPS and set(_files(out)) == MAPS | {MANIFEST_NAME}
    assert f"wrote 7 files to {out}" in err
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite", "--b0", "7"]) == 0
    err = capsys.readouterr().err
    assert "replaced the earlier run's files" in err and "warning" not in err
    rep = json.loads((out / "report.json").read_text())
    assert rep["b0_t"] == 7.0 and rep["warnings"] == []
