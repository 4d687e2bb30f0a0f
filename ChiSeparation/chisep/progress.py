"""Progress reporting for long work: a text bar for people, JSON lines for programs.

Every long function in chisep accepts ``progress(fraction, message)``; these factories make
such callables. ``json`` mode prints one line per update to stdout, e.g.
``{"progress": 0.42, "message": "unwrapping echo 3/5"}`` — the Slicer background process
parses these lines.
"""
from __future__ import annotations

import json
import sys
import time


def make_progress(mode: str = "text", stream=None):
    """Return a ``progress(fraction, message)`` callable for ``mode`` in text|json|none."""
    if mode == "none":
        return None
    if mode == "json":
        out = stream or sys.stdout

        def emit(fraction, message=""):
            out.write(json.dumps({"progress": round(float(fraction), 4), "message": str(message)}) + "\n")
            out.flush()
        return emit
    if mode == "text":
        out = stream or sys.stderr
        state = {"last": -1.0, "t0": time.perf_counter(), "msg": None}

        def bar(fraction, message=""):
            f = min(max(float(fraction), 0.0), 1.0)
            if f - state["last"] < 0.01 and message == state["msg"] and f < 1.0:
                return
            state["last"], state["msg"] = f, message
            n = int(round(f * 30))
            el = time.perf_counter() - state["t0"]
            out.write(f"\r[{'#' * n}{'.' * (30 - n)}] {100 * f:5.1f}% {el:6.1f}s {message[:60]:<60}")
            if f >= 1.0:
                out.write("\n")
            out.flush()
        return bar
    raise ValueError(f"unknown progress mode {mode!r}; use text, json or none")


def scaled(progress, lo: float, hi: float):
    """A progress callable that maps 0..1 onto lo..hi of ``progress`` (or None)."""
    if progress is None:
        return None
    return lambda f, msg="": progress(lo + (hi - lo) * min(max(float(f), 0.0), 1.0), msg)
