"""The MNI ICBM152 2009 template that nilearn ships (read offline with nibabel), the template
grid, the simulation grids and the smooth random fields drawn on a fixed world lattice."""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

from ..io import InputError

#: Template grid (MNI ICBM152 2009 1 mm): origin of voxel (0,0,0) in mm and shape.
_TPL_ORIGIN = np.array([-98.0, -134.0, -72.0])
_TPL_SHAPE = (197, 233, 189)
#: Neck: the head continues this many mm below the template's field of view (background only).
_NECK_MM = 48.0
#: Neck axis (x, y in MNI mm) and the depth (mm) over which the neck narrows to half the head.
_NECK_AXIS = (0.0, -38.0)
_NECK_TAPER_MM = 30.0
#: World box covered by the random lattices (deformation, textures), mm.
_LAT_LO = np.array([-112.0, -148.0, -72.0 - _NECK_MM - 12.0])
_LAT_HI = np.array([112.0, 112.0, 130.0])
#: Approximate centre of the brain (mm): centre of the global scaling and the shim expansion.
_BRAIN_CENTRE = np.array([0.0, -18.0, 18.0])
_TEMPLATE_FILES = {k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}


# --------------------------------------------------------------------------- template
def _template_dir() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the simulated head needs the 'nilearn' package (it ships the MNI ICBM152 "
                         "template); install it with: pip install nilearn")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


@functools.lru_cache(maxsize=1)
def _template():
    """The MNI ICBM152 2009 templates (scaled 0..1) + brain mask + distance-outside-brain lattice.

    Cached per process (seed independent). Returns a dict of float32 arrays on the 1 mm template
    grid ('t1', 'gm', 'wm', 'brain') and 'dist_out' (mm from the brain) on a 2 mm lattice whose
    voxel (0,0,0) centre is at ``_TPL_ORIGIN + 0.5``.
    """
    import nibabel as nib

    d = _template_dir()
    out = {}
    for key, name in _TEMPLATE_FILES.items():
        p = d / name
        if not p.exists():
            raise InputError(f"MNI template file not found: {p}; reinstall nilearn (its package data "
                             f"holds the ICBM152 2009 templates)")
        img = nib.load(str(p))
        arr = np.asarray(img.dataobj, dtype=np.float32) / 255.0
        if arr.shape != _TPL_SHAPE:
            raise InputError(f"{p}: unexpected template shape {arr.shape}, expected {_TPL_SHAPE}")
        out[key] = arr
    brain = ndi.binary_fill_holes(out["t1"] > 0)
    out["brain"] = brain.astype(np.float32)
    # distance outside the brain on a 2 mm lattice (cheap; only drives the skull/scalp shells)
    pad = [(0, s % 2) for s in brain.shape]
    b2 = np.pad(brain, pad).reshape(brain.shape[0] // 2 + pad[0][1], 2, brain.shape[1] // 2 + pad[1][1], 2,
                                     brain.shape[2] // 2 + pad[2][1], 2).any(axis=(1, 3, 5))
    out["dist_out"] = ndi.distance_transform_edt(~b2, sampling=2.0).astype(np.float32)
    return out


# --------------------------------------------------------------------------- grids
@dataclass
class _Grid:
    """A regular grid in subject (pre-tilt, MNI-like) mm: x = origin + vs * index."""
    origin: np.ndarray
    vs: np.ndarray
    shape: tuple

    def axes(self):
        return [self.origin[a] + self.vs[a] * np.arange(self.shape[a], dtype=np.float64) for a in range(3)]

    def coords(self):
        """(3, X, Y, Z) float32 subject coordinates in mm."""
        ax = self.axes()
        out = np.empty((3,) + tuple(self.shape), dtype=np.float32)
        for a in range(3):
            sh = [1, 1, 1]
            sh[a] = self.shape[a]
            out[a] = ax[a].reshape(sh)
        return out

    def box_slices(self, lo, hi):
        """Index slices of the voxels whose centres lie in [lo, hi] (mm); None if empty."""
        sl = []
        for a in range(3):
            i0 = int(np.ceil((lo[a] - self.origin[a]) / self.vs[a]))
            i1 = int(np.floor((hi[a] - self.origin[a]) / self.vs[a])) + 1
            i0, i1 = max(i0, 0), min(i1, self.shape[a])
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
        return tuple(sl)


# --------------------------------------------------------------------------- random fields
def _lattice_shape(spacing):
    return tuple(int(np.ceil((h - l) / spacing)) + 1 for l, h in zip(_LAT_LO, _LAT_HI))


def _smooth_noise(rng, spacing_mm: float, sigma_mm: float) -> np.ndarray:
    """Unit-variance smooth Gaussian random field on the world lattice (spacing ``spacing_mm``)."""
    a = rng.standard_normal(_lattice_shape(spacing_mm)).astype(np.float32)
    a = ndi.gaussian_filter(a, sigma_mm / spacing_mm, mode="wrap")
    a -= a.mean()
    a /= max(float(a.std()), 1e-12)
    return a


def _lattice_index(x, spacing):
    """World coordinates (3, ...) -> fractional lattice indices (float32, same shape)."""
    idx = np.empty_like(x, dtype=np.float32)
    for a in range(3):
        idx[a] = (x[a] - _LAT_LO[a]) / spacing
    return idx


def _sample(vol, idx, order=1, mode="constant", cval=0.0):
    return ndi.map_coordinates(vol, idx, order=order, mode=mode, cval=cval, output=np.float32,
                               prefilter=False)

