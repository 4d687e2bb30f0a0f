"""DICOM input: multi-echo GRE/SE series written here with pydicom, converted by dcm2niix.

Every check goes through the DICOM geometry: each written pixel (slice k, row r, column c) has a
patient (LPS) position from ImagePositionPatient/ImageOrientationPatient/PixelSpacing; the loaded
affine must send exactly one voxel (i, j, k) to that position (as RAS), and that voxel must hold the
written value.
"""
import tempfile

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("dcm2niix")

from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from chisep.dicom import is_dicom_dir, load_dicom_echoes, phase_to_radians  # noqa: E402
from chisep.io import InputError  # noqa: E402

NX, NY, NZ = 16, 12, 6                 # columns, rows, slices
TE_MS = (5.0, 11.0, 17.0, 23.0)
ROW_SP, COL_SP, SLICE_SP = 1.1, 0.9, 2.0   # PixelSpacing = [ROW_SP, COL_SP]; slice spacing (mm)
ORIGIN = np.array([-7.0, 12.5, -30.0])     # LPS of the first pixel of the first slice
AXIAL = (1, 0, 0, 0, 1, 0)
LPS2RAS = np.diag([-1.0, -1.0, 1.0])
MAG = ["ORIGINAL", "PRIMARY", "M", "ND"]
PHASE = ["ORIGINAL", "PRIMARY", "P", "ND"]


def _grid():
    return np.meshgrid(np.arange(NZ), np.arange(NY), np.arange(NX), indexing="ij")   # k, r, c


def _r2s_truth():
    k, r, c = _grid()
    return 10.0 + 2.0 * c + 1.5 * r + 3.0 * k          # Hz, varies along every axis


def _mag_stored(te_ms, rate=None, s0=4000.0):
    rate = _r2s_truth() if rate is None else rate
    return np.stack([np.round(s0 * np.exp(-t * 1e-3 * rate)) for t in te_ms])      # (E, NZ, NY, NX)


def _phase_truth(te_ms):
    """Wrapped phase (rad) in [-pi, pi): a frequency map (Hz) times TE plus an offset."""
    k, r, c = _grid()
    f_hz = -40.0 + 6.0 * c + 3.0 * r - 5.0 * k
    return np.stack([np.angle(np.exp(1j * (2 * np.pi * f_hz * t * 1e-3 + 0.3))) for t in te_ms])


def _siemens_phase_stored(phi):
    # Siemens convention: 12-bit stored 0..4095, RescaleSlope 2, RescaleIntercept -4096
    return np.mod(np.round((phi + np.pi) / (2 * np.pi) * 4096), 4096)


