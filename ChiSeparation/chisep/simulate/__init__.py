"""A simulated head with ground truth: chi_para, |chi_dia|, fields, relaxation and acquisitions.

Anatomy comes from the MNI ICBM152 2009 (sym, 09a) 1 mm T1, grey- and white-matter templates that
nilearn ships in its package data (read offline with nibabel). Every subject (``seed``) differs by
a smooth random deformation, per-structure values, textures, veins, lesions, shim and noise.

Model (docs/DESIGN.md, "Physics")
---------------------------------
* chi in ppm; ``chi_dia`` is a positive magnitude; chi_total = chi_para - chi_dia, defined inside
  the brain (tissue outside the brain, skull and scalp, is the reference 0).
* Tissue chi from partial volumes of CSF / grey / white matter, deep grey nuclei as smooth
  ellipsoids at their MNI positions (bilateral), veins as paramagnetic tubes, MS-like lesions of
  four subtypes in white matter (``iron`` = chi_para up, ``demyelinated`` = chi_dia down, ``both``,
  ``neither``), some iron lesions with a thin paramagnetic rim.
* R2 (Hz) per tissue; R2' = Dr * (chi_para + chi_dia) with Dr = ``physics.DR_CHISEPNET``;
  R2* = R2 + R2'; M0 proton-density-like (CSF brightest).
* Local field (ppm) = ``physics.forward_field(chi_total * brain)`` on the output grid. For
  ``size="small"`` that is the field of the chi inside the block; everything else (air/tissue
  interfaces of the whole head, tissue outside the block) is background.
* Background field (ppm): the head (brain dilated by skull and scalp, continued below the template
  as a neck) at -9.4 ppm relative to air, with air pockets (frontal/sphenoid sinuses, mastoids,
  ear canals), through the same forward model; plus a low-order harmonic shim residual; its mean
  over the brain is removed (the scanner's frequency adjustment). It is harmonic inside the brain.
* GRE echo e: S = M0 exp(-R2* TE_e) exp(i (phase_sign 2 pi f_hz TE_e + phi0)), f_hz from
  total_field = local + background; SE echo: M0 exp(-R2 TE). Complex Gaussian noise of
  sigma = mean brain M0 / snr on real and imaginary parts. Signal only inside the head.
* A B0 tilt is an oblique acquisition: the affine is rotated so that
  ``physics.b0_direction_from_affine(affine) == b0_dir`` (B0 along world S).
"""
from __future__ import annotations

from .acquisition import SimulatedHead, _affine, _block_average_head, _block_mean, _block_pick, _gre
from .anatomy import (AIR_POCKETS, CHI_TISSUE_VS_AIR, NUCLEI, TISSUE_LABELS, TISSUE_VALUES, VEINS,
                      _air_tissue_source, _anatomy, _draw_subject)
from .head import simulate_head
from .lesions import _lesion_table, _place_lesions, _renumber_lesions
from .template import _template, _template_dir
from .writing import TRUTH_FILES, write_simulation

__all__ = ["AIR_POCKETS", "CHI_TISSUE_VS_AIR", "NUCLEI", "TISSUE_LABELS", "TISSUE_VALUES", "TRUTH_FILES", "VEINS",
           "SimulatedHead", "simulate_head", "write_simulation",
           # used by chisep.training and the tests
           "_affine", "_air_tissue_source", "_anatomy", "_block_average_head", "_block_mean", "_block_pick",
           "_draw_subject", "_gre", "_lesion_table", "_place_lesions", "_renumber_lesions", "_template",
           "_template_dir"]
