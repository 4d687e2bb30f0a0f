"""``chisep qsmci``: run chisep as a QSM-CI stage (``recon IN_DIR OUT_DIR``)."""
from __future__ import annotations

import argparse
import json

HELP = """Run chisep on a QSM-CI stage directory.

chi-separation: IN_DIR holds localfield.nii.gz (ppm), r2prime.nii.gz (Hz), chimap.nii.gz (ppm),
magnitude.nii.gz (4-D multi-echo GRE), mask.nii.gz and params.json (TE in s, B0 in T, B0_dir,
voxel_size in mm); writes chi-para.nii.gz and chi-dia.nii.gz (ppm; chi-dia a positive magnitude)
to OUT_DIR. r2prime-generation: IN_DIR holds magnitude, mask, params; writes r2prime.nii.gz (Hz).
The stage is detected from the files (a localfield means chi-separation) unless --stage is given.
config.json in IN_DIR (QSM-CI's --set NAME=VALUE) may set method, qsm_channel, Dr, R2.
--write-algorithm DIR writes a QSM-CI method folder (algorithm.yml + run.sh calling this command), so
that QSM-CI's own runner runs and scores chisep: qsm-ci run DIR --runner local --localfield ... --truth ..."""


def add_parser(sub):
    from .. import options as O

    p = sub.add_parser("qsmci", help="run a QSM-CI stage (chi-separation, r2prime-generation) on a stage directory",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("in_dir", nargs="?")
    p.add_argument("out_dir", nargs="?")
    p.add_argument("--write-algorithm", metavar="DIR",
                   help="instead of running: write a QSM-CI method folder (algorithm.yml + run.sh) for --stage "
                        "that QSM-CI's runner can run locally (qsm-ci run DIR --runner local ...)")
    p.add_argument("--stage", choices=("auto", "chi-separation", "r2prime-generation"), default="auto")
    O.add_arguments(p, O.RunOptions, only=("method",))
    p.add_argument("--qsm-channel", choices=("chimap", "closed-form"), default="chimap",
                   help="chi-sepnet's QSM input: the stage's chimap (default) or closed-form QSM of the local field")
    p.add_argument("--r2prime-method", choices=("network", "r2star-minus-r2"), default="network",
                   help="r2prime-generation: chi-sepnet-R2*'s R2' net (default) or R2* minus an assumed R2")
    p.add_argument("--weights", metavar="PATH", help="chi-sepnet weights (default built-in)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="cpu")
    return p


def run(args) -> int:
    from ..cohort import qsmci
    from ..io import InputError

    if args.write_algorithm:
        stage = "chi-separation" if args.stage == "auto" else args.stage
        d = qsmci.write_algorithm(args.write_algorithm, stage, method=None if args.method == "chisepnet-r2prime" else args.method)
        print(json.dumps({"stage": stage, "algorithm": str(d)}))
        return 0
    if not (args.in_dir and args.out_dir):
        raise InputError("give IN_DIR and OUT_DIR (a QSM-CI stage's input and output directories), or --write-algorithm DIR")

    stage = qsmci.detect_stage(args.in_dir) if args.stage == "auto" else args.stage
    if stage == "chi-separation":
        rep = qsmci.chi_separation(args.in_dir, args.out_dir, method=args.method, qsm_channel=args.qsm_channel,
                                   weights=args.weights, device=args.device)
        print(json.dumps({"stage": stage, "method": rep["method"], "outputs": rep["outputs"]}))
    else:
        path = qsmci.r2prime_generation(args.in_dir, args.out_dir, method=args.r2prime_method, device=args.device)
        print(json.dumps({"stage": stage, "method": args.r2prime_method, "outputs": [str(path)]}))
    return 0