def _write_series(folder, stored, te_ms, image_type, series_number, *, orientation=AXIAL,
                  slope=1.0, intercept=0.0, uid_per_echo=False, echo_order=None,
                  sequence="GR", write_te=True, nrows=NY):
    """One file per slice per echo (MR Image Storage); ``stored`` is (E, NZ, NY, NX) integers."""
    folder.mkdir(parents=True, exist_ok=True)
    study, frame = generate_uid(), generate_uid()
    series_uid = generate_uid()
    row_dir, col_dir = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row_dir, col_dir)
    order = range(len(te_ms)) if echo_order is None else echo_order
    for e in order:
        uid = generate_uid() if uid_per_echo else series_uid
        for k in range(NZ):
            name = folder / f"s{series_number}_e{e}_k{k}.dcm"
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = FileDataset(str(name), {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID = meta.MediaStorageSOPClassUID
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.Modality, ds.Manufacturer = "MR", "SIEMENS"
            ds.PatientName, ds.PatientID, ds.PatientPosition = "Phantom", "0", "HFS"
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, uid, frame
            ds.SeriesNumber, ds.AcquisitionNumber = series_number, 1
            ds.InstanceNumber = e * NZ + k + 1
            ds.ImageType = image_type
            ds.SeriesDescription = ds.ProtocolName = f"{sequence.lower()}_me"
            ds.ScanningSequence, ds.SequenceVariant = sequence, "SP"
            if write_te:
                ds.EchoTime = te_ms[e]
            ds.EchoNumbers, ds.RepetitionTime = e + 1, 40.0 if sequence == "GR" else 2000.0
            ds.MagneticFieldStrength, ds.ImagingFrequency = 3.0, 127.7
            ds.ImageOrientationPatient = [float(v) for v in orientation]
            ds.ImagePositionPatient = [float(v) for v in ORIGIN + normal * (k * SLICE_SP)]
            ds.PixelSpacing = [ROW_SP, COL_SP]
            ds.SliceThickness = SLICE_SP
            ds.Rows, ds.Columns = nrows, NX
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
            ds.PixelData = stored[e, k, :nrows].astype(np.uint16).tobytes()
            ds.save_as(str(name), enforce_file_format=True)


def _index_map(vol, orientation):
    """(k, r, c) of every written pixel -> loaded voxel (i, j, kk), through the affine."""
    row_dir, col_dir = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row_dir, col_dir)
    k, r, c = _grid()
    lps = (ORIGIN + c[..., None] * COL_SP * row_dir + r[..., None] * ROW_SP * col_dir
           + k[..., None] * SLICE_SP * normal)
    ras = lps @ LPS2RAS.T
    ijk = (ras - vol["affine"][:3, 3]) @ np.linalg.inv(vol["affine"][:3, :3]).T
    idx = np.round(ijk).astype(int)
    # every written pixel centre lands exactly on a voxel centre, inside the grid, one-to-one
    np.testing.assert_allclose(ijk, idx, atol=1e-3)
    shape = vol["data"].shape[:3]
    assert shape == (NX, NY, NZ) or sorted(shape) == sorted((NX, NY, NZ))
    for ax in range(3):
        assert idx[..., ax].min() >= 0 and idx[..., ax].max() < shape[ax]
    assert len({tuple(v) for v in idx.reshape(-1, 3)}) == NX * NY * NZ
    return idx[..., 0], idx[..., 1], idx[..., 2]


def _expected_affine_axes(orientation):
    row_dir, col_dir = np.array(orientation[:3], float), np.array(orientation[3:], float)
    return [LPS2RAS @ row_dir * COL_SP, LPS2RAS @ col_dir * ROW_SP,
            LPS2RAS @ np.cross(row_dir, col_dir) * SLICE_SP]


def _check_affine(vol, orientation):
    """The affine's columns are the DICOM axes (as RAS, scaled by spacing) up to sign/order."""
    cols = [vol["affine"][:3, a] for a in range(3)]
    for axis in _expected_affine_axes(orientation):
        assert min(min(np.linalg.norm(c - axis), np.linalg.norm(c + axis)) for c in cols) < 1e-4


def _fit_rate(data, te_s):
    te = np.asarray(te_s)
    A = np.stack([np.ones_like(te), -te], 1)
    coef = np.linalg.lstsq(A, np.log(data.reshape(-1, len(te))).T, rcond=None)[0]
    return coef[1].reshape(data.shape[:3])


def test_multi_echo_gre_magnitude(tmp_path, monkeypatch):
    d = tmp_path / "mag"
    stored = _mag_stored(TE_MS)
    _write_series(d, stored, TE_MS, MAG, 3)
    assert is_dicom_dir(d) and is_dicom_dir(tmp_path)          # found at any depth
    # the dcm2niix temp folder is removed afterwards
    tdir = tmp_path / "tmp"
    tdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tdir))
    vol = load_dicom_echoes(d)
    assert list(tdir.iterdir()) == []
    assert vol["data"].dtype == np.float32 and vol["data"].shape[-1] == 4 and not vol["is_phase"]
    assert vol["te_s"] == pytest.approx([t * 1e-3 for t in TE_MS], abs=1e-9)
    assert vol["b0_t"] == pytest.approx(3.0)
    assert vol["imaging_frequency_mhz"] == pytest.approx(127.7)
    assert vol["image_type"][:4] == MAG and vol["phase_scaling"] is None
    assert len(vol["sidecars"]) == 4 and [s["EchoTime"] for s in vol["sidecars"]] == vol["te_s"]
    _check_affine(vol, AXIAL)
    i, j, kk = _index_map(vol, AXIAL)
    for e in range(4):
        np.testing.assert_array_equal(vol["data"][i, j, kk, e], stored[e])
    # R2* from a log-linear fit of the loaded magnitude is the truth, voxel by voxel
    r2s = _fit_rate(vol["data"], vol["te_s"])
    err = r2s[i, j, kk] - _r2s_truth()
    assert np.abs(err).max() < 0.2 and abs(err.mean()) < 0.02


