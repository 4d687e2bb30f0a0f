"""Table of bad inputs and faults: each exits with code 2, names the file/option, leaves --out as it was.

One small simulated head is written once per module; every row builds its bad input from those
files and runs the real CLI (`chisep run`, `preprocess` or `lesions`). The output folder of each
row holds an earlier run's files and `--overwrite` is passed, so "untouched" is checked on a
folder that the run would have been allowed to replace had its inputs been good.
"""
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from chisep.cli import main
from chisep.io import LOCK_NAME, MANIFEST_NAME, save_nifti
from chisep.simulate import simulate_head, write_simulation


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    head = simulate_head(seed=11, size="small")
    d = root / "data"
    write_simulation(head, d)
    return root, d, head


def _img(path):
    img = nib.load(str(path))
    return np.asarray(img.dataobj, dtype=np.float32), img.affine


def _save(path, arr, affine, sidecar=None, dtype=np.float32):
    """A NIfTI (+ sidecar) for the CLI's argument list (a str)."""
    return str(save_nifti(path, arr, affine, dtype=dtype, sidecar=sidecar))


def _sidecar(d, name):
    return json.loads((d / f"{name}.json").read_text())


def _shifted(affine, mm=5.0):
    a = np.array(affine, float)
    a[0, 3] += mm
    return a


class Ctx:
    """Paths and helpers for one row (everything written under ``tmp``)."""

    def __init__(self, root, d, head, tmp):
        self.d, self.head, self.tmp = d, head, tmp
        self.mag, self.phase, self.se = str(d / "gre_mag.nii.gz"), str(d / "gre_phase.nii.gz"), str(d / "se_mag.nii.gz")
        self.te = [str(t) for t in head.te_s]

    def f(self, name):
        return str(self.tmp / name)

    def variant(self, src, name, fn=None, sidecar_edit=None, sidecar=True, affine=None):
        """Copy ``src`` (gre_mag/gre_phase/se_mag) to ``name`` with its data and/or sidecar changed."""
        arr, aff = _img(self.d / f"{src}.nii.gz")
        if fn is not None:
            arr = fn(arr)
        sc = _sidecar(self.d, src) if sidecar else None
        if sc is not None and sidecar_edit:
            sidecar_edit(sc)
        return _save(self.tmp / name, arr, aff if affine is None else affine, sc)

    def truth(self, name):
        return str(self.d / "truth" / f"{name}.nii.gz")

    def run_raw(self, *extra, mag=None, phase=None):
        return ["run", "--gre-mag", mag or self.mag, "--gre-phase", phase or self.phase, *extra]

    def run_proc(self, *extra, field=None, mask=None):
        return ["run", "--local-field", field or self.truth("local_field"), "--field-unit", "ppm",
                "--mask", mask or self.truth("mask"), "--r2prime", self.truth("r2prime"), *extra]


def _set(key, value):
    def edit(sc):
        sc[key] = value
    return edit


