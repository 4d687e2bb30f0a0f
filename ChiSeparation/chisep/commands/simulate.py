"""``chisep simulate``: write a simulated head's acquisitions and ground truth.

Writes ``gre_mag.nii.gz``, ``gre_phase.nii.gz`` (radians), ``se_mag.nii.gz`` with dcm2niix-style
JSON sidecars (EchoTime in seconds, MagneticFieldStrength, ImagingFrequency, B0Direction, PhaseSign)
and ``truth/`` (chi_para, chi_dia, chi_total in ppm; local/total/background field in ppm; r2, r2star,
r2prime in Hz; m0; masks; lesions + lesions.csv; tissue + tissue_labels.json). Anatomy from the MNI
ICBM152 2009 template shipped with nilearn; every seed is a different subject.
"""
from __future__ import annotations

import argparse
import time


def add_parser(sub):
    p = sub.add_parser("simulate", help="simulate a head (GRE/SE acquisitions + ground-truth maps)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; files replaced)")
    p.add_argument("--seed", type=int, default=1, help="subject seed (default 1)")
    p.add_argument("--size", choices=("small", "full"), default="full",
                   help="full 1 mm head (default) or a small 64 mm block around the basal ganglia")
    p.add_argument("--noise", "--snr", dest="snr", type=float, default=100.0, metavar="SNR",
                   help="GRE SNR = mean brain M0 / noise sigma; 0 = noiseless (default 100)")
    p.add_argument("--b0", type=float, default=3.0, metavar="T", help="field strength in tesla (default 3)")
    p.add_argument("--tilt", type=float, default=0.0, metavar="DEG",
                   help="B0 tilt in degrees, stored in the affine as an oblique acquisition (default 0)")
    p.add_argument("--voxel-size", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("X", "Y", "Z"),
                   help="voxel size in mm (default 1 1 1)")
    p.add_argument("--te", type=float, nargs="+", default=(0.005, 0.011, 0.017, 0.023, 0.029),
                   metavar="S", help="GRE echo times in seconds (default 0.005 ... 0.029, 5 echoes)")
    p.add_argument("--se-te", type=float, nargs="*", default=(0.03, 0.06, 0.09, 0.12), metavar="S",
                   help="spin-echo echo times in seconds (default 0.03 0.06 0.09 0.12); "
                        "give none (--se-te with no value) for no SE")
    p.add_argument("--phase-sign", type=int, choices=(1, -1), default=1,
                   help="sense of phase rotation: phase = sign*2*pi*f*TE + phi0 (default +1)")
    p.add_argument("--n-lesions", type=int, default=None, help="number of lesions (default 6 small, 20 full)")
    p.add_argument("--no-deform", action="store_true", help="no random deformation of the template")
    p.add_argument("--progress", choices=("text", "json", "none"), default="text")
    return p


def run(args) -> int:
    from ..progress import make_progress, scaled
    from ..simulate import simulate_head, write_simulation

    progress = make_progress(args.progress)
    t0 = time.perf_counter()
    se = tuple(args.se_te) if args.se_te else None
    head = simulate_head(seed=args.seed, size=args.size, snr=args.snr, b0_t=args.b0, tilt_deg=args.tilt,
                         voxel_size=tuple(args.voxel_size), te_s=tuple(args.te), se_te_s=se,
                         phase_sign=args.phase_sign, n_lesions=args.n_lesions, deform=not args.no_deform,
                         progress=scaled(progress, 0.0, 0.7))
    write_simulation(head, args.out, progress=scaled(progress, 0.7, 1.0))
    n = len(head.lesion_table)
    print(f"chisep simulate: seed {head.seed}, {head.size} {head.shape} at {tuple(head.voxel_size)} mm, "
          f"{n} lesions, SNR {args.snr:g}, written to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0
