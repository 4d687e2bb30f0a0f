"""The chi-sepnet training loss (docs/DESIGN.md, "Network"), in torch.

loss = w_l1 * L1(z-scored outputs, z-scored labels)
     + w_gdl * GDL(z-scored outputs, z-scored labels)
     + w_field * L1(D * (chi_para - |chi_dia|), f)            (ppm)
     + w_qsm   * L1(chi_para - |chi_dia|, QSM)                (ppm)
     + w_r2p   * L1(chi_para + |chi_dia|, R2'/Dr)             (ppm)

All terms are averaged over the voxels of a mask (the brain mask of the patch; the field term over
the field mask, usually the eroded brain mask where the local field is defined). The dipole
convolution is done by FFT on the patch, zero-padded (``pad`` x the patch size), which is exactly
:func:`chisep.physics.forward_field` of the masked chi of the patch. The published weights are 1,
0.1, 1, 1, 1 (physics terms in ppm); every weight is configurable.

The gradient-difference loss (GDL) is the mean absolute difference of the forward finite
differences of prediction and label along each spatial axis (masked by voxels whose both ends are
inside the mask).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch

from .. import physics


@dataclass
class LossWeights:
    l1: float = 1.0
    gdl: float = 0.1
    field: float = 1.0
    qsm: float = 1.0
    r2p: float = 1.0

    def as_dict(self):
        return asdict(self)


def masked_l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |a - b| over mask voxels (mask broadcast over channels); plain mean without a mask.

    A non-binary ``mask`` is a voxel weight: the weighted mean sum(w |a - b|) / sum(w).
    """
    d = (a - b).abs()
    if mask is None:
        return d.mean()
    m = mask.to(d.dtype).expand_as(d)
    return (d * m).sum() / m.sum().clamp_min(1.0)


