"""Training of our own chi-sepnet weights on simulated data.

* :mod:`chisep.training.config`: every training setting, declared once (``chisep train``'s options).
* :mod:`chisep.training.data`: the cache of simulated heads and random-shape volumes run through the
  inference chain (``chisep train-cache``), and the physics-exact patch sampler.
* :mod:`chisep.training.losses`: the published loss (L1 + 0.1 GDL + physics terms in ppm).
* :mod:`chisep.training.loop`: resumable, seeded training, validation, export to safetensors.

The loss names are loaded on first use (they import torch; the settings must not).
"""
__all__ = ["LossWeights", "chisep_loss", "dipole_convolve", "gradient_difference_loss", "r2prime_loss"]


def __getattr__(name):
    if name in __all__:
        from . import losses

        return getattr(losses, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
