"""chi-sepnet: the U-Net (:mod:`.unet`), weight files (:mod:`.weights`) and inference (:mod:`.inference`).

torch is imported by the submodules only; import them explicitly, e.g.
``from chisep.network.inference import run_chisepnet``.
"""
