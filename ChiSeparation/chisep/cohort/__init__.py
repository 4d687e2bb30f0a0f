"""Cohorts: a BIDS App (``chisep bids``) on Dask, and the QSM-CI stage contract (``chisep qsmci``).

Modules
-------
``layout``     find each subject/session's multi-echo GRE, multi-echo SE, lesion mask and
               segmentation in a BIDS dataset (pybids); derivative file names; nearest-neighbour
               resampling of label maps; the run hash that decides whether a rerun may skip.
``subject``    one subject/session from files to BIDS derivatives (the unit of work of a task).
``engine``     Dask execution: a local cluster, a running scheduler, or SLURM via dask-jobqueue.
``group``      group level: per-subject ROI means, the cohort lesion table, the QC figure.
``simulated``  write simulated heads as a BIDS dataset (tests, benchmarks, demos).
``qsmci``      QSM-CI's ``chi-separation`` and ``r2prime-generation`` stage directories.

The subject function calls the public pipeline (:func:`chisep.preprocess.load_gre`,
:func:`chisep.pipeline.preprocess_raw`, :func:`chisep.pipeline.separate`); it never goes through
the ``chisep run`` argument parser.
"""
