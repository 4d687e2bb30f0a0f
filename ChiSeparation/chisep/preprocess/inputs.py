"""Loading and validating multi-echo acquisitions (4-D NIfTI or one 3-D file per echo + sidecars)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import physics
from ..io import InputError, load_nifti, read_sidecar


def _as_list(x):
    if isinstance(x, (list, tuple)):
        return [Path(p) for p in x]
    return [Path(x)]


def load_echoes(paths, te_s=None, what: str = "echoes") -> dict:
    """Load a multi-echo series.

    Parameters
    ----------
    paths : a 4-D NIfTI path, or a list of 3-D NIfTI paths (one per echo).
    te_s : echo times in seconds; default from the JSON sidecar(s) ``EchoTime`` (s).
    what : a name for messages ("GRE magnitude", "SE magnitude", ...).

    Returns
    -------
    dict: ``data`` (X, Y, Z, E) float32, ``te_s`` (list of E floats, increasing), ``affine``,
    ``sidecar`` (the first file's sidecar), ``paths``.
    """
    files = _as_list(paths)
    vols, sidecars, affine = [], [], None
    for f in files:
        data, aff = load_nifti(f, ndim=(3, 4))
        if affine is None:
            affine = aff
        elif data.shape[:3] != vols[0].shape[:3] or not np.allclose(aff, affine, atol=1e-3):
            raise InputError(f"{f}: grid {data.shape[:3]} or affine differs from {files[0]}; all echoes "
                             f"of the {what} must share one grid")
        vols.append(data if data.ndim == 4 else data[..., None])
        sidecars.append(read_sidecar(f))
    data = np.concatenate(vols, axis=-1).astype(np.float32)
    n = data.shape[-1]
    if te_s is None:
        tes = []
        for f, sc, v in zip(files, sidecars, vols):
            te = sc.get("EchoTime")
            if te is None:
                raise InputError(f"{f}: no echo time for the {what}: add EchoTime (seconds) to its JSON "
                                 f"sidecar {f.name.split('.')[0]}.json or give the echo times (--te)")
            te = list(te) if isinstance(te, (list, tuple)) else [te]
            if len(te) != v.shape[-1]:
                raise InputError(f"{f}: sidecar lists {len(te)} echo times for {v.shape[-1]} echoes")
            tes += [float(t) for t in te]
    else:
        tes = [float(t) for t in te_s]
    if len(tes) != n:
        raise InputError(f"{files[0]}: {len(tes)} echo times given for {n} echoes of the {what}")
    if any(t <= 0 for t in tes) or any(b <= a for a, b in zip(tes, tes[1:])):
        raise InputError(f"{files[0]}: echo times {tes} must be positive and increasing (seconds)")
    if max(tes) > 1.0:
        raise InputError(f"{files[0]}: echo times {tes} look like milliseconds; give them in seconds")
    return {"data": data, "te_s": tes, "affine": affine, "sidecar": sidecars[0], "paths": files}


def phase_to_radians(phase: np.ndarray, path="phase") -> np.ndarray:
    """Phase in radians: kept if within [-pi, pi]; integer scanner phase rescaled from its range.

    Integer phase (absolute maximum above 3.2) is mapped linearly from [-P, P) onto [-pi, pi) with P
    the smallest power of two not below the absolute maximum (e.g. Siemens -4096..4095).
    """
    amax = float(np.abs(phase).max())
    if amax == 0:
        raise InputError(f"{path}: the phase is zero everywhere; give the GRE phase images, not magnitude or an empty file")
    if amax <= 3.2:
        return phase.astype(np.float32)
    lo = float(phase.min())
    if lo >= 0:  # unsigned storage 0..2P
        p2 = 2.0 ** np.ceil(np.log2(float(phase.max()) + 1))
        return (phase / p2 * 2 * np.pi - np.pi).astype(np.float32)
    p = 2.0 ** np.ceil(np.log2(amax))
    return (phase / p * np.pi).astype(np.float32)


def load_gre(mag, phase, te_s=None, b0_t=None) -> dict:
    """Load multi-echo GRE magnitude and phase with their echo times and field strength.

    Returns dict: ``mag``, ``phase`` (X, Y, Z, E; phase in rad), ``te_s``, ``b0_t`` (T; sidecar
    ``MagneticFieldStrength``, else 3.0), ``affine``, ``b0_dir`` (array frame; sidecar ``B0Direction``
    overrides the affine), ``phase_sign`` (sidecar ``PhaseSign``, else +1).
    """
    m = load_echoes(mag, te_s=te_s, what="GRE magnitude")
    try:
        p = load_echoes(phase, te_s=te_s if te_s is not None else m["te_s"], what="GRE phase")
    except InputError as exc:
        raise InputError(str(exc)) from None
    pf = p["paths"][0]
    if p["data"].shape != m["data"].shape:
        raise InputError(f"{pf}: the phase has shape {p['data'].shape} but the magnitude "
                         f"{m['paths'][0]} has {m['data'].shape}: give the same echoes on the same grid")
    if not np.allclose(p["affine"], m["affine"], atol=1e-3):
        raise InputError(f"{pf}: the phase affine differs from the magnitude's ({m['paths'][0]})")
    if p["sidecar"].get("EchoTime") is not None and te_s is None:
        pte = p["te_s"]
        if not np.allclose(pte, m["te_s"], rtol=1e-3):
            raise InputError(f"{pf}: echo times {pte} differ from the magnitude's {m['te_s']}")
    sc = m["sidecar"] or p["sidecar"]
    b0 = b0_t if b0_t is not None else sc.get("MagneticFieldStrength", 3.0)
    try:
        b0 = float(b0)
        physics.center_frequency_hz(b0)
    except (TypeError, ValueError):
        raise InputError(f"{m['paths'][0]}: field strength {b0!r} is not a positive number of tesla") from None
    bdir = sc.get("B0Direction")
    b0_dir = (np.asarray(bdir, float) / np.linalg.norm(bdir)) if bdir is not None \
        else physics.b0_direction_from_affine(m["affine"])
    return {"mag": m["data"], "phase": phase_to_radians(p["data"], pf), "te_s": m["te_s"], "b0_t": b0,
            "affine": m["affine"], "b0_dir": b0_dir, "phase_sign": int(sc.get("PhaseSign", 1) or 1)}
