"""chisep: chi-separation core library (numpy/torch/nibabel; never imports slicer or qt).

Susceptibility is in ppm; chi_dia is stored as a positive magnitude |chi_dia|;
chi_total = chi_para - |chi_dia|. Relaxation rates are in Hz (1/s); echo times in seconds.
Arrays are in NIfTI array order (i, j, k[, echo]) with a 4x4 voxel->RAS+ affine in mm.
"""

__version__ = "0.1.0"