def test_double_oblique_geometry_and_echo_order(tmp_path):
    a, b = np.deg2rad(20.0), np.deg2rad(-12.0)
    rot = (np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
           @ np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]]))
    orient = tuple(np.concatenate([rot[:, 0], rot[:, 1]]).round(6))
    d = tmp_path / "obl"
    stored = _mag_stored(TE_MS)
    # one SeriesInstanceUID per echo, files written last echo first
    _write_series(d, stored, TE_MS, MAG, 4, orientation=orient, uid_per_echo=True, echo_order=[3, 1, 0, 2])
    vol = load_dicom_echoes(d, kind="magnitude")
    assert vol["te_s"] == pytest.approx([t * 1e-3 for t in TE_MS], abs=1e-9)
    # oblique: no affine column is axis-aligned, and the columns are the DICOM axes
    dirs = vol["affine"][:3, :3] / np.linalg.norm(vol["affine"][:3, :3], axis=0)
    assert np.abs(dirs).max(axis=0).max() < 0.99
    _check_affine(vol, orient)
    i, j, kk = _index_map(vol, orient)
    for e in range(4):
        np.testing.assert_array_equal(vol["data"][i, j, kk, e], stored[e])


def test_phase_and_magnitude_in_one_folder(tmp_path):
    d = tmp_path / "both"
    mag = _mag_stored(TE_MS)
    phi = _phase_truth(TE_MS)
    _write_series(d, mag, TE_MS, MAG, 5)
    _write_series(d, _siemens_phase_stored(phi), TE_MS, PHASE, 6, slope=2.0, intercept=-4096.0)
    auto = load_dicom_echoes(d)
    m = load_dicom_echoes(d, kind="magnitude")
    p = load_dicom_echoes(d, kind="phase")
    assert not auto["is_phase"] and not m["is_phase"] and p["is_phase"]
    np.testing.assert_array_equal(auto["data"], m["data"])
    assert p["data"].shape == m["data"].shape and np.allclose(p["affine"], m["affine"])
    assert p["te_s"] == pytest.approx(m["te_s"])
    assert "header range [-4096, 4096)" in p["phase_scaling"]
    assert p["data"].min() >= -np.pi - 1e-6 and p["data"].max() < np.pi
    i, j, kk = _index_map(p, AXIAL)
    for e in range(4):
        np.testing.assert_array_equal(m["data"][i, j, kk, e], mag[e])
        diff = np.angle(np.exp(1j * (p["data"][i, j, kk, e] - phi[e])))
        assert np.abs(diff).max() <= np.pi / 4096 + 1e-5          # half a quantisation step
    # the written phase wraps (spans nearly the whole circle)
    assert p["data"].max() - p["data"].min() > 6.0
    # a phase-only folder is phase under "auto"; asking it for magnitude is an error
    d2 = tmp_path / "ph_only"
    _write_series(d2, _siemens_phase_stored(phi), TE_MS, PHASE, 7, slope=2.0, intercept=-4096.0)
    only = load_dicom_echoes(d2)
    assert only["is_phase"]
    np.testing.assert_array_equal(only["data"], p["data"])
    with pytest.raises(InputError, match="no magnitude"):
        load_dicom_echoes(d2, kind="magnitude")


def test_multi_echo_spin_echo_r2(tmp_path):
    te_se = (30.0, 60.0, 90.0)
    k, r, c = _grid()
    r2 = 8.0 + 0.5 * c + 0.7 * r + 1.0 * k
    stored = _mag_stored(te_se, rate=r2)
    d = tmp_path / "se"
    _write_series(d, stored, te_se, MAG, 8, sequence="SE")
    vol = load_dicom_echoes(d)
    assert vol["te_s"] == pytest.approx([0.03, 0.06, 0.09], abs=1e-9)
    i, j, kk = _index_map(vol, AXIAL)
    err = _fit_rate(vol["data"], vol["te_s"])[i, j, kk] - r2
    assert np.abs(err).max() < 0.05


