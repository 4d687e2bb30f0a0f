"""DICOM input: multi-echo GRE series written here with pydicom, converted by dcm2niix."""
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("dcm2niix")

from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from chisep.dicom import is_dicom_dir, load_dicom_echoes  # noqa: E402
from chisep.io import InputError  # noqa: E402

NX, NY, NZ = 16, 12, 6          # columns, rows, slices
TE_MS = (5.0, 11.0, 17.0, 23.0)
SPACING = (1.0, 1.0, 2.0)       # column spacing, row spacing, slice thickness (mm)


def _r2s_truth():
    # R2* (Hz) on the (slice, row, col) grid, varying along every axis
    z, y, x = np.meshgrid(np.arange(NZ), np.arange(NY), np.arange(NX), indexing="ij")
    return 10.0 + 2.0 * x + 1.5 * y + 3.0 * z


def _write_series(folder, values_fn, image_type, series_number, orientation=(1, 0, 0, 0, 1, 0),
                  slope=1.0, intercept=0.0):
    """One file per slice per echo; values_fn(echo_index) -> (NZ, NY, NX) stored integers."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    row_dir = np.array(orientation[:3], float)
    col_dir = np.array(orientation[3:], float)
    normal = np.cross(row_dir, col_dir)
    for e, te in enumerate(TE_MS):
        vals = values_fn(e)
        for k in range(NZ):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = FileDataset(str(folder / f"{series_number}_e{e}_s{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID = meta.MediaStorageSOPClassUID
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.Modality = "MR"
            ds.Manufacturer = "SIEMENS"
            ds.PatientName, ds.PatientID = "Phantom", "0"
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
            ds.SeriesNumber, ds.AcquisitionNumber = series_number, 1
            ds.InstanceNumber = e * NZ + k + 1
            ds.ImageType = image_type
            ds.SeriesDescription = ds.ProtocolName = "gre_me"
            ds.EchoTime, ds.EchoNumbers, ds.RepetitionTime = te, e + 1, 40.0
            ds.MagneticFieldStrength, ds.ImagingFrequency = 3.0, 127.7
            ds.ImageOrientationPatient = [float(v) for v in orientation]
            pos = normal * (k * SPACING[2])
            ds.ImagePositionPatient = [float(v) for v in pos]
            ds.PixelSpacing = [SPACING[1], SPACING[0]]
            ds.SliceThickness = SPACING[2]
            ds.Rows, ds.Columns = NY, NX
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
            ds.PixelData = vals[k].astype(np.uint16).tobytes()
            ds.save_as(str(folder / f"{series_number}_e{e}_s{k}.dcm"), enforce_file_format=True)


def _mag_values(e):
    return np.round(2000.0 * np.exp(-TE_MS[e] * 1e-3 * _r2s_truth()))


def _phase_stored(e):
    z, y, x = np.meshgrid(np.arange(NZ), np.arange(NY), np.arange(NX), indexing="ij")
    phase = np.angle(np.exp(1j * (0.2 * e + 0.1 * x - 1.0)))          # radians in [-pi, pi)
    # Siemens convention: 12-bit stored 0..4095, RescaleSlope 2, RescaleIntercept -4096
    return np.round((phase + np.pi) / (2 * np.pi) * 4096).clip(0, 4095)


def _voxel_of_patient_pos(affine, lps):
    ras = np.array([-lps[0], -lps[1], lps[2], 1.0])
    return np.round(np.linalg.solve(affine, ras)[:3]).astype(int)


def _check_geometry_and_values(vol, orientation):
    row_dir = np.array(orientation[:3], float)
    col_dir = np.array(orientation[3:], float)
    normal = np.cross(row_dir, col_dir)
    truth = np.stack([_mag_values(e) for e in range(len(TE_MS))], -1)
    rng = np.random.default_rng(0)
    for _ in range(40):
        k, r, c = rng.integers(NZ), rng.integers(NY), rng.integers(NX)
        lps = c * SPACING[0] * row_dir + r * SPACING[1] * col_dir + k * SPACING[2] * normal
        i, j, kk = _voxel_of_patient_pos(vol["affine"], lps)
        np.testing.assert_allclose(vol["data"][i, j, kk], truth[k, r, c], rtol=1e-5)


def test_multi_echo_magnitude(tmp_path):
    d = tmp_path / "mag"
    _write_series(d, _mag_values, ["ORIGINAL", "PRIMARY", "M", "ND"], 3)
    assert is_dicom_dir(d)
    vol = load_dicom_echoes(d)
    assert vol["data"].shape[-1] == 4 and not vol["is_phase"]
    np.testing.assert_allclose(vol["te_s"], np.array(TE_MS) * 1e-3)
    assert vol["b0_t"] == pytest.approx(3.0)
    assert vol["imaging_frequency_mhz"] == pytest.approx(127.7)
    np.testing.assert_allclose(np.linalg.norm(vol["affine"][:3, :3], axis=0), SPACING, atol=1e-4)
    _check_geometry_and_values(vol, (1, 0, 0, 0, 1, 0))
    # R2* by a log-linear fit of the loaded magnitude recovers the truth (up to integer rounding)
    te = np.asarray(vol["te_s"])
    logm = np.log(np.maximum(vol["data"], 1))
    A = np.stack([np.ones_like(te), -te], 1)
    coef = np.linalg.lstsq(A, logm.reshape(-1, len(te)).T, rcond=None)[0]
    r2s = coef[1].reshape(vol["data"].shape[:3])
    assert np.sort(r2s.ravel()) == pytest.approx(np.sort(_r2s_truth().ravel()), rel=0.01, abs=0.3)


def test_oblique_orientation(tmp_path):
    t = np.deg2rad(20)
    orient = (1, 0, 0, 0, np.cos(t), np.sin(t))
    d = tmp_path / "obl"
    _write_series(d, _mag_values, ["ORIGINAL", "PRIMARY", "M", "ND"], 4, orientation=orient)
    vol = load_dicom_echoes(d)
    _check_geometry_and_values(vol, orient)
    # the column direction (LPS) appears, as RAS, among the affine's normalised axes
    cols = vol["affine"][:3, :3] / np.linalg.norm(vol["affine"][:3, :3], axis=0)
    col_ras = np.array([-orient[3], -orient[4], orient[5]])
    assert np.max(np.abs(cols.T @ col_ras)) == pytest.approx(1.0, abs=1e-4)


def test_phase_and_magnitude_in_one_folder(tmp_path):
    d = tmp_path / "both"
    _write_series(d, _mag_values, ["ORIGINAL", "PRIMARY", "M", "ND"], 5)
    _write_series(d, _phase_stored, ["ORIGINAL", "PRIMARY", "P", "ND"], 6, slope=2.0, intercept=-4096.0)
    mag = load_dicom_echoes(d, kind="magnitude")
    ph = load_dicom_echoes(d, kind="phase")
    assert ph["is_phase"] and not mag["is_phase"]
    assert ph["data"].shape == mag["data"].shape
    assert ph["data"].min() >= -np.pi - 1e-6 and ph["data"].max() < np.pi + 1e-6
    # phase differences between echoes are the written 0.2 rad per echo (modulo 2 pi)
    dphi = np.angle(np.exp(1j * (ph["data"][..., 1] - ph["data"][..., 0])))
    np.testing.assert_allclose(dphi, 0.2, atol=2 * np.pi / 4096 * 2)
    # absolute phase: voxel (0,0,0) along x holds angle(exp(i(0.1 x - 1))) for echo 0
    z, y, x = np.meshgrid(np.arange(NZ), np.arange(NY), np.arange(NX), indexing="ij")
    truth = np.angle(np.exp(1j * (0.1 * x - 1.0)))
    got = np.sort(ph["data"][..., 0].ravel())
    np.testing.assert_allclose(got, np.sort(truth.ravel()), atol=2 * np.pi / 4096 * 2)


def test_errors(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        load_dicom_echoes(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM"):
        load_dicom_echoes(tmp_path / "empty")
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.dcm").write_text("hello")
    assert not is_dicom_dir(tmp_path / "txt")
    with pytest.raises(InputError, match="no DICOM"):
        load_dicom_echoes(tmp_path / "txt")
