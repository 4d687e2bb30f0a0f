"""Rotate/resample volumes to the networks' frame (1 mm isotropic, B0 along the third axis) and back.

The array frame is the orthonormal frame of the array axes in mm (``physics`` conventions): a voxel
index ``i`` sits at ``p = voxel_size * i``. The network grid has spacing ``t`` (1 mm) and axes given
by the columns of a rotation ``R`` whose third column is B0 (in the array frame); network index ``j``
sits at ``p = R (t j) + c0``. ``R`` is the smallest rotation taking the third axis to B0 (the sign of
B0 is irrelevant to the dipole kernel), so an axial acquisition is only rescaled, never rotated.

When the input already is ``t`` mm isotropic with B0 within ``tol_deg`` (1 degree) of the third
axis, nothing is resampled (the identity path: the same arrays come back exactly).

Interpolation is trilinear (scipy.ndimage.affine_transform, order 1); masks are interpolated and
thresholded at 0.5. Maps are resampled mask-weighted (``T(v m) / T(m)``) so that the zeros outside
the mask do not bleed into the edge voxels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import ndimage

from .physics import _unit, b0_direction_from_affine, voxel_size_from_affine

IDENTITY_TOL_DEG = 1.0


@dataclass
class NetworkTransform:
    """How a volume was taken to network space (see :func:`to_network_space`)."""

    identity: bool
    in_shape: tuple
    in_affine: np.ndarray
    net_shape: tuple
    rotation: np.ndarray          # R: network axes (columns) in the array frame
    matrix: np.ndarray            # input index = matrix @ network index + offset
    offset: np.ndarray
    voxel_size: np.ndarray        # input voxel size (mm)
    target_voxel_mm: float
    b0_dir: np.ndarray            # unit B0 in the input array frame
    tilt_deg: float
    net_mask: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def net_affine(self) -> np.ndarray:
        """voxel->RAS affine of the network grid."""
        a = np.eye(4)
        a[:3, :3], a[:3, 3] = self.matrix, self.offset
        return np.asarray(self.in_affine, float) @ a


def _rotation_to(b: np.ndarray) -> np.ndarray:
    """Smallest rotation R with R e3 = b (b unit, b[2] >= 0)."""
    e3 = np.array([0.0, 0.0, 1.0])
    v = np.cross(e3, b)
    s, c = np.linalg.norm(v), float(b @ e3)
    if s < 1e-12:
        return np.eye(3)
    k = v / s
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + s * kx + (1 - c) * (kx @ kx)


def network_transform(shape, affine, b0_dir=None, target_voxel_mm: float = 1.0,
                      tol_deg: float = IDENTITY_TOL_DEG) -> NetworkTransform:
    """The transform :func:`to_network_space` uses, without resampling anything."""
    shape = tuple(int(s) for s in shape[:3])
    affine = np.asarray(affine, dtype=float)
    vox = voxel_size_from_affine(affine)
    b = _unit(b0_direction_from_affine(affine) if b0_dir is None else b0_dir)
    if b[2] < 0:
        b = -b
    tilt = float(np.degrees(np.arccos(np.clip(b[2], -1, 1))))
    t = float(target_voxel_mm)
    rot = np.eye(3) if tilt <= tol_deg else _rotation_to(b)
    if tilt <= tol_deg and np.allclose(vox, t, rtol=0, atol=1e-3 * t):
        return NetworkTransform(True, shape, affine, shape, np.eye(3), np.eye(3), np.zeros(3), vox, t, b, tilt)
    # physical extent of the input (voxel centres) in network coordinates
    n = np.array(shape, float)
    corners = np.array([[i, j, k] for i in (0, n[0] - 1) for j in (0, n[1] - 1) for k in (0, n[2] - 1)])
    q = (rot.T @ (corners * vox).T).T
    qmin, qmax = q.min(0), q.max(0)
    size = np.floor((qmax - qmin) / t + 1e-6).astype(int) + 1
    # centre the grid on the input's extent
    qmin = qmin + ((qmax - qmin) - (size - 1) * t) / 2
    c0 = rot @ qmin
    matrix = np.diag(1.0 / vox) @ rot * t
    offset = c0 / vox
    return NetworkTransform(False, shape, affine, tuple(int(s) for s in size), rot, matrix, offset, vox, t, b, tilt)


def _resample(vol, matrix, offset, out_shape, weight=None, order: int = 1):
    """Resample with ``input index = matrix @ output index + offset`` (spline ``order`` 0, 1 or 3).

    With ``weight`` (a 0/1 mask on the input grid) the result is zero where the linearly
    interpolated weight ``T(w) <= 1e-3``; elsewhere it is ``T(v w) / T(w)`` for order 1, and the
    cubic spline of ``v`` extended beyond the mask by its nearest in-mask values for order 3, so
    the zeros outside the mask never bleed into the edge voxels. Order 0 needs no weighting.
    """
    order = int(order)
    if order not in (0, 1, 3):
        raise ValueError(f"interpolation order must be 0 (nearest), 1 (linear) or 3 (cubic), got {order}")
    kw = dict(output_shape=tuple(out_shape), order=order, mode="constant", cval=0.0, prefilter=order > 1)
    v = np.asarray(vol, dtype=np.float32)
    if weight is None or order == 0:
        return ndimage.affine_transform(v, matrix, offset, **kw).astype(np.float32)
    w = np.asarray(weight, dtype=np.float32)
    # the weight itself is always interpolated linearly (a cubic spline of a mask rings)
    den = ndimage.affine_transform(w, matrix, offset, **dict(kw, order=1, prefilter=False))
    if order == 1:
        num = ndimage.affine_transform(v * w, matrix, offset, **kw)
        return np.where(den > 1e-3, num / np.maximum(den, 1e-3), 0.0).astype(np.float32)
    # cubic: extend the map beyond the mask with its nearest in-mask value, then interpolate
    if np.any(w > 0) and not np.all(w > 0):
        idx = ndimage.distance_transform_edt(w <= 0, return_distances=False, return_indices=True)
        v = v[tuple(idx)]
    num = ndimage.affine_transform(v, matrix, offset, **dict(kw, mode="nearest"))
    return np.where(den > 1e-3, num, 0.0).astype(np.float32)


def _weight_of(volumes, masks):
    for m in masks:
        if m in volumes and volumes[m] is not None:
            return (np.asarray(volumes[m]) > 0).astype(np.float32)
    return None


def to_network_space(volumes, affine, b0_dir=None, target_voxel_mm: float = 1.0, order: int = 1,
                     masks=("mask",), tol_deg: float = IDENTITY_TOL_DEG):
    """Resample 3-D volumes onto a ``target_voxel_mm`` isotropic grid with B0 along the third axis.

    volumes : dict name -> 3-D array on the input grid (all the same shape), or a list/tuple of
        arrays (then ``masks`` may hold their indices). Volumes named in ``masks`` are masks:
        interpolated linearly and thresholded at 0.5, returned as float32 0/1. Other maps are
        resampled with spline ``order`` (0 nearest, 1 linear, 3 cubic), mask-weighted with the
        first mask present.
    Returns ``(volumes on the network grid, NetworkTransform)`` (a dict for a dict, a list for a
    list); on the identity path the input arrays themselves come back (no copy, no resampling).
    """
    if isinstance(volumes, (list, tuple)):
        out, tr = to_network_space({i: v for i, v in enumerate(volumes)}, affine, b0_dir, target_voxel_mm,
                                   order, masks, tol_deg)
        return [out.get(i) for i in range(len(volumes))], tr
    vols = {k: v for k, v in volumes.items() if v is not None}
    if not vols:
        raise ValueError("no volumes given")
    shapes = {np.shape(v)[:3] for v in vols.values()}
    if len(shapes) != 1 or any(np.ndim(v) != 3 for v in vols.values()):
        raise ValueError(f"volumes must be 3-D arrays of one shape, got {sorted(shapes)}")
    shape = shapes.pop()
    tr = network_transform(shape, affine, b0_dir, target_voxel_mm, tol_deg)
    if tr.identity:
        w = _weight_of(vols, masks)
        tr.net_mask = w
        return dict(vols), tr
    w = _weight_of(vols, masks)
    out = {}
    for k, v in vols.items():
        if k in masks:
            r = _resample(np.asarray(v) > 0, tr.matrix, tr.offset, tr.net_shape)
            out[k] = (r >= 0.5).astype(np.float32)
        else:
            out[k] = _resample(v, tr.matrix, tr.offset, tr.net_shape, w, order)
    wm = next((out[m] for m in masks if m in out), None)
    tr.net_mask = wm
    return out, tr


def from_network_space(volumes, transform: NetworkTransform, masks=(), weight=None, order: int = 1):
    """Bring network-grid volumes (a dict or a list) back onto the input grid of ``transform``.

    weight : optional network-grid weight (e.g. the network-space mask) for mask-weighted
        interpolation; ``masks`` names (or, for a list, indices of) volumes to threshold at 0.5.
    The result lies on the input grid, i.e. it goes with ``transform.in_affine``.
    """
    if isinstance(volumes, (list, tuple)):
        out = from_network_space({i: v for i, v in enumerate(volumes)}, transform, masks, weight, order)
        return [out.get(i) for i in range(len(volumes))]
    tr = transform
    if tr.identity:
        return dict(volumes)
    inv = np.linalg.inv(tr.matrix)
    off = -inv @ tr.offset
    w = None if weight is None else np.asarray(weight, np.float32)
    out = {}
    for k, v in volumes.items():
        if v is None:
            continue
        if np.shape(v)[:3] != tuple(tr.net_shape):
            raise ValueError(f"{k}: shape {np.shape(v)} is not the network grid {tr.net_shape}")
        if k in masks:
            out[k] = (_resample(np.asarray(v) > 0, inv, off, tr.in_shape) >= 0.5).astype(np.float32)
        else:
            out[k] = _resample(v, inv, off, tr.in_shape, w, order)
    return out
