"""The one acquisition loader: phase units, magnitude/phase identity, sidecar values, grids, warnings."""
import json
import math

import nibabel as nib
import numpy as np
import pytest

from chisep.acquisition import (AFFINE_TOL_MM, decide_phase_unit, grid_mismatch, load_acquisition,
                                load_processed_maps, phase_to_radians)
from chisep.io import InputError, save_nifti
from chisep.preprocess import preprocess_gre
from chisep.simulate import simulate_head, write_simulation


@pytest.fixture(scope="module")
def head():
    return simulate_head(seed=5, size="small", snr=100)


@pytest.fixture(scope="module")
def files(head, tmp_path_factory):
    d = tmp_path_factory.mktemp("acq")
    write_simulation(head, d)
    return d


def _save(path, arr, affine, sidecar=None, dtype=np.float32):
    return save_nifti(path, arr, affine, dtype=dtype, sidecar=sidecar)


def _wrapdiff(a, b):
    return np.abs(np.angle(np.exp(1j * (np.asarray(a, np.float64) - np.asarray(b, np.float64)))))


# ------------------------------------------------------------------ phase units from the values
PHI = np.random.default_rng(0).uniform(-np.pi, np.pi, (40, 40, 10)).astype(np.float32)


@pytest.mark.parametrize("bits,signed,slope", [(8, False, 1), (8, True, 1), (10, False, 1), (12, False, 1),
                                               (12, True, 1), (12, False, 2), (16, True, 1), (16, False, 1)])
