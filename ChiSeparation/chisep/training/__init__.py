"""Training of our own chi-sepnet weights on simulated data.

* :mod:`chisep.training.data`: the cache of simulated heads and random-shape volumes run through the
  inference chain, and the physics-exact patch sampler.
* :mod:`chisep.training.losses`: the published loss (L1 + 0.1 GDL + physics terms in ppm).
* :mod:`chisep.training.loop`: resumable, seeded training, validation, export to safetensors.
"""
from .losses import LossWeights, chisep_loss, dipole_convolve, gradient_difference_loss, r2prime_loss

__all__ = ["LossWeights", "chisep_loss", "dipole_convolve", "gradient_difference_loss", "r2prime_loss"]
