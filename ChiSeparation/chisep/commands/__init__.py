"""Subcommands of the ``chisep`` CLI (see :mod:`chisep.cli`)."""
