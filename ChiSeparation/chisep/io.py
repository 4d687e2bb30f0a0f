"""Reading and writing NIfTI volumes with dcm2niix-style JSON sidecars, atomically.

Every writer here writes to a temporary name and renames, so a failed run leaves nothing
half-written. User-facing problems raise :class:`InputError` with a message that names the file
and says what to fix.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np


class InputError(ValueError):
    """Bad user input (file, shape, unit, parameter); the message says what to fix."""


def _nii_base(path) -> str:
    p = str(path)
    for ext in (".nii.gz", ".nii"):
        if p.endswith(ext):
            return p[: -len(ext)]
    return os.path.splitext(p)[0]


def sidecar_path(nifti_path) -> Path:
    """``x.nii.gz`` -> ``x.json``."""
    return Path(_nii_base(nifti_path) + ".json")


def load_nifti(path, *, ndim: int | tuple | None = None, dtype=np.float32):
    """Load a NIfTI volume.

    Returns ``(data, affine)``; ``data`` as ``dtype`` (scaled by the header's slope/intercept),
    ``affine`` the 4x4 voxel->RAS+ matrix (sform if set, else qform).

    Raises :class:`InputError` if the file is missing or unreadable, has the wrong number of
    dimensions, or contains NaN/inf values.
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj).astype(dtype)
    except Exception as exc:  # nibabel raises many types
        raise InputError(f"{path}: not a readable NIfTI file ({exc})") from exc
    # squeeze trailing singleton dims (e.g. X,Y,Z,1)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if data.ndim not in allowed:
            raise InputError(f"{path}: expected a {' or '.join(map(str, allowed))}-D volume, "
                             f"got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        n = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InputError(f"{path}: contains {n} NaN/inf voxels; replace them (e.g. by 0 outside "
                         f"the brain) before running")
    return data, np.asarray(img.affine, dtype=float)


def save_nifti(path, data, affine, *, dtype=np.float32, sidecar: dict | None = None) -> Path:
    """Write ``data`` with ``affine`` to ``path`` atomically (temp file + rename)."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(data)
    if dtype is not None:
        arr = arr.astype(dtype)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=float))
    img.set_sform(np.asarray(affine, dtype=float), code=1)
    img.set_qform(np.asarray(affine, dtype=float), code=1)
    suffix = ".nii.gz" if str(path).endswith(".nii.gz") else ".nii"
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if sidecar is not None:
        write_json(sidecar_path(path), sidecar)
    return path


def write_json(path, obj) -> Path:
    """Write JSON atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".json", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=2, default=_json_default)
        fh.write("\n")
    os.replace(tmp, path)
    return path


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def file_sha256(path) -> str:
    """SHA-256 hex digest of a file (for provenance in reports)."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_sidecar(nifti_path) -> dict:
    """The dcm2niix-style JSON sidecar of a NIfTI file, or ``{}`` if there is none."""
    p = sidecar_path(nifti_path)
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text())
    except Exception as exc:
        raise InputError(f"{p}: sidecar is not valid JSON ({exc})") from exc


@contextlib.contextmanager
def atomic_output_dir(out_dir):
    """Context manager yielding a staging directory; on success its files move into ``out_dir``.

    On an exception nothing is written to ``out_dir`` (the staging directory is removed).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".staging_", dir=out_dir))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    for src in sorted(stage.rglob("*")):
        rel = src.relative_to(stage)
        dst = out_dir / rel
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    shutil.rmtree(stage, ignore_errors=True)
