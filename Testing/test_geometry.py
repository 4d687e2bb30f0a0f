"""Network-space geometry: identity path exact, anisotropic and tilted round trips, linear fields exact."""
import numpy as np
import pytest

from chisep import geometry as G
from chisep import physics as P


def _grid(shape, vs=(1, 1, 1)):
    return np.meshgrid(*[np.arange(n) * d for n, d in zip(shape, vs)], indexing="ij")


def _smooth(shape, vs):
    x, y, z = _grid(shape, vs)
    return (np.sin(x / 9.0) * np.cos(y / 11.0) + 0.02 * z).astype(np.float32)


def _ellipsoid(shape, vs, shrink=0.8):
    g = _grid(shape, vs)
    c = [(n - 1) * d / 2 for n, d in zip(shape, vs)]
    r = [shrink * n * d / 2 for n, d in zip(shape, vs)]
    return (sum(((a - cc) / rr) ** 2 for a, cc, rr in zip(g, c, r)) < 1).astype(np.float32)


def _rot_x(deg):
    t = np.deg2rad(deg)
    return np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])


def test_identity_path_is_exact():
    shape = (45, 53, 41)
    v, m = _smooth(shape, (1, 1, 1)), _ellipsoid(shape, (1, 1, 1))
    aff = np.diag([-1.0, 1.0, 1.0, 1.0])  # a flipped axis keeps B0 along axis 3
    aff[:3, 3] = (10, -20, 5)
    out, tr = G.to_network_space({"v": v, "mask": m}, aff, b0_dir=P.tilted_b0(0.5))
    assert tr.identity and out["v"] is v and tr.net_shape == shape
    back = G.from_network_space(out, tr)
    assert back["v"] is v
    assert np.allclose(tr.net_affine, aff)
    # B0 antiparallel to axis 3 is the same geometry
    _, tr2 = G.to_network_space({"v": v}, np.eye(4), b0_dir=(0, 0, -1))
    assert tr2.identity


def test_anisotropic_round_trip():
    shape, vs = (45, 53, 41), (1.0, 1.0, 2.0)
    aff = np.diag(list(vs) + [1.0])
    v, m = _smooth(shape, vs), _ellipsoid(shape, vs)
    out, tr = G.to_network_space({"v": v, "mask": m}, aff)
    assert not tr.identity and tr.net_shape == (45, 53, 81)
    assert set(np.unique(out["mask"])) <= {0.0, 1.0}
    assert np.allclose(P.voxel_size_from_affine(tr.net_affine), 1.0)
    back = G.from_network_space({"v": out["v"]}, tr, weight=out["mask"])
    assert back["v"].shape == shape
    inner = m > 0
    err = np.sqrt(np.mean((back["v"] - v)[inner] ** 2) / np.mean(v[inner] ** 2))
    assert err < 0.01, err


@pytest.mark.parametrize("tilt_axis", ["x", "y"])
def test_tilted_b0_linear_field_exact_and_round_trip(tilt_axis):
    shape, vs = (40, 44, 36), (1.0, 1.2, 1.5)
    aff = np.diag(list(vs) + [1.0])
    b = P.tilted_b0(15.0, tilt_axis)
    x, y, z = _grid(shape, vs)
    a = np.array([0.3, -0.2, 0.5])
    lin = (a[0] * x + a[1] * y + a[2] * z).astype(np.float32)
    out, tr = G.to_network_space({"lin": lin}, aff, b0_dir=b, masks=())
    assert abs(tr.tilt_deg - 15.0) < 1e-6
    assert np.allclose(tr.rotation[:, 2], b) and np.allclose(tr.rotation.T @ tr.rotation, np.eye(3))
    # trilinear interpolation reproduces a linear function of position exactly wherever all
    # 8 neighbours are inside the input
    j = np.stack(np.meshgrid(*[np.arange(n) for n in tr.net_shape], indexing="ij"), -1).reshape(-1, 3)
    p = (tr.rotation @ (j.T * tr.target_voxel_mm)).T + tr.offset * tr.voxel_size  # mm, array frame
    i = (tr.matrix @ j.T).T + tr.offset
    inside = np.all((i >= 0) & (i <= np.array(shape) - 1), axis=1)
    got = out["lin"].reshape(-1)[inside]
    assert inside.sum() > 1000
    assert np.allclose(got, (p @ a)[inside], atol=1e-4)
    # round trip of a smooth volume, mask-weighted
    v, m = _smooth(shape, vs), _ellipsoid(shape, vs)
    out, tr = G.to_network_space({"v": v, "mask": m}, aff, b0_dir=b)
    back = G.from_network_space({"v": out["v"]}, tr, weight=out["mask"])
    inner = m > 0
    err = np.sqrt(np.mean((back["v"] - v)[inner] ** 2) / np.mean(v[inner] ** 2))
    assert err < 0.02, err


def test_oblique_affine_gives_b0_along_third_axis():
    shape = (40, 44, 36)
    aff = np.eye(4)
    aff[:3, :3] = _rot_x(15.0)  # oblique slices: B0 (world z) is tilted 15 deg in the array frame
    out, tr = G.to_network_space({"v": _smooth(shape, (1, 1, 1))}, aff, masks=())
    assert not tr.identity and abs(tr.tilt_deg - 15.0) < 1e-6
    bn = P.b0_direction_from_affine(tr.net_affine)
    assert abs(abs(bn[2]) - 1.0) < 1e-9
    assert np.allclose(P.voxel_size_from_affine(tr.net_affine), 1.0)


def test_list_api_and_cubic_order():
    """Lists in, lists out (masks by index); cubic interpolation round trip beats linear."""
    shape, vs = (40, 44, 24), (1.0, 1.3, 1.7)
    aff = np.diag(list(vs) + [1.0])
    v, m = _smooth(shape, vs), _ellipsoid(shape, vs)
    inner = m > 0
    errs = {}
    for order in (1, 3):
        (vn, mn), tr = G.to_network_space([v, m], aff, order=order, masks=(1,))
        assert tr.net_shape == (40, 56, 40) and set(np.unique(mn)) <= {0.0, 1.0}
        d, _ = G.to_network_space({"v": v, "mask": m}, aff, order=order)
        assert np.array_equal(d["v"], vn) and np.array_equal(d["mask"], mn)
        (back,) = G.from_network_space([vn], tr, weight=mn, order=order)
        assert back.shape == shape
        errs[order] = np.sqrt(np.mean((back - v)[inner] ** 2) / np.mean(v[inner] ** 2))
    assert errs[3] < errs[1] < 0.01, errs
    with pytest.raises(ValueError, match="order"):
        G.to_network_space([v], aff, order=2)
