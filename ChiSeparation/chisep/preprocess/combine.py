"""Echo combination: the total field (Hz) from unwrapped multi-echo phase, and its reliability."""
from __future__ import annotations

import numpy as np


def _echo_weights(mag, te):
    """Inverse-variance weights (TE_e m_e)^2 of the per-echo fields (see :func:`combine_echoes`)."""
    return (np.asarray(mag, np.float64) * te) ** 2


def combine_echoes(unwrapped, mag, te_s, mask, phase_sign: int = 1):
    """Weighted least-squares field from unwrapped phases (phi0 removed).

    Each echo gives f_e = phi_e / (2 pi TE_e); they are averaged with inverse-variance weights
    (TE_e m_e)^2, i.e. the squared SNR weights W_e = TE_e exp(-TE_e / T2*) (docs/DESIGN.md, "Preprocessing")
    (m_e = M0 exp(-TE_e / T2*) is the measured magnitude, so no T2* fit is needed).

    Returns
    -------
    field_hz : (X, Y, Z) float32, Hz, signed so that positive = higher frequency
        (divided by ``phase_sign``).
    weight : (X, Y, Z) float32 in [0, 1], proportional to the inverse standard deviation of the
        field noise (sqrt(sum_e (TE_e m_e)^2)), scaled by its 99th percentile in the mask.
    """
    te = np.asarray(te_s, float)
    m = np.asarray(mask) > 0
    field = np.zeros(m.shape, np.float32)
    weight = np.zeros(m.shape, np.float32)
    if not m.any():
        return field, weight
    # both maps are zero outside the mask: fit only its voxels (same arithmetic per voxel)
    w = _echo_weights(np.asarray(mag)[m], te)
    num = np.sum(w * np.asarray(unwrapped)[m] / (2 * np.pi * te), axis=-1)
    den = np.sum(w, axis=-1)
    field[m] = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0) * float(phase_sign)
    rel = np.sqrt(den)
    scale = np.percentile(rel, 99)
    weight[m] = np.clip(rel / max(scale, 1e-12), 0, 1)
    return field, weight


def echo_fit_residual(unwrapped, mag, te_s, field_hz, phase_sign: int = 1, mask=None):
    """Weighted RMS (Hz) of the per-echo fields ``phi_e / (2 pi TE_e)`` about the combined field.

    Small (noise, ~0.1-0.3 Hz at SNR 100) where the phase grows linearly with TE; large where it
    does not: strong intra-voxel dephasing (thick slices next to the sinuses), flow, or residual
    unwrapping errors. Weights as in :func:`combine_echoes`.

    Parameters
    ----------
    unwrapped : (X, Y, Z, E) unwrapped phases (rad, phi0 removed). mag : (X, Y, Z, E) magnitudes.
    te_s : (E,) echo times (s). field_hz : (X, Y, Z) the combined field from :func:`combine_echoes`.
    mask : optional (X, Y, Z): compute only there (0 elsewhere).

    Returns
    -------
    (X, Y, Z) float32, Hz (0 where all weights vanish).
    """
    te = np.asarray(te_s, float)
    if mask is not None:  # only in the mask (0 elsewhere): same arithmetic per voxel
        m = np.asarray(mask) > 0
        out = np.zeros(m.shape, np.float32)
        if m.any():
            out[m] = echo_fit_residual(np.asarray(unwrapped)[m], np.asarray(mag)[m], te, np.asarray(field_hz)[m],
                                       phase_sign)
        return out
    w = _echo_weights(mag, te)
    fe = np.asarray(unwrapped, np.float64) / (2 * np.pi * te) * float(phase_sign)
    den = np.sum(w, axis=-1)
    ss = np.sum(w * (fe - np.asarray(field_hz, np.float64)[..., None]) ** 2, axis=-1)
    return np.sqrt(np.where(den > 0, ss / np.where(den > 0, den, 1.0), 0.0)).astype(np.float32)