def _truncated(c):
    raw = Path(c.phase).read_bytes()
    p = c.f("trunc.nii.gz")
    Path(p).write_bytes(raw[: len(raw) // 3])
    return c.run_raw(phase=p, ), p


def _pickle_pth(c):
    import pickle

    marker = c.tmp / "PWNED"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    p = c.f("evil.pth")
    with open(p, "wb") as fh:
        pickle.dump({"state_dict": Evil()}, fh)
    c.marker = marker
    return c.run_proc("--method", "chisepnet-r2prime", "--weights", p), p


def _corrupt_pth(c):
    import torch
    p = c.f("corrupt.pth")
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, p)
    raw = Path(p).read_bytes()
    Path(p).write_bytes(raw[: len(raw) // 2])
    return c.run_proc("--method", "chisepnet-r2prime", "--weights", p), p


def _broken_safetensors(c):
    p = c.f("broken.safetensors")
    Path(p).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\0" * 64)
    return c.run_proc("--method", "chisepnet-r2prime", "--weights", p), p


def _wrong_kind_weights(c):
    from chisep.network.weights import builtin_path
    p = builtin_path("r2prime-from-r2star")
    if not p.is_file():
        pytest.skip("built-in weights not installed")
    return c.run_proc("--method", "chisepnet-r2prime", "--weights", str(p)), str(p)


def _single_echo(c):
    m = c.variant("gre_mag", "m1.nii.gz", lambda a: a[..., :1], _set("EchoTime", [c.head.te_s[0]]))
    p = c.variant("gre_phase", "p1.nii.gz", lambda a: a[..., :1], _set("EchoTime", [c.head.te_s[0]]))
    return c.run_raw(mag=m, phase=p), m


def _swapped_with_sidecars(c):
    return c.run_raw("--se-mag", c.se, mag=c.phase, phase=c.mag), c.phase


def _swapped_no_sidecars(c):
    m = c.variant("gre_phase", "mag_is_phase.nii.gz", sidecar=False)
    p = c.variant("gre_mag", "phase_is_mag.nii.gz", sidecar=False)
    return c.run_raw("--te", *c.te, mag=m, phase=p), m


def _phase_is_magnitude(c):
    p = c.variant("gre_mag", "phase_copy_of_mag.nii.gz", sidecar=False)
    return c.run_raw("--se-mag", c.se, phase=p), p


def _mag_is_phase_0_2pi(c):
    m = c.variant("gre_phase", "mag_0_2pi.nii.gz", lambda a: a + np.pi, sidecar=False)
    return c.run_raw("--te", *c.te, mag=m), m


def _gre_dir_empty(c):
    e = c.tmp / "empty_dir"
    e.mkdir()
    return c.run_raw(mag=str(e), phase=str(e)), str(e)


def _gre_dir_no_dicom(c):
    e = c.tmp / "txt_dir"
    e.mkdir()
    (e / "notes.txt").write_text("hello")
    return c.run_raw(mag=str(e), phase=str(e)), str(e)


def _locked(c):
    out = c.out
    fd = os.open(str(out / LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"424242")
    c.cleanup = lambda: (os.unlink(out / LOCK_NAME), os.close(fd))
    return c.run_proc("--method", "regularized"), "424242"


def _out_is_file(c):
    p = c.tmp / "out_file"
    p.write_text("x")
    c.out = p
    return c.run_proc("--method", "regularized", out=False) + ["--out", str(p)], str(p)


def _out_below_file(c):
    p = c.tmp / "a_file"
    p.write_text("x")
    c.out = p
    return c.run_proc("--method", "regularized") + ["--out", str(p / "sub" / "dir")], str(p)


def _out_not_writable(c):
    if not Path("/sys").is_dir():
        pytest.skip("no read-only location to test with")
    c.out = None
    return c.run_proc("--method", "regularized") + ["--out", "/sys/chisep_out_test"], "/sys/chisep_out_test"


def _out_foreign(c):
    (c.out / "my_notes.txt").write_text("do not delete")
    return c.run_proc("--method", "regularized"), "my_notes.txt"


def _out_earlier_run_no_overwrite(c):
    c.no_overwrite = True
    return c.run_proc("--method", "regularized"), "--overwrite"


def _lesion_prob(c):
    arr, aff = _img(c.truth("lesions"))
    p = _save(c.tmp / "lesion_prob.nii.gz", (arr > 0) * 0.7, aff)
    return _lesions_cmd(c, p), p


def _lesions_cmd(c, lesions, maps=None):
    m = maps or c.maps_dir
    c.csv = c.tmp / "lesions.csv"
    return ["lesions", "--maps", str(m), "--lesions", lesions, "--out", str(c.csv)]


def _lesion_maps_file(c):
    return _lesions_cmd(c, c.truth("lesions"), maps=c.mag), c.mag


def _lesion_maps_missing(c):
    p = str(c.tmp / "no_such_maps")
    return _lesions_cmd(c, c.truth("lesions"), maps=p), p


def _lesion_other_grid(c):
    arr, aff = _img(c.truth("lesions"))
    p = _save(c.tmp / "lesion_shift.nii.gz", arr, _shifted(aff), dtype=np.int16)
    return _lesions_cmd(c, p), p


def _shift(c, src, name):
    arr, aff = _img(src)
    return _save(c.tmp / name, arr, _shifted(aff))


# (id, build(c) -> (argv, text that must appear in the message), more text that must appear)
ROWS = [
    # --- magnitude / phase identity
    ("mag_negative", lambda c: (c.run_raw("--se-mag", c.se, mag=(p := c.variant("gre_mag", "neg.nii.gz", lambda a: a - 0.5 * a.max()))), p), "negative"),
    ("swapped_sidecars", _swapped_with_sidecars, "phase image"),
    ("swapped_no_sidecars", _swapped_no_sidecars, "negative"),
    ("phase_is_magnitude", _phase_is_magnitude, "magnitude"),
    ("mag_is_phase_0_2pi", _mag_is_phase_0_2pi, "does not decay"),
    ("phase_sidecar_says_M", lambda c: (c.run_raw(phase=(p := c.variant("gre_phase", "ph_M.nii.gz", sidecar_edit=_set("ImageType", ["ORIGINAL", "PRIMARY", "M"])))), p), "magnitude image"),
    # --- phase units
    ("phase_ambiguous_x30", lambda c: (c.run_raw(phase=(p := c.variant("gre_phase", "ph30.nii.gz", lambda a: a * 30))), p), "--phase-unit"),
    ("phase_unit_rad_on_degrees", lambda c: (c.run_raw("--phase-unit", "rad", phase=(p := c.variant("gre_phase", "deg.nii.gz", np.rad2deg))), p), "not radians"),
    ("phase_unit_int_on_floats", lambda c: (c.run_raw("--phase-unit", "int", phase=c.phase), c.phase), "not integers"),
    ("phase_unit_unknown", lambda c: (c.run_raw("--phase-unit", "furlong"), "--phase-unit"), "int12"),
    ("phase_unit_int8_too_small", lambda c: (c.run_raw("--phase-unit", "int8", phase=(p := c.variant("gre_phase", "i12.nii.gz", lambda a: np.round((a + np.pi) / (2 * np.pi) * 4095)))), p), "8-bit"),
    ("phase_sidecar_unit_bad", lambda c: (c.run_raw(phase=(p := c.variant("gre_phase", "grad.nii.gz", sidecar_edit=_set("PhaseUnit", "gradians")))), p), "PhaseUnit"),
    ("phase_all_zero", lambda c: (c.run_raw(phase=(p := c.variant("gre_phase", "zero.nii.gz", np.zeros_like))), p), "zero everywhere"),
    # --- sidecar values
    ("phasesign_5", lambda c: (c.run_raw(mag=(p := c.variant("gre_mag", "ps5.nii.gz", sidecar_edit=_set("PhaseSign", 5)))), p.replace(".nii.gz", ".json")), "PhaseSign"),
    ("phasesign_text", lambda c: (c.run_raw(mag=(p := c.variant("gre_mag", "pst.nii.gz", sidecar_edit=_set("PhaseSign", "minus")))), p.replace(".nii.gz", ".json")), "+1"),
    ("echotime_text", lambda c: (c.run_raw(mag=(p := c.variant("gre_mag", "tet.nii.gz", sidecar_edit=_set("EchoTime", ["a", "b", "c", "d", "e"])))), p.replace(".nii.gz", ".json")), "not a number"),
    ("echotime_ms", lambda c: (c.run_raw(mag=(p := c.variant("gre_mag", "tems.nii.gz", sidecar_edit=_set("EchoTime", [5, 11, 17, 23, 29])))), p.replace(".nii.gz", ".json")), "milliseconds"),
    ("echotime_count", lambda c: (c.run_raw(mag=(p := c.variant("gre_mag", "te3.nii.gz", sidecar_edit=_set("EchoTime", [0.005, 0.011, 0.017])))), p.replace(".nii.gz", ".json")), "3 echo times"),
    ("echotime_decreasing", lambda c: (c.run_raw(mag=(p := c.variant("gre_mag", "tedec.nii.gz", sidecar_edit=_set("EchoTime", [0.029, 0.023, 0.017, 0.011, 0.005])))), p.replace(".nii.gz", ".json")), "increasing"),
    ("echotime_missing", lambda c: (c.run_raw(mag=(p := c.variant("gre_mag", "nosc.nii.gz", sidecar=False)), phase=c.variant("gre_phase", "nosc_ph.nii.gz", sidecar=False)), p), "EchoTime"),
    ("b0dir_zero", lambda c: (c.run_raw(mag=(p := c.variant("gre_mag", "b0z.nii.gz", sidecar_edit=_set("B0Direction", [0, 0, 0])))), p.replace(".nii.gz", ".json")), "zero length"),
    ("b0dir_text", lambda c: (c.run_raw(mag=(p := c.variant("gre_mag", "b0t.nii.gz", sidecar_edit=_set("B0Direction", "z")))), p.replace(".nii.gz", ".json")), "3 numbers"),
    ("fieldstrength_text", lambda c: (c.run_raw(mag=(p := c.variant("gre_mag", "fst.nii.gz", sidecar_edit=_set("MagneticFieldStrength", "3T")))), p.replace(".nii.gz", ".json")), "not a number"),
    ("fieldstrength_negative", lambda c: (c.run_raw(mag=(p := c.variant("gre_mag", "fsn.nii.gz", sidecar_edit=_set("MagneticFieldStrength", -3)))), p.replace(".nii.gz", ".json")), "positive"),
    ("sidecar_not_json", lambda c: (c.run_raw(mag=(p := c.variant("gre_mag", "badjson.nii.gz", sidecar=False))), (Path(p.replace(".nii.gz", ".json")).write_text("{EchoTime: 5"), p.replace(".nii.gz", ".json"))[1]), "JSON"),
    ("sidecar_a_list", lambda c: (c.run_raw(mag=(p := c.variant("gre_mag", "listjson.nii.gz", sidecar=False))), (Path(p.replace(".nii.gz", ".json")).write_text("[1, 2]"), p.replace(".nii.gz", ".json"))[1]), "not an object"),
    # --- arguments
    ("b0_zero_raw", lambda c: (c.run_raw("--b0", "0"), "--b0"), "positive"),
    ("b0_negative_raw", lambda c: (c.run_raw("--b0", "-3"), "--b0"), "positive"),
    ("b0_zero_processed", lambda c: (c.run_proc("--b0", "0", "--method", "regularized"), "--b0"), "positive"),
    ("te_arg_ms", lambda c: (c.run_raw("--te", "5", "11", "17", "23", "29"), "--te"), "milliseconds"),
    ("te_arg_count", lambda c: (c.run_raw("--te", "0.005", "0.011"), "--te"), "2 echo times"),
    ("field_rad_without_te", lambda c: (["run", "--local-field", c.truth("local_field"), "--field-unit", "rad", "--mask", c.truth("mask"), "--r2prime", c.truth("r2prime")], "--field-te"), "echo time"),
    ("field_unit_missing", lambda c: (["run", "--local-field", c.truth("local_field"), "--mask", c.truth("mask"), "--r2prime", c.truth("r2prime")], "--field-unit"), "hz"),
    ("raw_with_processed_option", lambda c: (c.run_raw("--r2star", c.truth("r2star")), "--r2star"), "processed"),
    ("se_and_r2", lambda c: (c.run_raw("--se-mag", c.se, "--r2", c.truth("r2")), "--r2"), "not both"),
    ("mag_without_phase", lambda c: (["run", "--gre-mag", c.mag], "--gre-phase"), "phase"),
    ("r2prime_method_without_r2", lambda c: (c.run_raw("--method", "chisepnet-r2prime"), "--se-mag"), "chisepnet-r2star"),
    ("cuda_regularized", lambda c: (c.run_proc("--method", "regularized", "--device", "cuda"), "--device"), "CPU"),
    ("cuda_network_unavailable", lambda c: (c.run_proc("--method", "chisepnet-r2prime", "--device", "cuda") if not _cuda() else pytest.skip("CUDA present"), "cuda"), "not available"),
    # --- grids
    ("se_shifted_5mm", lambda c: (c.run_raw("--se-mag", (p := c.variant("se_mag", "se_shift.nii.gz", affine=_shifted(c.head.affine)))), p), "5 mm"),
    ("r2_shifted_5mm", lambda c: (c.run_raw("--r2", (p := _shift(c, c.truth("r2"), "r2_shift.nii.gz"))), p), "not on the grid"),
    ("mask_shifted_5mm", lambda c: (c.run_raw("--se-mag", c.se, "--mask", (p := _shift(c, c.truth("mask"), "mask_shift.nii.gz"))), p), "not on the grid"),
    ("mask_shifted_processed", lambda c: (c.run_proc("--method", "regularized", mask=(p := _shift(c, c.truth("mask"), "mask_shift2.nii.gz"))), p), "not on the grid"),
    ("phase_shifted", lambda c: (c.run_raw(phase=(p := c.variant("gre_phase", "ph_shift.nii.gz", affine=_shifted(c.head.affine, 0.5)))), p), "tolerance 0.01 mm"),
    ("phase_three_echoes", lambda c: (c.run_raw(phase=(p := c.variant("gre_phase", "ph3.nii.gz", lambda a: a[..., :3], _set("EchoTime", [0.005, 0.011, 0.017])))), p), "same echoes"),
    ("mask_probabilistic", lambda c: (c.run_raw("--se-mag", c.se, "--mask", (p := _save(c.tmp / "pmask.nii.gz", _img(c.truth("mask"))[0] * 0.8 + 0.1 * (_img(c.truth("mask"))[0] > 0) * np.linspace(0, 1, 64)[:, None, None], c.head.affine))), p), "threshold"),
    ("mask_labels", lambda c: (c.run_raw("--se-mag", c.se, "--mask", (p := _save(c.tmp / "lmask.nii.gz", _img(c.truth("tissue"))[0], c.head.affine))), p), "binary"),
    ("single_echo", _single_echo, "only 1 echo"),
    # --- files
    ("missing_file", lambda c: (c.run_raw(mag=c.f("nope.nii.gz")), "nope.nii.gz"), "not found"),
    ("gre_empty_folder", _gre_dir_empty, "empty folder"),
    ("gre_folder_without_dicom", _gre_dir_no_dicom, "without DICOM"),
    ("truncated_nifti", _truncated, "readable"),
    ("nan_in_mag", lambda c: (c.run_raw(mag=(p := c.variant("gre_mag", "nan.nii.gz", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 7, np.nan, a)))), p), "NaN"),
    # --- weights
    ("broken_safetensors", _broken_safetensors, "not readable as chi-sepnet weights"),
    ("corrupt_pth", _corrupt_pth, "not readable as chi-sepnet weights"),
    ("pickled_pth", _pickle_pth, "never runs"),
    ("weights_wrong_kind", _wrong_kind_weights, "weights"),
    ("weights_is_folder", lambda c: (c.run_proc("--method", "chisepnet-r2prime", "--weights", str(c.tmp)), str(c.tmp)), "folder"),
    # --- output folder
    ("out_is_file", _out_is_file, "is a file"),
    ("out_below_file", _out_below_file, "is a file"),
    ("out_not_writable", _out_not_writable, "cannot"),
    ("out_foreign_files", _out_foreign, "not from an earlier chisep run"),
    ("out_earlier_run_no_overwrite", _out_earlier_run_no_overwrite, "earlier run"),
    ("out_locked", _locked, "another chisep run"),
    # --- preprocess command
    ("preprocess_se_shifted", lambda c: (["preprocess", "--gre-mag", c.mag, "--gre-phase", c.phase, "--se-mag", (p := c.variant("se_mag", "se_shift_pp.nii.gz", affine=_shifted(c.head.affine)))], p), "not on the grid"),
    ("preprocess_b0_negative", lambda c: (["preprocess", "--gre-mag", c.mag, "--gre-phase", c.phase, "--b0", "-1"], "--b0"), "positive"),
    ("preprocess_swapped", lambda c: (["preprocess", "--gre-mag", c.phase, "--gre-phase", c.mag], c.phase), "phase image"),
    # --- lesions command
    ("lesions_probability_map", _lesion_prob, "threshold"),
    ("lesions_maps_is_file", _lesion_maps_file, "is a file"),
    ("lesions_maps_missing", _lesion_maps_missing, "not found"),
    ("lesions_other_grid", _lesion_other_grid, "another grid"),
    ("lesions_out_below_file", lambda c: (_lesions_cmd(c, c.truth("lesions"))[:-1] + [str(Path(c.mag) / "t.csv")], c.mag), "is a file"),
]


def _cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def _snapshot(folder: Path):
    if folder is None or not folder.exists():
        return None
    if folder.is_file():
        return ("file", folder.read_bytes())
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(folder))] = (p.is_dir(), st.st_mtime_ns,
                                           None if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def _earlier_run(folder: Path):
    """A folder holding an earlier chisep run's files (as a committed run leaves it)."""
    folder.mkdir(parents=True)
    (folder / "chi_para.nii.gz").write_bytes(b"earlier run")
    (folder / "qsm.nii.gz").write_bytes(b"earlier run qsm")
    (folder / "report.json").write_text("{}")
    (folder / MANIFEST_NAME).write_text(json.dumps({"files": ["chi_para.nii.gz", "qsm.nii.gz", "report.json"]}))


def test_table_has_enough_rows():
    assert len(ROWS) >= 40 and len({r[0] for r in ROWS}) == len(ROWS)


@pytest.fixture(scope="module")
def maps_dir(data):
    """A `chisep run`-like maps folder from the truth (for the lesions rows)."""
    root, d, head = data
    m = root / "maps"
    m.mkdir()
    for k in ("chi_para", "chi_dia", "chi_total", "mask"):
        shutil.copy(d / "truth" / f"{k}.nii.gz", m / f"{k}.nii.gz")
    return m


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_exits_2_names_the_file_and_leaves_out_untouched(row, data, maps_dir, tmp_path, capsys):
    name, build, text = row
    root, d, head = data
    c = Ctx(root, d, head, tmp_path)
    c.maps_dir = maps_dir
    c.out = tmp_path / "out"
    _earlier_run(c.out)
    c.no_overwrite = False
    c.cleanup = None
    c.csv = None

    def run_proc(*extra, field=None, mask=None, out=True):
        return Ctx.run_proc(c, *extra, field=field, mask=mask)
    c.run_proc = run_proc
    argv, names = build(c)
    if argv[0] in ("run", "preprocess") and "--out" not in argv:
        argv = argv + ["--out", str(c.out)] + ([] if c.no_overwrite else ["--overwrite"])
    argv = argv + ["--progress", "none"] if argv[0] in ("run", "preprocess") else argv
    out_dir = c.out if isinstance(c.out, Path) else None
    before = _snapshot(out_dir)
    try:
        capsys.readouterr()
        rc = main(argv)
        err = capsys.readouterr().err
        after = _snapshot(out_dir)
    finally:
        if c.cleanup:
            c.cleanup()
    assert rc == 2, f"{name}: exit {rc}; stderr: {err}"
    assert "Traceback" not in err
    assert str(names) in err, f"{name}: message does not name {names!r}: {err}"
    assert text.lower() in err.lower(), f"{name}: message lacks {text!r}: {err}"
    assert after == before, f"{name}: output folder changed"
    if c.csv is not None:
        assert not c.csv.exists()
    if getattr(c, "marker", None) is not None:
        assert not c.marker.exists(), "a pickled payload ran"
    if name == "corrupt_pth":
        assert "can still be loaded" not in err and "weights_only=False" not in err