def test_scanner_integers_of_any_bit_depth(bits, signed, slope):
    levels = 2 ** bits
    sv = np.mod(np.round((PHI + np.pi) / (2 * np.pi) * levels), levels)       # unsigned stored values
    x = (sv - levels // 2 if signed else sv) * slope                           # signed / rescaled
    name, scale, offset, reason = decide_phase_unit(x)
    n = bits + (1 if slope == 2 else 0)
    assert name == f"int{n}" and math.isclose(scale, 2 * math.pi / 2 ** n)
    rad, _, _ = phase_to_radians(x)
    assert _wrapdiff(rad, PHI).max() <= math.pi / levels + 1e-5


def test_radians_degrees_and_zero_to_two_pi():
    assert decide_phase_unit(PHI)[0] == "rad"
    np.testing.assert_array_equal(phase_to_radians(PHI)[0], PHI)                # kept as given
    for x, unit in ((np.mod(PHI, 2 * np.pi), "rad"), (np.rad2deg(PHI), "deg"),
                    (np.rad2deg(np.mod(PHI, 2 * np.pi)), "deg")):
        rad, name, _ = phase_to_radians(x)
        assert name == unit and rad.min() >= -np.pi and rad.max() < np.pi
        assert _wrapdiff(rad, PHI).max() < 1e-5


def test_ambiguous_or_contradicted_units_are_refused_with_the_choices():
    with pytest.raises(InputError, match="--phase-unit"):
        decide_phase_unit(PHI * 30, "p.nii.gz")                  # floats up to 94: no unit fits
    with pytest.raises(InputError, match="low-bit"):
        decide_phase_unit(np.round(PHI + np.pi), "p.nii.gz")      # integers 0..6: radians or 3-bit?
    with pytest.raises(InputError, match="not radians"):
        decide_phase_unit(np.rad2deg(PHI), "p.nii.gz", unit="rad")
    with pytest.raises(InputError, match="not integers"):
        decide_phase_unit(PHI, "p.nii.gz", unit="int12")
    with pytest.raises(InputError, match="zero everywhere"):
        decide_phase_unit(np.zeros(5), "p.nii.gz")
    # explicit units and the sidecar's PhaseUnit are honoured
    assert decide_phase_unit(np.rad2deg(PHI), unit="deg")[0] == "deg"
    assert decide_phase_unit(np.rad2deg(PHI), sidecar={"PhaseUnit": "degrees"})[0] == "deg"
    assert decide_phase_unit(np.round(PHI * 1000), sidecar={"PhaseUnit": "mrad"})[0] == "mrad"
    # 9-bit integers are not taken for degrees, degrees are not taken for 9-bit integers
    nine = np.mod(np.round((PHI + np.pi) / (2 * np.pi) * 512), 512) - 256
    assert decide_phase_unit(nine)[0] == "int9"
    assert decide_phase_unit(np.round(np.rad2deg(PHI)))[0] == "deg"


def test_grid_tolerance():
    a = np.diag([1.0, 1.0, 2.0, 1.0])
    b = a.copy()
    b[0, 3] += AFFINE_TOL_MM / 2
    assert grid_mismatch((10, 10, 10), b, (10, 10, 10), a) is None
    b[0, 3] += AFFINE_TOL_MM
    assert "tolerance" in grid_mismatch((10, 10, 10), b, (10, 10, 10), a)
    c = a.copy()
    c[:3, :3] = c[:3, :3] * 1.001       # a 0.1 % voxel-size difference moves the far corner 0.02+ mm
    assert grid_mismatch((10, 10, 10), c, (10, 10, 10), a) is not None


# ------------------------------------------------------------------ the same local field from every unit
def test_phase_units_give_the_same_local_field(head, files, tmp_path):
    """Must-show: phase in degrees, in [0, 2 pi) and as 12-bit integers gives the local field of radians
    within 0.1 % (whole chain: loader -> preprocess_gre)."""
    # one phase, four units: the reference is that phase in radians (12-bit values, as a scanner
    # stores them; the quantization itself is not the loader's business)
    sv = np.mod(np.round((head.gre_phase.astype(np.float64) + np.pi) / (2 * np.pi) * 4096), 4096)
    ph = sv / 4096 * 2 * np.pi - np.pi
    sc = json.loads((files / "gre_phase.json").read_text())
    variants = {"rad": ph, "deg": np.rad2deg(ph), "0_2pi": np.mod(ph, 2 * np.pi), "int12": sv}
    expect = {"rad": "rad", "deg": "deg", "0_2pi": "rad", "int12": "int12"}
    mag, se = files / "gre_mag.nii.gz", files / "se_mag.nii.gz"

    def field(acq):
        out = preprocess_gre(acq.mag, acq.phase, acq.te_s, acq.affine, acq.b0_t, se_mag=acq.se_mag,
                             se_te_s=acq.se_te_s, phase_sign=acq.phase_sign, b0_dir=acq.b0_dir,
                             unwrap="laplacian")
        return out["local_field"], out["mask_eroded"] > 0

    fields = {}
    for name, arr in variants.items():
        p = _save(tmp_path / f"ph_{name}.nii.gz", arr, head.affine, sc,
                  dtype=np.int16 if name == "int12" else np.float32)
        acq = load_acquisition(mag, p, se=se)
        assert acq.phase_unit == expect[name], (name, acq.phase_unit_reason)
        assert _wrapdiff(acq.phase, ph).max() < 1e-5, name
        fields[name] = field(acq)
    f_ref, m = fields.pop("rad")
    for name, (f, _) in fields.items():
        err = np.linalg.norm((f - f_ref)[m]) / np.linalg.norm(f_ref[m])
        assert err < 1e-3, (name, err)
    # and the 12-bit field is within the quantization's reach of the unquantized float phase
    f0, _ = field(load_acquisition(mag, files / "gre_phase.nii.gz", se=se))
    assert np.linalg.norm((fields["int12"][0] - f0)[m]) / np.linalg.norm(f0[m]) < 5e-3


def test_swapped_magnitude_and_phase_are_refused(head, files, tmp_path):
    with pytest.raises(InputError, match="phase image") as e:
        load_acquisition(files / "gre_phase.nii.gz", files / "gre_mag.nii.gz")
    assert "gre_phase.nii.gz" in str(e.value) and "swap" in str(e.value)
    # without sidecars: the values decide (phase in [0, 2 pi) as magnitude, magnitude as phase)
    p = _save(tmp_path / "p02.nii.gz", np.mod(head.gre_phase, 2 * np.pi), head.affine)
    m = _save(tmp_path / "m.nii.gz", head.gre_mag, head.affine)
    with pytest.raises(InputError, match="swap"):      # one of the two checks names the swap
        load_acquisition(p, m, te_s=head.te_s)
    with pytest.raises(InputError, match="never wraps"):
        load_acquisition(m, m, te_s=head.te_s)
    with pytest.raises(InputError, match="negative"):
        load_acquisition(_save(tmp_path / "neg.nii.gz", head.gre_mag - 0.3, head.affine), p, te_s=head.te_s)


def test_sidecar_values_checked_and_defaults_warned(head, files, tmp_path):
    sc = json.loads((files / "gre_mag.json").read_text())
    a = load_acquisition(files / "gre_mag.nii.gz", files / "gre_phase.nii.gz")
    assert a.warnings == [] and a.b0_t == head.b0_t and a.phase_sign == 1
    assert a.provenance["b0_t"].endswith("gre_mag.json")
    # no field strength anywhere: 3 T assumed, with a warning that names the file
    for name in ("gre_mag", "gre_phase"):
        s = json.loads((files / f"{name}.json").read_text())
        s.pop("MagneticFieldStrength")
        _save(tmp_path / f"{name}.nii.gz", nib.load(str(files / f"{name}.nii.gz")).get_fdata(), head.affine, s)
    a = load_acquisition(tmp_path / "gre_mag.nii.gz", tmp_path / "gre_phase.nii.gz")
    assert a.b0_t == 3.0 and len(a.warnings) == 1 and "assumed 3 T" in a.warnings[0]
    assert "gre_mag.nii.gz" in a.warnings[0] and a.report()["warnings"] == a.warnings
    # explicit values win, bad ones are refused
    a = load_acquisition(tmp_path / "gre_mag.nii.gz", tmp_path / "gre_phase.nii.gz", b0_t=7, phase_sign=-1)
    assert a.b0_t == 7 and a.phase_sign == -1 and a.warnings == []
    for kw, msg in (({"b0_t": 0}, "positive"), ({"b0_t": -3}, "positive"), ({"phase_sign": 5}, "PhaseSign"),
                    ({"phase_unit": "gradians"}, "int12")):
        with pytest.raises(InputError, match=msg):
            load_acquisition(files / "gre_mag.nii.gz", files / "gre_phase.nii.gz", **kw)
    # B0Direction from the sidecar is normalised
    s = dict(sc, B0Direction=[0, 0, 2])
    _save(tmp_path / "b.nii.gz", head.gre_mag, head.affine, s)
    a = load_acquisition(tmp_path / "b.nii.gz", files / "gre_phase.nii.gz")
    np.testing.assert_allclose(a.b0_dir, [0, 0, 1])


def test_per_echo_files_and_mask_values(head, files, tmp_path):
    """One 3-D file per echo equals the 4-D file; masks of 0/255 and bool are binary."""
    sc = json.loads((files / "gre_mag.json").read_text())
    scp = json.loads((files / "gre_phase.json").read_text())
    mags, phs = [], []
    for e, te in enumerate(head.te_s):
        mags.append(_save(tmp_path / f"m{e}.nii.gz", head.gre_mag[..., e], head.affine, dict(sc, EchoTime=te)))
        phs.append(_save(tmp_path / f"p{e}.nii.gz", head.gre_phase[..., e], head.affine, dict(scp, EchoTime=te)))
    mask255 = _save(tmp_path / "mask255.nii.gz", head.truth["mask"] * 255, head.affine, dtype=np.uint8)
    a = load_acquisition(mags, phs, mask=mask255)
    b = load_acquisition(files / "gre_mag.nii.gz", files / "gre_phase.nii.gz")
    np.testing.assert_array_equal(a.mag, b.mag)
    np.testing.assert_array_equal(a.phase, b.phase)
    assert a.te_s == b.te_s
    np.testing.assert_array_equal(a.mask, (head.truth["mask"] > 0).astype(np.uint8))


def test_processed_maps_loader(head, files, tmp_path):
    t = files / "truth"
    maps, info = load_processed_maps(t / "local_field.nii.gz", "ppm", t / "mask.nii.gz",
                                     r2prime=t / "r2prime.nii.gz")
    assert maps.b0_t == 3.0 and "assumed 3 T" in info["warnings"][0]
    with pytest.raises(InputError, match="--field-te"):
        load_processed_maps(t / "local_field.nii.gz", "rad", t / "mask.nii.gz")
    with pytest.raises(InputError, match="positive"):
        load_processed_maps(t / "local_field.nii.gz", "ppm", t / "mask.nii.gz", b0_t=0)
    maps, info = load_processed_maps(t / "local_field.nii.gz", "ppm", t / "mask.nii.gz", b0_t=7)
    assert maps.b0_t == 7 and info["warnings"] == []