def _phase_fits(unwrapped, mag, te):
    """Weighted (mag^2) least-squares fits of ``phi_e / 2 pi`` (cycles) through the origin, linear
    ``f TE`` and quadratic ``f TE + c TE^2``: returns (f_quadratic Hz, RSS_linear, RSS_quadratic)."""
    if te.size < 3:
        raise ValueError("the quadratic phase fit needs at least 3 echoes")
    w = np.asarray(mag, np.float64) ** 2
    y = np.asarray(unwrapped, np.float64) / (2 * np.pi)
    s11, s12, s22 = (np.sum(w * te ** p, axis=-1) for p in (2, 3, 4))
    b1, b2, yy = np.sum(w * te * y, axis=-1), np.sum(w * te ** 2 * y, axis=-1), np.sum(w * y * y, axis=-1)
    det = s11 * s22 - s12 ** 2
    ok = det > 1e-12 * np.maximum(s11 * s22, 1e-300)
    d = np.where(ok, det, 1.0)
    f = np.where(ok, (s22 * b1 - s12 * b2) / d, 0.0)
    c = np.where(ok, (s11 * b2 - s12 * b1) / d, 0.0)
    rss_lin = np.maximum(yy - np.where(s11 > 0, b1 ** 2 / np.where(s11 > 0, s11, 1.0), 0.0), 0.0)
    rss_quad = np.maximum(yy - f * b1 - c * b2, 0.0)
    return f, rss_lin, rss_quad


def initial_frequency(unwrapped, mag, te_s, phase_sign: int = 1):
    """Frequency (Hz) at TE -> 0 from a weighted quadratic phase fit ``phi_e / 2 pi = f TE_e + c TE_e^2``.

    A voxel that holds several frequencies (a vein in a thick slice, a steep field next to the
    sinuses) has a phase that is not linear in TE: its slope at TE -> 0 is the proton-density
    weighted mean frequency of the voxel, while later echoes under-weight whatever decays fast
    (the vein's blood), so the linear fit of :func:`combine_echoes` is biased toward the slowly
    decaying tissue. To second order in TE the phase is ``phi0 + 2 pi <f> TE - Cov(R2*, 2 pi f) TE^2``,
    hence the quadratic term. The fit has more noise than the linear one, so use it only where the
    echoes bend significantly (:func:`dephasing_significance`; :func:`preprocess_gre` does so).

    Parameters
    ----------
    unwrapped : (..., E) unwrapped phases (rad, phi0 removed), E >= 3.
    mag : (..., E) magnitudes (the weights are mag^2, the inverse phase-noise variance).
    te_s : (E,) echo times (s).

    Returns
    -------
    (...) float32, Hz (divided by ``phase_sign``); where the fit is singular (all weights zero) 0.
    """
    f, _, _ = _phase_fits(unwrapped, mag, np.asarray(te_s, float))
    return (f * float(phase_sign)).astype(np.float32)


def dephasing_significance(unwrapped, mag, te_s, mask):
    """How far (in noise standard deviations) the phase of each voxel bends away from linear in TE.

    With mag^2 weights the residual sums of squares of the fits are noise variance times chi^2
    variables, so the drop from the linear to the quadratic fit (:func:`initial_frequency`), divided by
    the noise variance, is chi^2 with one degree of freedom where the phase is linear. The noise
    variance is estimated from the data: the median quadratic-fit RSS in the mask over the median of
    chi^2 with E - 2 degrees of freedom. Returns ``sqrt(drop / variance)``: about 1 or less where the
    phase is linear, large in veins and dephased voxels.

    Parameters
    ----------
    unwrapped, mag : (X, Y, Z, E), E >= 3. te_s : (E,) s. mask : (X, Y, Z).

    Returns
    -------
    (X, Y, Z) float32, 0 outside ``mask``.
    """
    from scipy.stats import chi2

    te = np.asarray(te_s, float)
    m = np.asarray(mask) > 0
    out = np.zeros(m.shape, np.float32)
    if not m.any():
        return out
    _, rss_lin, rss_quad = _phase_fits(np.asarray(unwrapped)[m], np.asarray(mag)[m], te)
    var = float(np.median(rss_quad)) / float(chi2.median(te.size - 2))
    out[m] = np.sqrt(np.maximum(rss_lin - rss_quad, 0.0) / max(var, 1e-30))
    return out


