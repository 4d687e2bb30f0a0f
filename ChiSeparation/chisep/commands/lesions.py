"""``chisep lesions``: per-lesion statistics and hyper/iso/hypo classification against NAWM."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from ..io import InputError, load_nifti, write_json

HELP = """Per-lesion statistics and MS-lesion classification.

Reads chi_para.nii.gz, chi_dia.nii.gz (positive magnitude |chi_dia|) and chi_total.nii.gz (ppm),
and r2prime.nii.gz (Hz) if present, from --maps (the output folder of `chisep run`); a lesion
mask (0 and 1, 255 or True: split into 26-connected components) or an integer label map (one
label per lesion, kept) on the same grid; a probability map is refused (threshold it first).

Each lesion is compared with normal-appearing white matter: the --wm-mask (minus all lesions
dilated by --exclusion-mm, minus CSF) or, without it, a ring 2-5 mm around the lesion (--shell-mm)
excluding all lesions and the --csf-mask, inside the brain mask (mask.nii.gz in --maps, if any).
A map is hyper (hypo) when z = (lesion mean - NAWM median) / (1.4826 * NAWM MAD) exceeds
+--z-threshold (is below -z) AND the difference exceeds --min-diff ppm; else iso. For |chi_dia|
hypo means less diamagnetic. Subtypes: iron = para-hyper/dia-iso, demyelinated = para-iso/dia-hypo,
both = para-hyper/dia-hypo, neither = para-iso/dia-iso. A paramagnetic rim is flagged when the
mean chi_para of the lesion's outer 1.5 mm exceeds both its core and NAWM by --rim-min-diff ppm.

Writes the table as CSV (--out) and optionally the summary counts as JSON (--summary-json)."""


def add_parser(sub):
    p = sub.add_parser("lesions", help="lesion ROI statistics and hyper/iso/hypo classification",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--maps", required=True, metavar="DIR", help="folder with chi_para/chi_dia/chi_total.nii.gz")
    p.add_argument("--lesions", required=True, metavar="F", help="lesion mask or label map (NIfTI)")
    p.add_argument("--wm-mask", metavar="F", help="white-matter mask: global NAWM reference")
    p.add_argument("--csf-mask", metavar="F", help="CSF mask, excluded from the reference")
    p.add_argument("--brain-mask", metavar="F", help="brain mask (default DIR/mask.nii.gz if present)")
    p.add_argument("--out", required=True, metavar="F.csv", help="lesion table (CSV)")
    p.add_argument("--summary-json", metavar="F", help="summary counts per subtype (JSON)")
    p.add_argument("--z-threshold", type=float, default=2.0, help="|z| above which a map is hyper/hypo (default 2.0)")
    p.add_argument("--min-diff", type=float, default=0.005,
                   help="minimum |lesion - NAWM| in ppm for hyper/hypo (default 0.005; r2prime uses 0.5 Hz)")
    p.add_argument("--rim-min-diff", type=float, default=0.01, help="rim above core and NAWM by this many ppm (default 0.01)")
    p.add_argument("--shell-mm", type=float, nargs=2, default=(2.0, 5.0), metavar=("IN", "OUT"),
                   help="inner and outer radius of the perilesional reference ring in mm (default 2 5)")
    p.add_argument("--exclusion-mm", type=float, default=2.0, help="margin around every lesion kept out of the reference (mm)")
    p.add_argument("--mean-sd", action="store_true", help="use NAWM mean and SD instead of median and 1.4826*MAD")
    return p


def _load_same_grid(path, what, shape, affine):
    data, aff = load_nifti(path, ndim=3)
    if data.shape != tuple(shape):
        raise InputError(f"{path}: {what} has shape {data.shape} but the maps have {tuple(shape)}; it is on "
                         f"another grid: resample it to the maps' grid (nearest neighbour) first")
    if not np.allclose(aff, affine, atol=1e-3):
        raise InputError(f"{path}: {what} affine differs from the maps' affine; it is on another grid: "
                         f"resample it to the maps' grid (nearest neighbour) first")
    return data


def _check_output_file(opt, out: Path):
    """The file can be written (before any computation): not a folder, its folder creatable/writable."""
    if out.is_dir():
        raise InputError(f"{opt} {out}: is a folder; give the file to write")
    anc = out.parent
    while not anc.exists() and anc.parent != anc:
        anc = anc.parent
    if not anc.is_dir():
        raise InputError(f"{opt} {out}: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise InputError(f"{opt} {out}: {anc} is not writable; choose a folder you can write to")


def run(args) -> int:
    from .. import lesions as L

    d = Path(args.maps)
    if not d.exists():
        raise InputError(f"--maps {d}: folder not found (give the output folder of `chisep run`)")
    if not d.is_dir():
        raise InputError(f"--maps {d}: is a file, not a folder (give the output folder of `chisep run`)")
    for opt, f in (("--out", args.out), ("--summary-json", args.summary_json)):
        if f:
            _check_output_file(opt, Path(f))
    maps, affine = {}, None
    for name in ("chi_para", "chi_dia", "chi_total", "r2prime"):
        f = d / f"{name}.nii.gz"
        if not f.exists():
            if name in ("chi_para", "chi_dia"):
                raise InputError(f"--maps {d}: {f.name} not found (expected the output folder of `chisep run`)")
            continue
        data, aff = load_nifti(f, ndim=3)
        if affine is None:
            affine, shape = aff, data.shape
        elif data.shape != shape or not np.allclose(aff, affine, atol=1e-3):
            raise InputError(f"{f}: not on the grid of chi_para.nii.gz")
        maps[name] = data
    lesions = L.label_lesions(_load_same_grid(args.lesions, "the lesion map", shape, affine),
                              source=args.lesions)
    wm = _load_same_grid(args.wm_mask, "the WM mask", shape, affine) if args.wm_mask else None
    csf = _load_same_grid(args.csf_mask, "the CSF mask", shape, affine) if args.csf_mask else None
    brain_path = args.brain_mask or (d / "mask.nii.gz" if (d / "mask.nii.gz").exists() else None)
    brain = _load_same_grid(brain_path, "the brain mask", shape, affine) if brain_path else None

    rows = L.lesion_statistics(maps, lesions, affine, wm_mask=wm, csf_mask=csf, brain_mask=brain,
                               z_threshold=args.z_threshold,
                               min_diff={k: args.min_diff for k in ("chi_para", "chi_dia", "chi_total")},
                               robust=not args.mean_sd, shell_mm=tuple(args.shell_mm),
                               exclusion_mm=args.exclusion_mm, rim_min_diff=args.rim_min_diff,
                               split="never")
    L.write_lesion_csv(rows, args.out, map_names=list(maps))
    summary = L.summary_counts(rows)
    if args.summary_json:
        write_json(args.summary_json, {"lesions": str(args.lesions), "maps": str(d), **summary})
    if not rows:
        print(f"chisep lesions: no lesion found in {args.lesions}; wrote an empty table to {args.out}",
              file=sys.stderr)
        return 0
    print(f"{summary['n_lesions']} lesions ({summary['rims']} with a paramagnetic rim, "
          f"{summary['small_lesions']} small, {summary['touches_border']} at a border); table: {args.out}")
    for k, v in summary["subtypes"].items():
        print(f"  {k:<13} {v}")
    return 0
