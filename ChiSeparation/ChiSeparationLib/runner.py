"""Run ``chisep run`` in a background process: command line, progress, cancel (no Qt).

On Windows the process gets no console window (``CREATE_NO_WINDOW`` and a hidden window in its
start-up info, as Slicer's ``slicer.util.launchConsoleProcess`` does) and its own process group
(so Cancel can stop its children); elsewhere it starts a new session for the same reason.

The Slicer widget calls :meth:`ChisepRunner.poll` from a ``QTimer``; poll never blocks. Output is
written into a temporary folder beside the requested one and moved into place only when the process
succeeds, so a cancelled or failed run leaves nothing in the output folder.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from chisep import options as O

RUNNING, SUCCEEDED, FAILED, CANCELLED = "running", "succeeded", "failed", "cancelled"


def _files(v):
    if v is None or v == "":
        return []
    if isinstance(v, (str, os.PathLike)):
        return [os.fspath(v)]
    return [os.fspath(x) for x in v]


def _floats(v):
    """Echo times given as a list or a string ("0.004, 0.008 0.012") -> list of str."""
    if v is None or v == "" or v == []:
        return []
    if isinstance(v, str):
        parts = v.replace(",", " ").split()
    else:
        parts = list(v)
    out = []
    for p in parts:
        x = float(p)
        if not x > 0:
            raise ValueError(f"echo times must be positive seconds, got {p!r}")
        out.append(repr(x))
    return out


def options_from_params(params: dict):
    """The options contract's objects (:mod:`chisep.options`) for a parameters dict: ``(acquisition,
    preprocessing, run)`` options. Raises ValueError (:class:`chisep.options.OptionError`) for a
    choice the contract does not declare."""
    p = dict(params)
    b0 = p.get("b0")
    if b0:
        b0 = float(b0)
        if not b0 > 0:
            raise ValueError(f"field strength must be positive tesla, got {b0}")
    ps = p.get("phase_sign")
    acq = O.AcquisitionOptions(phase_sign=int(ps) if ps not in (None, "", "auto", 0) else None,
                               field_unit=(p.get("field_unit") or "").lower() or None, b0_t=b0 or None)
    pre = O.PreprocessOptions(**{f.name: p[f.name] for f in O.fields(O.PreprocessOptions)
                                 if p.get(f.name) not in (None, "")})
    given = {f.name: p[f.name] for f in O.fields(O.RunOptions) if p.get(f.name) not in (None, "")}
    for k in ("weights", "r2prime_weights", "qsm_weights"):
        if k in given:
            given[k] = os.fspath(given[k])
    return acq, pre, O.RunOptions(**given)


def options_args(acq: "O.AcquisitionOptions", pre: "O.PreprocessOptions", run: "O.RunOptions",
                 raw: bool = True) -> list:
    """The ``chisep run`` option arguments for the contract's option objects (method and device always,
    every other option only where it differs from its default). ``raw``: the preprocessing and phase
    options apply (raw scans); with processed maps they are left out, and the field unit is given with
    the local field."""
    args = O.to_argv(run, always=("method", "device"))
    acq_args = O.to_argv(O.AcquisitionOptions(b0_t=acq.b0_t, phase_sign=acq.phase_sign if raw else None,
                                              phase_unit=acq.phase_unit if raw else "auto"))
    args += acq_args
    if raw:
        args += O.to_argv(pre)
    return args


def build_run_args(params: dict) -> list:
    """The ``chisep run`` arguments (without ``--out``) for a parameters dict.

    Keys: ``gre_mag``, ``gre_phase``, ``se_mag`` (file or list of files), ``r2``; or ``local_field``
    with ``field_unit`` (hz|ppm|rad), ``r2star``, ``r2`` or ``r2prime``, ``mask``; plus the options of
    :mod:`chisep.options` (``method``, ``weights``, ``r2prime_weights``, ``qsm_weights``, ``device``,
    ``precision``, ``bg_method``, ``unwrap``, ``phase_sign``), ``te`` / ``se_te`` (seconds, list or
    string), ``b0`` (tesla). Raises ValueError naming the missing or inconsistent choice.
    """
    p = dict(params)
    acq, pre, run = options_from_params(p)
    args = ["run"]
    raw = bool(_files(p.get("gre_mag")) or _files(p.get("gre_phase")))
    processed = bool(p.get("local_field"))
    if raw and processed:
        raise ValueError("give either raw GRE inputs or processed maps (local field ...), not both")
    if raw:
        mag, pha = _files(p.get("gre_mag")), _files(p.get("gre_phase"))
        if not mag or not pha:
            raise ValueError("raw inputs need both the GRE magnitude and the GRE phase")
        if len(mag) != len(pha):
            raise ValueError(f"{len(mag)} magnitude files but {len(pha)} phase files")
        args += ["--gre-mag", *mag, "--gre-phase", *pha]
        se = _files(p.get("se_mag"))
        if se and p.get("r2"):
            raise ValueError("give either the spin-echo magnitude or an R2 map, not both")
        if se:
            args += ["--se-mag", *se]
        if p.get("r2"):
            args += ["--r2", os.fspath(p["r2"])]
        te = _floats(p.get("te"))
        if te:
            args += ["--te", *te]
        se_te = _floats(p.get("se_te"))
        if se_te:
            args += ["--se-te", *se_te]
        if p.get("mask"):
            args += ["--mask", os.fspath(p["mask"])]
    elif processed:
        unit = acq.field_unit
        if unit is None:
            raise ValueError(f"field unit must be one of {', '.join(O.FIELD_UNITS)}, got {unit!r}")
        for k in ("r2star", "mask"):
            if not p.get(k):
                raise ValueError(f"processed inputs need the {k.replace('r2star', 'R2*')} map")
        if p.get("r2") and p.get("r2prime"):
            raise ValueError("give either R2 or R2' with processed maps, not both")
        args += ["--local-field", os.fspath(p["local_field"]), O.flag(O.get_field(O.AcquisitionOptions, "field_unit")),
                 unit, "--r2star", os.fspath(p["r2star"]), "--mask", os.fspath(p["mask"])]
        if p.get("r2"):
            args += ["--r2", os.fspath(p["r2"])]
        if p.get("r2prime"):
            args += ["--r2prime", os.fspath(p["r2prime"])]
        te = _floats(p.get("te"))
        if unit == "rad":
            if len(te) != 1:
                raise ValueError("a local field in radians needs its echo time (one value, seconds)")
            args += ["--field-te", te[0]]
    else:
        raise ValueError("choose the GRE magnitude and phase, or the processed maps")
    args += options_args(acq, pre, run, raw=raw)
    args += ["--progress", "json"]
    return args


def chisep_command(params: dict, python: str | None = None) -> list:
    """Full argv (without ``--out``) running the core with ``python -m chisep``."""
    return [python or python_executable(), "-m", "chisep", *build_run_args(params)]


def python_executable() -> str:
    """The Python interpreter to start: Slicer's ``PythonSlicer`` launcher when inside Slicer."""
    exe = sys.executable
    base = os.path.basename(exe).lower()
    if base.startswith("slicer"):  # inside the Slicer application sys.executable is Slicer itself
        cand = os.path.join(os.path.dirname(exe), "PythonSlicer" + (".exe" if os.name == "nt" else ""))
        if os.path.exists(cand):
            return cand
    return exe