def test_phase_scaling_rule():
    rng = np.random.default_rng(1)
    phi = rng.uniform(-np.pi, np.pi, 500)
    kept, rule = phase_to_radians(phi)
    np.testing.assert_allclose(kept, phi, atol=1e-6)
    assert rule.startswith("radians")
    ge, rule = phase_to_radians(np.round(phi * 1000), manufacturer="GE MEDICAL SYSTEMS")
    np.testing.assert_allclose(ge, phi, atol=6e-4)
    assert "milliradians" in rule
    sv = np.mod(np.round((phi + np.pi) / (2 * np.pi) * 4096), 4096)       # Siemens stored values
    hdr, rule = phase_to_radians(2 * sv - 4096, value_range=(-4096, 4096))
    assert np.abs(np.angle(np.exp(1j * (hdr - phi)))).max() <= np.pi / 4096 + 1e-6
    # without a header: observed span rounded up to a power of two
    guess, rule = phase_to_radians(sv)
    assert "observed range" in rule
    assert np.abs(np.angle(np.exp(1j * (guess - phi)))).max() <= np.pi / 2048 + 1e-6


def test_errors(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        load_dicom_echoes(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert not is_dicom_dir(tmp_path / "empty")
    with pytest.raises(InputError, match="no DICOM"):
        load_dicom_echoes(tmp_path / "empty")
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.dcm").write_text("hello " * 40)
    (tmp_path / "txt" / "b.nii").write_bytes(b"\0" * 400)
    assert not is_dicom_dir(tmp_path / "txt")
    with pytest.raises(InputError, match="no DICOM"):
        load_dicom_echoes(tmp_path / "txt")
    # a file with the DICM preamble but no image: dcm2niix converts nothing
    bad = tmp_path / "noimage"
    bad.mkdir()
    (bad / "x.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x04\x001.2\0")
    assert is_dicom_dir(bad)
    with pytest.raises(InputError, match="dcm2niix could not convert"):
        load_dicom_echoes(bad)
    with pytest.raises(InputError, match="kind"):
        load_dicom_echoes(bad, kind="real")


def test_missing_echo_time_and_mixed_acquisitions(tmp_path):
    stored = _mag_stored(TE_MS)
    d = tmp_path / "note"
    _write_series(d, stored[:1], TE_MS[:1], MAG, 9, write_te=False)
    with pytest.raises(InputError, match="no EchoTime"):
        load_dicom_echoes(d)
    # two magnitude acquisitions with the same echo times in one folder
    d2 = tmp_path / "twice"
    _write_series(d2, stored, TE_MS, MAG, 10)
    _write_series(d2, stored, TE_MS, MAG, 11)
    with pytest.raises(InputError, match="more than once"):
        load_dicom_echoes(d2)
    # echoes of different matrices in one folder
    d3 = tmp_path / "grids"
    _write_series(d3, stored[:2], TE_MS[:2], MAG, 12)
    _write_series(d3, stored[2:], TE_MS[2:], MAG, 13, nrows=NY - 2)
    with pytest.raises(InputError, match="different grid"):
        load_dicom_echoes(d3)


def test_acquisition_loader_reads_dicom_folders(tmp_path):
    """The one loader (chisep.acquisition) on a DICOM folder: same phase rule as NIfTI, headers give
    TE and B0, --phase-unit applies to DICOM too."""
    from chisep.acquisition import load_acquisition
    d = tmp_path / "both"
    mag, phi = _mag_stored(TE_MS), _phase_truth(TE_MS)
    _write_series(d, mag, TE_MS, MAG, 5)
    _write_series(d, _siemens_phase_stored(phi), TE_MS, PHASE, 6, slope=2.0, intercept=-4096.0)
    a = load_acquisition(d, d)
    assert a.phase_unit.startswith("header") and "header range [-4096, 4096)" in a.phase_unit_reason
    assert a.te_s == pytest.approx([t * 1e-3 for t in TE_MS]) and a.b0_t == 3.0 and a.warnings == []
    assert a.provenance["b0_t"].endswith("(DICOM header)")
    i, j, kk = _index_map({"data": a.mag, "affine": a.affine}, AXIAL)
    for e in range(len(TE_MS)):
        np.testing.assert_array_equal(a.mag[i, j, kk, e], mag[e])
        assert np.abs(np.angle(np.exp(1j * (a.phase[i, j, kk, e] - phi[e])))).max() <= np.pi / 4096 + 1e-5
    with pytest.raises(InputError, match="not radians") as e:
        load_acquisition(d, d, phase_unit="rad")
    assert str(d) in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="empty folder"):
        load_acquisition(empty, d)
