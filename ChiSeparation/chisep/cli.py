"""The ``chisep`` command line: one entry point, one module per subcommand.

Each subcommand lives in ``chisep/commands/<name>.py`` and provides
``add_parser(subparsers)`` (registers its arguments) and ``run(args) -> int``.
User errors (:class:`chisep.io.InputError`) print a one-line message and exit with code 2;
nothing is written half-way (commands write through :class:`chisep.io.OutputFolder`); an
interrupted run (SIGINT 130, SIGTERM 143) says what was and was not written.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .io import InputError, Terminated
from .options import OptionError

#: subcommand name -> module under chisep.commands (kept in the order --help lists them)
COMMANDS = ["simulate", "preprocess", "run", "lesions", "train", "train_cache", "demo", "bids", "qsmci"]

EPILOG = """units: susceptibility in ppm (|chi_dia| stored as a positive magnitude,
chi_total = chi_para - |chi_dia|); relaxation rates R2*, R2, R2' in Hz (1/s);
echo times in seconds in JSON sidecars (dcm2niix style); local field in ppm unless
--field-unit says otherwise."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chisep",
        description="Chi-separation of brain susceptibility into paramagnetic and diamagnetic maps.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"chisep {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        mod = importlib.import_module(f"chisep.commands.{name}")
        sp = mod.add_parser(sub)
        sp.set_defaults(_run=mod.run)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (InputError, OptionError) as exc:
        where = getattr(exc, "chisep_output", None)
        print(f"chisep {args.command}: error: {exc}" + (f" ({where})" if where else ""), file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as exc:
        what = getattr(exc, "chisep_output", None) or "nothing was written"
        print(f"chisep {args.command}: interrupted; {what}", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
