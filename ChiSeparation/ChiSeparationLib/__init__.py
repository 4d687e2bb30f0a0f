"""MRML-facing logic of the ChiSeparation Slicer module (no Qt).

- :mod:`ChiSeparationLib.mrml`: numpy arrays + RAS affines <-> MRML volume nodes, output nodes,
  colour tables, display and overlay settings, lesion statistics tables.
- :mod:`ChiSeparationLib.background`: the ``chisep run`` command line and a non-blocking runner
  (progress, cancel) for a background process.

Both import only ``slicer`` MRML/VTK classes (available in the ``slicer-core`` wheel), numpy and the
core library ``chisep``; they are tested on a real MRML scene outside the Slicer application.
"""
