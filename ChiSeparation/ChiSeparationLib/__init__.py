"""The ChiSeparation Slicer module's logic, without Qt (tested on a real MRML scene of slicer-core).

- :mod:`ChiSeparationLib.logic`: the module's logic (inputs and their echo times / field strength,
  background run, output nodes referenced from the parameter node, overlays, lesion table, sample
  data); raises :class:`ChiSeparationLib.logic.ChiSeparationError` for choices the user must fix.
- :mod:`ChiSeparationLib.parameters`: the parameter node (Slicer's parameterNodeWrapper).
- :mod:`ChiSeparationLib.mrml`: numpy arrays + RAS affines <-> MRML nodes, colour tables, display,
  overlays, lesion tables.
- :mod:`ChiSeparationLib.runner`: the ``chisep run`` command line and a non-blocking background
  process runner (progress, cancel).
- :mod:`ChiSeparationLib.dependencies`: what the core needs beyond Slicer's Python, and what the
  module installs.
- :mod:`ChiSeparationLib.sample`: the shipped sample head.
"""