#: Windows process creation flags (values of the Win32 API, defined here so that every platform can
#: build and test the Windows arguments).
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000
STARTF_USESHOWWINDOW = 0x00000001
SW_HIDE = 0


def popen_kwargs(os_name: str | None = None) -> dict:
    """``subprocess.Popen`` arguments for a background run on ``os_name`` (default: this OS)."""
    if (os_name or os.name) == "nt":
        kwargs = {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
        if hasattr(subprocess, "STARTUPINFO"):
            info = subprocess.STARTUPINFO()
            info.dwFlags |= STARTF_USESHOWWINDOW
            info.wShowWindow = SW_HIDE
            kwargs["startupinfo"] = info
        return kwargs
    return {"start_new_session": True}


class ChisepRunner:
    """A non-blocking background process writing into ``out_dir``.

    ``argv`` is the command without ``--out``; the runner appends ``--out <temporary folder>``
    (a sibling of ``out_dir``) and, on success, moves the files into ``out_dir``.

    Call :meth:`start`, then :meth:`poll` periodically: it returns the new progress events
    ``(fraction or None, message)`` and updates :attr:`state`, :attr:`progress`, :attr:`message`,
    :attr:`error`. :meth:`cancel` stops the whole process group and removes the temporary folder.
    """

    def __init__(self, argv, out_dir, env: dict | None = None, cwd: str | None = None):
        self.argv = [os.fspath(a) for a in argv]
        self.out_dir = os.path.abspath(os.fspath(out_dir))
        self.env = env
        self.cwd = cwd
        self.proc = None
        self.tmp_dir = None
        self.state = None
        self.progress = 0.0
        self.message = ""
        self.error = ""
        self.returncode = None
        self.log = []
        self.stderr_lines = []
        self.started_at = None
        self._q = queue.Queue()
        self._threads = []

    # ------------------------------------------------------------------ life cycle
    def start(self):
        if self.proc is not None:
            raise RuntimeError("runner already started")
        parent = os.path.dirname(self.out_dir)
        os.makedirs(parent, exist_ok=True)
        self.tmp_dir = tempfile.mkdtemp(prefix=".chisep-run-", dir=parent)
        stage = os.path.join(self.tmp_dir, "out")
        kwargs = popen_kwargs()
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(self.argv + ["--out", stage], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
                                     cwd=self.cwd, text=True, encoding="utf-8", errors="replace",
                                     bufsize=1, **kwargs)
        self.state = RUNNING
        self.started_at = time.time()
        for stream, tag in ((self.proc.stdout, "out"), (self.proc.stderr, "err")):
            t = threading.Thread(target=self._reader, args=(stream, tag), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _reader(self, stream, tag):
        try:
            for line in stream:
                self._q.put((tag, line.rstrip("\r\n")))
        except (ValueError, OSError):
            pass
        finally:
            self._q.put((tag, None))

    @staticmethod
    def parse_line(line: str):
        """``(fraction, message)`` from one JSON progress line, or None if it is not one."""
        try:
            obj = json.loads(line)
        except (ValueError, TypeError):
            return None
        if not isinstance(obj, dict) or "progress" not in obj:
            return None
        frac = obj.get("progress")
        try:
            frac = min(max(float(frac), 0.0), 1.0) if frac is not None else None
        except (TypeError, ValueError):
            frac = None
        return frac, str(obj.get("message", ""))

    def _drain(self):
        events = []
        while True:
            try:
                tag, line = self._q.get_nowait()
            except queue.Empty:
                break
            if line is None:
                continue
            if tag == "err":
                self.stderr_lines.append(line)
                continue
            ev = self.parse_line(line)
            if ev is None:
                self.log.append(line)
                continue
            if ev[0] is not None:
                self.progress = ev[0]
            self.message = ev[1] or self.message
            events.append(ev)
        return events

    def poll(self):
        """Non-blocking: new progress events since the last call; finishes the run when it ended."""
        if self.proc is None:
            return []
        events = self._drain()
        if self.state != RUNNING:
            return events
        rc = self.proc.poll()
        if rc is None:
            return events
        for t in self._threads:   # the pipes are closed once the process exits
            t.join(timeout=5)
        events += self._drain()
        self.returncode = rc
        if rc == 0:
            try:
                self._publish()
                self.state = SUCCEEDED
                self.progress = 1.0
            except OSError as exc:
                self.state, self.error = FAILED, f"could not move the results into {self.out_dir}: {exc}"
        else:
            self.state = FAILED
            msg = "\n".join(l for l in self.stderr_lines if l.strip())
            self.error = msg.strip() or f"chisep exited with status {rc}"
        self._cleanup()
        return events

    def wait(self, timeout: float | None = None, interval: float = 0.05):
        """Poll until the run ends (for scripts and tests); returns the final state."""
        t0 = time.time()
        while self.state == RUNNING:
            self.poll()
            if self.state != RUNNING:
                break
            if timeout is not None and time.time() - t0 > timeout:
                raise TimeoutError(f"run still going after {timeout} s")
            time.sleep(interval)
        return self.state

    def cancel(self, grace_s: float = 5.0):
        """Stop the process and its children; nothing is left in the output folder."""
        if self.proc is None or self.state != RUNNING:
            return self.state
        self._signal_group(terminate=True)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self._signal_group(terminate=False)
            self.proc.wait(timeout=grace_s)
        for t in self._threads:
            t.join(timeout=2)
        self._drain()
        self.returncode = self.proc.returncode
        self.state = CANCELLED
        self.message = "cancelled"
        self._cleanup()
        return self.state

    def _signal_group(self, terminate: bool):
        if self.proc.poll() is not None:
            return
        try:
            if os.name == "nt":
                if terminate:
                    self.proc.send_signal(signal.CTRL_BREAK_EVENT)
                else:
                    subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.proc.pid)],
                                   capture_output=True)
            else:
                os.killpg(self.proc.pid, signal.SIGTERM if terminate else signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass

    # ------------------------------------------------------------------ files
    def _publish(self):
        stage = os.path.join(self.tmp_dir, "out")
        os.makedirs(self.out_dir, exist_ok=True)
        if not os.path.isdir(stage):
            return
        for name in os.listdir(stage):
            dst = os.path.join(self.out_dir, name)
            if os.path.isdir(dst) and not os.path.islink(dst):
                shutil.rmtree(dst)
            elif os.path.exists(dst):
                os.remove(dst)
            shutil.move(os.path.join(stage, name), dst)

    def _cleanup(self):
        for s in (self.proc.stdout, self.proc.stderr):
            try:
                s.close()
            except Exception:
                pass
        if self.tmp_dir and os.path.isdir(self.tmp_dir):
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir = None

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @property
    def elapsed_s(self) -> float:
        return 0.0 if self.started_at is None else time.time() - self.started_at
