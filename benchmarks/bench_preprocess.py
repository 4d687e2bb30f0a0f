"""The preprocessing chain on full simulated heads: time and errors against the truth.

Prints, for B0 straight and tilted 20 degrees and for 1 mm and 1x1x2 mm voxels: wall time of
``preprocess_gre`` (2 cores), mask Dice, local-field NRMSE in the eroded mask (means removed; also deeper than 6 mm
from the brain surface), median absolute
relative error of R2* and R2 in brain tissue, and the fraction of brain voxels with a residual
phase jump (half a cycle or more at the last echo). "floor" is the NRMSE of V-SHARP applied to the
noiseless *true* total field with the same mask (what background removal alone loses: harmonic parts
of the truth local field near the brain surface); "d>6mm" evaluates only voxels deeper than 6 mm.
"LBV %" is the NRMSE of LBV (:func:`chisep.preprocess.lbv`, fourth-order compact Laplacian) applied to
the same chain's total field on the same background-removal mask without its partial-volume surface
voxels (:func:`chisep.preprocess.lbv_boundary_mask`), in its own mask_eroded (that mask
minus its one-voxel shell), "LBV>4mm %" in the mask eroded by 4 mm; "7pt %" / "7pt>4mm %" the same
with the classic 7-point Laplacian; "LBV-QSM %" / "LBV-QSM>4mm %" for :func:`chisep.preprocess.lbv_qsm`
(LBV plus the local field's boundary values estimated from a first QSM).

    python benchmarks/bench_preprocess.py [--seed 21]
"""
import argparse
import time

import numpy as np

from chisep import physics
import scipy.ndimage as ndi

from chisep import metrics as M
from chisep.preprocess import dice, erode, lbv, lbv_boundary_mask, lbv_qsm, preprocess_gre, vsharp
from chisep.simulate import simulate_head


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--unwrap", default="region-growing")
    ap.add_argument("--bg-method", default="vsharp")
    args = ap.parse_args()
    cases = [("straight, 1 mm", {}), ("tilted 20 deg, 1 mm", {"tilt_deg": 20.0}),
             ("straight, 1x1x2 mm", {"voxel_size": (1.0, 1.0, 2.0)}),
             ("tilted 20, 1x1x2 mm", {"tilt_deg": 20.0, "voxel_size": (1.0, 1.0, 2.0)})]
    print(f"{'case':<22}{'time s':>8}{'Dice':>7}{'field NRMSE %':>15}{'>6mm %':>8}{'floor %':>9}{'d>6mm %':>9}"
          f"{'R2* err %':>11}{'R2 err %':>10}{'jumps %':>9}{'LBV %':>7}{'LBV>4mm %':>10}{'LBV s':>7}"
          f"{'7pt %':>7}{'7pt>4mm %':>10}{'LBV-QSM %':>10}{'LBV-QSM>4mm %':>14}{'s':>5}")
    for name, kw in cases:
        h = simulate_head(seed=args.seed, size="full", snr=100, **kw)
        t0 = time.perf_counter()
        o = preprocess_gre(h.gre_mag, h.gre_phase, h.te_s, h.affine, h.b0_t, se_mag=h.se_mag,
                           se_te_s=h.se_te_s, unwrap=args.unwrap, bg_method=args.bg_method)
        t = time.perf_counter() - t0
        T = h.truth
        me = (o["mask_eroded"] > 0) & (T["mask"] > 0)
        nrmse = M.nrmse(o["local_field"][me], T["local_field"][me], demean=True)
        core = me & erode(T["mask"] > 0, 6.0, h.voxel_size)
        nrmse_core = M.nrmse(o["local_field"][core], T["local_field"][core], demean=True)
        ideal, mi = vsharp(T["total_field"], o["mask"], h.voxel_size)
        sel = (mi > 0) & (T["mask"] > 0)
        floor = 100 * np.linalg.norm(ideal[sel] - T["local_field"][sel]) / np.linalg.norm(T["local_field"][sel])
        deep = me & (ndi.distance_transform_edt(T["mask"] > 0, sampling=h.voxel_size) > 6)
        nr_deep = 100 * np.linalg.norm(o["local_field"][deep] - T["local_field"][deep]) / np.linalg.norm(T["local_field"][deep])
        tissue = erode((T["mask"] > 0) & (T["mask_csf"] == 0) & (T["mask_vessels"] == 0), 1.0, h.voxel_size)
        rel = {k: 100 * np.median(np.abs(o[k][tissue] - T[k][tissue]) / T[k][tissue]) for k in ("r2star", "r2")}
        m = erode(o["mask"] > 0, 2.0, h.voxel_size)
        err = o["total_field_hz"][m] - physics.ppm_to_hz(T["total_field"][m], h.b0_t)
        err -= np.median(err)
        jumps = 100 * np.mean(np.abs(err) * h.te_s[-1] >= 0.5)
        total_ppm = physics.hz_to_ppm(o["total_field_hz"], h.b0_t)
        deep4 = erode(o["mask"] > 0, 4.0, h.voxel_size)

        def score(local, valid):
            """NRMSE in the method's own eroded mask and in that mask deeper than 4 mm."""
            v = (valid > 0) & (T["mask"] > 0)
            return tuple(M.nrmse(local[s_], T["local_field"][s_], demean=True) for s_ in (v, v & deep4))

        bnd = lbv_boundary_mask(o["mask_background"], o["magnitude"])
        t1 = time.perf_counter()
        lb, lm = lbv(total_ppm, bnd, h.voxel_size)
        t_lbv = time.perf_counter() - t1
        n_lbv, n_lbv4 = score(lb, lm)
        n_7, n_74 = score(*lbv(total_ppm, bnd, h.voxel_size, stencil="7-point"))
        t2 = time.perf_counter()
        lq, mq = lbv_qsm(total_ppm, o["mask_background"], h.voxel_size, physics.b0_direction_from_affine(h.affine),
                         boundary_mask=bnd)
        t_q = time.perf_counter() - t2
        n_q, n_q4 = score(lq, mq)
        print(f"{name:<22}{t:>8.1f}{dice(o['mask'], T['mask']):>7.3f}{nrmse:>15.1f}{nrmse_core:>8.1f}{floor:>9.1f}{nr_deep:>9.1f}{rel['r2star']:>11.2f}"
              f"{rel['r2']:>10.2f}{jumps:>9.3f}{n_lbv:>7.1f}{n_lbv4:>10.1f}{t_lbv:>7.1f}{n_7:>7.1f}{n_74:>10.1f}{n_q:>10.2f}{n_q4:>14.2f}{t_q:>5.0f}", flush=True)


if __name__ == "__main__":
    main()
