"""chisep.resample: nearest-neighbour label resampling between grids (lesions on FLAIR -> maps)."""
import numpy as np
import pytest

from chisep.io import InputError
from chisep.resample import resample_labels_nearest, same_grid


def rotation(deg):
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def test_identity_grid_returns_the_labels():
    lab = np.random.default_rng(0).integers(0, 4, (5, 6, 7))
    a = np.diag([1.0, 1.0, 2.0, 1.0])
    out = resample_labels_nearest(lab, a, lab.shape, a)
    np.testing.assert_array_equal(out, lab)
    assert out.dtype == np.int32 and same_grid(lab.shape, a, out.shape, a)


def test_fine_permuted_flipped_grid_round_trips_exactly():
    """Labels on a 1 mm oblique grid, put on a 0.5 mm grid with permuted, flipped axes (a FLAIR
    acquired differently) and back: identical, because every coarse centre is a fine centre."""
    rng = np.random.default_rng(1)
    lab = np.zeros((12, 10, 8), np.int16)
    lab[rng.random(lab.shape) > 0.9] = 2      # scattered single voxels survive too
    lab[2:5, 3:6, 1:4] = 3
    lab[7:9, 1:3, 5:7] = 5
    lab[10, 8, 0] = 9
    coarse = np.eye(4)
    coarse[:3, :3] = rotation(20) @ np.diag([1.0, 1.2, 1.5])
    coarse[:3, 3] = [-7.0, 3.0, 11.0]
    # fine grid: axes (k, i, j) of the coarse grid, j flipped, half the spacing, same centre at 0
    perm = np.zeros((3, 3))
    perm[:, 0] = coarse[:3, 2] / 2          # fine i along coarse k
    perm[:, 1] = coarse[:3, 0] / 2          # fine j along coarse i
    perm[:, 2] = -coarse[:3, 1] / 2         # fine k along -coarse j
    fine = np.eye(4)
    fine[:3, :3] = perm
    fine_shape = (2 * 8 - 1, 2 * 12 - 1, 2 * 10 - 1)
    # origin: fine k = 2 * (10 - 1 - j) falls on coarse j, so fine (2k, 2i, 2(9 - j)) = coarse (i, j, k)
    fine[:3, 3] = coarse[:3, 3] + coarse[:3, 1] * (10 - 1)
    on_fine = resample_labels_nearest(lab, coarse, fine_shape, fine)
    assert set(np.unique(on_fine)) == set(np.unique(lab))
    back = resample_labels_nearest(on_fine, fine, lab.shape, coarse)
    np.testing.assert_array_equal(back, lab)


def test_outside_is_filled_and_bad_input_refused():
    lab = np.ones((4, 4, 4), np.uint8)
    a = np.eye(4)
    shifted = np.eye(4)
    shifted[:3, 3] = [2.0, 0, 0]
    out = resample_labels_nearest(lab, a, (4, 4, 4), shifted, fill=0)
    np.testing.assert_array_equal(out[:2], 1)
    np.testing.assert_array_equal(out[2:], 0)
    with pytest.raises(InputError, match="3-D"):
        resample_labels_nearest(np.ones((2, 2)), a, (2, 2, 2), a)
    with pytest.raises(InputError, match="affine"):
        resample_labels_nearest(lab, np.zeros((4, 4)), (2, 2, 2), a)
