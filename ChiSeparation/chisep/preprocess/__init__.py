"""From raw multi-echo GRE (+ SE) to the local field, R2*, R2 and R2' on a brain mask.

Each step is a function usable on its own; :func:`preprocess_gre` runs them all.
"""
from .background import lbv, lbv_qsm, pdf, vsharp
from .combine import (combine_echoes, dephasing_significance, echo_fit_residual, initial_frequency,
                      surface_field_correction)
from .inputs import load_echoes, load_gre, phase_to_radians
from .mask import brain_mask, dice, erode, lbv_boundary_mask, partial_volume_surface, reliable_mask
from .pipeline import preprocess_gre
from .relaxometry import r2_from_se, r2star, r2star_arlo, r2star_fit
from .unwrap import make_congruent, smooth_phase, unwrap_echoes, unwrap_laplacian, unwrap_region_growing

__all__ = ["load_gre", "load_echoes", "phase_to_radians", "brain_mask", "erode", "dice",
           "unwrap_laplacian", "unwrap_region_growing", "make_congruent", "smooth_phase", "unwrap_echoes",
           "combine_echoes", "echo_fit_residual", "initial_frequency", "dephasing_significance", "surface_field_correction",
           "partial_volume_surface", "lbv_boundary_mask", "reliable_mask", "vsharp", "lbv", "lbv_qsm", "pdf", "r2star", "r2star_arlo", "r2star_fit", "r2_from_se",
           "preprocess_gre"]