def gradient_difference_loss(pred: torch.Tensor, target: torch.Tensor,
                             mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the three spatial axes of the masked L1 of forward differences (N, C, X, Y, Z)."""
    total = pred.new_zeros(())
    for ax in (2, 3, 4):
        n = pred.shape[ax]
        dp = pred.narrow(ax, 1, n - 1) - pred.narrow(ax, 0, n - 1)
        dt = target.narrow(ax, 1, n - 1) - target.narrow(ax, 0, n - 1)
        m = None
        if mask is not None:
            m = mask.narrow(ax, 1, n - 1) * mask.narrow(ax, 0, n - 1)
        total = total + masked_l1(dp, dt, m)
    return total / 3.0


@lru_cache(maxsize=8)
def _kernel_np(shape, voxel_size, b0_dir):
    d = physics.dipole_kernel(shape, voxel_size, b0_dir, dc=0.0, dtype=np.float32)
    return np.ascontiguousarray(d[..., : shape[2] // 2 + 1])


def dipole_convolve(chi: torch.Tensor, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0),
                    pad: float = 2.0) -> torch.Tensor:
    """Field (ppm) of chi (ppm), shape (N, 1|C, X, Y, Z), by FFT with zero padding to ``pad`` x.

    Equals :func:`chisep.physics.forward_field` (D(0) = 0) of each volume (circular convolution is
    shift invariant, so padding at the end equals centred padding after cropping).
    """
    shape = tuple(int(s) for s in chi.shape[-3:])
    pshape = physics.padded_shape(shape, max(float(pad), 1.0)) if pad and pad > 1 else shape
    k = _kernel_np(pshape, tuple(float(v) for v in voxel_size), tuple(float(v) for v in b0_dir))
    kt = torch.from_numpy(k).to(chi.device)
    x = chi.float()
    f = torch.fft.irfftn(torch.fft.rfftn(x, s=pshape, dim=(-3, -2, -1)) * kt, s=pshape, dim=(-3, -2, -1))
    return f[..., : shape[0], : shape[1], : shape[2]]


def chisep_loss(pred_z: torch.Tensor, target_z: torch.Tensor, mask: torch.Tensor, norm_out,
                field_ppm: torch.Tensor | None = None, qsm_ppm: torch.Tensor | None = None,
                r2p_over_dr_ppm: torch.Tensor | None = None, field_mask: torch.Tensor | None = None,
                weights: LossWeights | None = None, voxel_size=(1.0, 1.0, 1.0),
                b0_dir=(0.0, 0.0, 1.0), pad: float = 2.0, lesion: torch.Tensor | None = None,
                lesion_weight: float = 1.0):
    """The published chi-sepnet loss. Returns ``(total, parts)`` (parts: floats per term).

    pred_z, target_z : (N, 2, X, Y, Z) z-scored (chi_para, |chi_dia|).
    mask : (N, 1, X, Y, Z) brain mask (0/1).
    norm_out : ((mean_para, std_para), (mean_dia, std_dia)) to de-normalise to ppm.
    field_ppm, qsm_ppm, r2p_over_dr_ppm : (N, 1, X, Y, Z) the inputs in ppm (any may be None,
        which drops that term). field_mask : where the field is compared (default ``mask``).
    lesion, lesion_weight : optional (N, 1, X, Y, Z) lesion mask; its voxels count ``lesion_weight``
        times in the L1 term (a weighted mean), so that small lesions, a few hundred voxels of a
        patch, still steer the split (an extension; the published loss has weight 1).
    """
    w = weights or LossWeights()
    pred_z = pred_z.float()
    target_z = target_z.float()
    mask = mask.float()
    parts = {}
    total = pred_z.new_zeros(())
    if w.l1:
        wm = mask
        if lesion is not None and lesion_weight != 1.0:
            wm = mask * (1.0 + (float(lesion_weight) - 1.0) * lesion.float())
        parts["l1"] = masked_l1(pred_z, target_z, wm)
        total = total + w.l1 * parts["l1"]
    if w.gdl:
        parts["gdl"] = gradient_difference_loss(pred_z, target_z, mask)
        total = total + w.gdl * parts["gdl"]
    need_ppm = (w.field and field_ppm is not None) or (w.qsm and qsm_ppm is not None) or \
        (w.r2p and r2p_over_dr_ppm is not None)
    if need_ppm:
        (mp, sp), (md, sd) = norm_out
        para = (pred_z[:, 0:1] * sp + mp) * mask
        dia = (pred_z[:, 1:2] * sd + md) * mask
        tot = para - dia
        if w.field and field_ppm is not None:
            f = dipole_convolve(tot, voxel_size, b0_dir, pad)
            fm = mask if field_mask is None else field_mask.float()
            parts["field"] = masked_l1(f, field_ppm.float(), fm)
            total = total + w.field * parts["field"]
        if w.qsm and qsm_ppm is not None:
            parts["qsm"] = masked_l1(tot, qsm_ppm.float(), mask)
            total = total + w.qsm * parts["qsm"]
        if w.r2p and r2p_over_dr_ppm is not None:
            parts["r2p"] = masked_l1(para + dia, r2p_over_dr_ppm.float(), mask)
            total = total + w.r2p * parts["r2p"]
    return total, {k: float(v.detach()) for k, v in parts.items()}


def r2prime_loss(pred_z: torch.Tensor, target_z: torch.Tensor, mask: torch.Tensor,
                 weights: LossWeights | None = None):
    """Loss of the R2'-prediction net (1 -> 1): L1 + 0.1 GDL on the z-scored R2'/Dr, in the mask."""
    w = weights or LossWeights()
    pred_z, target_z, mask = pred_z.float(), target_z.float(), mask.float()
    parts = {"l1": masked_l1(pred_z, target_z, mask)}
    total = w.l1 * parts["l1"]
    if w.gdl:
        parts["gdl"] = gradient_difference_loss(pred_z, target_z, mask)
        total = total + w.gdl * parts["gdl"]
    return total, {k: float(v.detach()) for k, v in parts.items()}