def surface_field_correction(field_hz, mag, te_s, mask, voxel_size=(1.0, 1.0, 1.0), initial=None, axes=None,
                             min_contrast: float = 0.3):
    """The field at the centre of the mask's surface voxels, from their signal-weighted field.

    A surface voxel that the brain only partly fills (thick slices above all) returns the field of
    its signal's centroid, not of its centre: with a field gradient ``g`` along an axis and the
    centroid ``delta`` off the centre, ``f_measured = f_centre + g delta``. Along each axis on which
    exactly one face neighbour lies outside ``mask``, the voxel is modelled as two compartments
    stacked along that axis: a fraction ``p`` of brain (magnitude ``a_e`` at echo ``e``, taken from the
    inward neighbour) against the outside (``b_e``, the outward neighbour), with ``p`` from the first
    echo, ``m_1 = p a_1 + (1 - p) b_1``. The centroid is then ``delta_e = s h r_e`` with
    ``r_e = p (1 - p) (b_e - a_e) / (2 (p a_e + (1 - p) b_e))`` (``h`` the voxel size along the axis, ``s``
    the outward sign), and the combined field sees ``r`` averaged over echoes with the weights of
    :func:`combine_echoes` (first echo only for the voxels in ``initial``, whose field is the
    TE -> 0 slope of :func:`initial_frequency`). Taking ``g`` from the voxel and its inward neighbour,
    ``f_centre = (f_measured + r f_inward) / (1 + r)`` (``|r| <= 1/2``); the corrections of the axes add.
    By default only the thick axes are corrected (voxel size at least 1.5 times the finest): the
    one-axis model cannot tell which axis a partial-volume voxel is cut along, and in thick slices
    the in-plane voxels hold little partial volume, so correcting the in-plane axes as well adds
    more error than it removes; isotropic voxels are left as they are. On thick-slice heads the
    correction roughly halves the field error on the mask's shell (docs/METHODS.md).

    Parameters
    ----------
    field_hz : (X, Y, Z) combined field (Hz) on ``mask``.
    mag : (X, Y, Z, E) echo magnitudes, also outside ``mask`` (the outward neighbours).
    te_s : (E,) echo times (s).
    mask : (X, Y, Z) the mask whose surface is corrected (that of the background removal).
    voxel_size : (3,) mm, to find the thick axes.
    initial : optional (X, Y, Z) bool, voxels whose field is :func:`initial_frequency`'s.
    axes : the array axes to correct (default: the thick ones, see above).
    min_contrast : leave a voxel alone along an axis where its two neighbours' first-echo magnitudes
        differ by less than this fraction of the larger: the brain fraction ``p`` cannot be read from
        so little contrast (magnitude noise of 1 % makes ``p`` uncertain by 0.1 at 10 % contrast),
        while the later echoes, where R2* separates the compartments, would multiply its error.

    Returns
    -------
    (X, Y, Z) float32, Hz: ``field_hz`` with its surface voxels corrected.
    """
    from scipy import ndimage as ndi

    if axes is None:
        vs = np.broadcast_to(np.asarray(voxel_size, float), (3,))
        axes = [ax for ax in range(3) if vs[ax] >= 1.5 * vs.min()]
    if not len(axes):                                                  # isotropic: nothing to correct
        return np.asarray(field_hz, np.float32)
    m = np.asarray(mask) > 0
    f = np.asarray(field_hz, np.float64)
    mag = np.asarray(mag)
    te = np.asarray(te_s, float)
    shell = m & ~ndi.binary_erosion(m)
    out = f.copy()
    for ax in axes:
        n = m.shape[ax]
        lo = np.take(m, np.r_[0, np.arange(n - 1)], axis=ax)          # neighbour at index - 1 (edge: itself)
        hi = np.take(m, np.r_[np.arange(1, n), n - 1], axis=ax)       # neighbour at index + 1
        sel = shell & (lo ^ hi)
        edge = [slice(None)] * 3
        for end in (0, n - 1):                                         # no neighbour beyond the array
            edge[ax] = end
            sel[tuple(edge)] = False
        if not sel.any():
            continue
        idx = np.nonzero(sel)
        s = np.where(hi[idx], -1, 1)                                   # +1: the outside is at index + 1
        inward, outward = list(idx), list(idx)
        inward[ax] = idx[ax] - s
        outward[ax] = idx[ax] + s
        inward, outward = tuple(inward), tuple(outward)
        mv = mag[idx].astype(np.float64)
        a, b = mag[inward].astype(np.float64), mag[outward].astype(np.float64)
        da = a[:, 0] - b[:, 0]
        p = np.clip((mv[:, 0] - b[:, 0]) / np.where(np.abs(da) > 1e-12, da, 1e-12), 0.0, 1.0)[:, None]
        p[np.abs(da) < min_contrast * np.maximum(a[:, 0], b[:, 0])] = 1.0     # no fraction to read
        r_e = p * (1 - p) * (b - a) / (2 * np.maximum(p * a + (1 - p) * b, 1e-30))
        w = _echo_weights(mv, te)
        r = np.sum(w * r_e, -1) / np.maximum(np.sum(w, -1), 1e-300)
        if initial is not None:
            first = np.asarray(initial)[idx] > 0
            r[first] = r_e[first, 0]
        out[idx] += (f[idx] + r * f[inward]) / (1 + r) - f[idx]
    return out.astype(np.float32)
