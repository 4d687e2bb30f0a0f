"""Resample a label map onto another grid, nearest neighbour (lesions drawn on FLAIR -> the maps).

Both grids are given by their 4x4 voxel -> RAS (mm) affines. Every voxel of the target grid takes
the label of the source voxel whose centre is nearest to its own centre (after mapping through the
two affines); target voxels outside the source volume get ``fill``. Labels are never blended.
"""
from __future__ import annotations

import numpy as np

from .io import InputError


def resample_labels_nearest(labels, labels_affine, target_shape, target_affine, fill: int = 0) -> np.ndarray:
    """``labels`` (i, j, k) on ``labels_affine`` -> an int32 label map of ``target_shape`` on
    ``target_affine`` (nearest neighbour)."""
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise InputError(f"lesion labels must be a 3-D volume, got shape {lab.shape}")
    src = np.asarray(labels_affine, dtype=float)
    dst = np.asarray(target_affine, dtype=float)
    for name, a in (("lesion labels", src), ("maps", dst)):
        if a.shape != (4, 4) or not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-12:
            raise InputError(f"the {name}' voxel-to-RAS matrix is not a valid 4x4 affine")
    target_shape = tuple(int(s) for s in target_shape)
    if lab.shape == target_shape and np.allclose(src, dst, atol=1e-6):
        return np.rint(lab).astype(np.int32)
    # target voxel index -> source voxel index (continuous), then round to the nearest source voxel
    m = np.linalg.inv(src) @ dst
    grid = np.indices(target_shape, dtype=np.float64).reshape(3, -1)
    idx = m[:3, :3] @ grid + m[:3, 3:4]
    # half-way points round consistently (away from the float noise of the matrix product)
    idx = np.floor(idx + 0.5 + 1e-9).astype(np.int64)
    inside = np.all((idx >= 0) & (idx < np.array(lab.shape)[:, None]), axis=0)
    out = np.full(idx.shape[1], int(fill), dtype=np.int32)
    src_lab = np.rint(lab).astype(np.int32)
    out[inside] = src_lab[idx[0, inside], idx[1, inside], idx[2, inside]]
    return out.reshape(target_shape)


def same_grid(shape_a, affine_a, shape_b, affine_b, atol: float = 1e-4) -> bool:
    """True when two volumes share one voxel grid."""
    return tuple(shape_a) == tuple(shape_b) and np.allclose(np.asarray(affine_a, float),
                                                            np.asarray(affine_b, float), atol=atol)


__all__ = ["resample_labels_nearest", "same_grid"]
