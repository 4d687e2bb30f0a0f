"""Reading and writing NIfTI volumes with dcm2niix-style JSON sidecars, atomically.

Every writer here writes to a temporary name and renames, so a failed run leaves nothing
half-written. User-facing problems raise :class:`InputError` with a message that names the file
and says what to fix.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

try:  # POSIX advisory locks; Windows (Slicer) uses msvcrt byte-range locks instead
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

import numpy as np


class InputError(ValueError):
    """Bad user input (file, shape, unit, parameter); the message says what to fix."""


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM while an output is staged."""

    def __init__(self, signum=signal.SIGTERM):
        super().__init__(f"terminated by signal {int(signum)}")
        self.signum = int(signum)


def _file_mode() -> int:
    """The mode a new file gets from the current umask (``0o666 & ~umask``)."""
    with _UMASK_LOCK:
        m = os.umask(0)
        os.umask(m)
    return 0o666 & ~m


_UMASK_LOCK = threading.Lock()


def _nii_base(path) -> str:
    p = str(path)
    for ext in (".nii.gz", ".nii"):
        if p.endswith(ext):
            return p[: -len(ext)]
    return os.path.splitext(p)[0]


def sidecar_path(nifti_path) -> Path:
    """``x.nii.gz`` -> ``x.json``."""
    return Path(_nii_base(nifti_path) + ".json")


def load_nifti(path, *, ndim: int | tuple | None = None, dtype=np.float32):
    """Load a NIfTI volume.

    Returns ``(data, affine)``; ``data`` as ``dtype`` (scaled by the header's slope/intercept),
    ``affine`` the 4x4 voxel->RAS+ matrix (sform if set, else qform).

    Raises :class:`InputError` if the file is missing or unreadable, has the wrong number of
    dimensions, or contains NaN/inf values.
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj).astype(dtype)
    except Exception as exc:  # nibabel raises many types
        raise InputError(f"{path}: not a readable NIfTI file ({exc})") from exc
    # squeeze trailing singleton dims (e.g. X,Y,Z,1)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if data.ndim not in allowed:
            raise InputError(f"{path}: expected a {' or '.join(map(str, allowed))}-D volume, "
                             f"got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        n = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InputError(f"{path}: contains {n} NaN/inf voxels; replace them (e.g. by 0 outside "
                         f"the brain) before running")
    return data, np.asarray(img.affine, dtype=float)


def save_nifti(path, data, affine, *, dtype=np.float32, sidecar: dict | None = None) -> Path:
    """Write ``data`` with ``affine`` to ``path`` atomically (temp file + rename)."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(data)
    if dtype is not None:
        arr = arr.astype(dtype)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=float))
    img.set_sform(np.asarray(affine, dtype=float), code=1)
    img.set_qform(np.asarray(affine, dtype=float), code=1)
    with atomic_file(path, ".nii.gz" if str(path).endswith(".nii.gz") else ".nii") as tmp:
        nib.save(img, tmp)
    if sidecar is not None:
        write_json(sidecar_path(path), sidecar)
    return path


def write_json(path, obj) -> Path:
    """Write JSON atomically."""
    def write(fh):
        json.dump(obj, fh, indent=2, default=_json_default)
        fh.write("\n")
    return write_text_atomically(path, ".json", write)


@contextlib.contextmanager
def atomic_file(path, suffix: str):
    """Yield a temporary file name in ``path``'s folder to write; when the block ends without an
    error the file gets the umask's mode (mkstemp makes 0600) and is renamed to ``path``, so readers
    never see a half-written file; on an error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomically(path, suffix: str, write, newline=None) -> Path:
    """Create the text file ``path`` through :func:`atomic_file`; ``write(fh)`` fills it."""
    with atomic_file(path, suffix) as tmp:
        with open(tmp, "w", newline=newline) as fh:
            write(fh)
    return Path(path)


def _tsv_cell(v) -> str:
    """One TSV cell in the BIDS convention: ``n/a`` for missing or non-finite, 1/0 for booleans."""
    if v is None:
        return "n/a"
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (float, np.floating)):
        return "n/a" if not np.isfinite(v) else f"{float(v):.6g}"
    return str(v).replace("\t", " ")


def write_tsv(path, cols, rows) -> Path:
    """Write rows (dicts) as a tab-separated table with the header ``cols``, atomically; missing keys
    and non-finite numbers are ``n/a``. The file follows the umask."""
    def write(fh):
        fh.write("\t".join(cols) + "\n")
        for r in rows:
            fh.write("\t".join(_tsv_cell(r.get(c)) for c in cols) + "\n")
    return write_text_atomically(path, ".tsv", write)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def file_sha256(path) -> str:
    """SHA-256 hex digest of a file (for provenance in reports)."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_sidecar(nifti_path) -> dict:
    """The dcm2niix-style JSON sidecar of a NIfTI file, or ``{}`` if there is none."""
    p = sidecar_path(nifti_path)
    if not p.exists():
        return {}
    try:
        obj = json.loads(p.read_text())
    except Exception as exc:
        raise InputError(f"{p}: sidecar is not valid JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise InputError(f"{p}: sidecar is JSON but not an object of key: value pairs "
                         f"(got {type(obj).__name__}); fix or remove it")
    return obj


# --------------------------------------------------------------------------- output folders
#: hidden files of the output-folder protocol (see :class:`OutputFolder`)
LOCK_NAME = ".chisep.lock"
MANIFEST_NAME = ".chisep_outputs.json"
STAGING_PREFIX = ".staging_"
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _raise_terminated(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def _sigterm_raises():
    """In the main thread, SIGTERM raises :class:`Terminated` (so ``finally`` blocks run)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.getsignal(signal.SIGTERM)
    if old in (signal.SIG_IGN,) or old is _raise_terminated:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def _signals_blocked():
    """SIGINT/SIGTERM held back (acted on afterwards) while a short critical section runs.

    Done with Python-level handlers that only record the signal (Python runs handlers in the main
    thread whichever thread the kernel picked, so this holds in a process with worker threads,
    where ``pthread_sigmask`` on the main thread would not); the recorded signal is then acted on
    with the handler that was in place before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    old = {s: signal.getsignal(s) for s in _SIGNALS}

    def record(signum, frame):
        pending.append(signum)
    for s in _SIGNALS:
        signal.signal(s, record)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if pending:
            s = pending[0]
            h = old[s]
            if callable(h):
                h(s, None)
            elif h == signal.SIG_DFL:
                if s == signal.SIGINT:
                    raise KeyboardInterrupt
                raise Terminated(s)


def _user_files(folder: Path) -> list:
    """Relative paths of the files in ``folder`` that are not part of the output protocol."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        top = rel.parts[0]
        if top in (LOCK_NAME, MANIFEST_NAME) or top.startswith(STAGING_PREFIX) or p.is_dir():
            continue
        out.append(rel.as_posix())
    return out


def _read_manifest(folder: Path) -> list:
    p = folder / MANIFEST_NAME
    if not p.is_file():
        return []
    try:
        files = json.loads(p.read_text()).get("files", [])
        return [str(f) for f in files if isinstance(f, str)]
    except (ValueError, OSError, AttributeError):
        return []


def check_output_dir(out_dir, overwrite: bool = False, option: str = "--out") -> Path:
    """Check, without writing anything, that ``out_dir`` can take one run's outputs.

    Raises :class:`InputError` when the path is a file, lies below a file, cannot be created or
    written, or holds files: files of an earlier chisep run are refused unless ``overwrite``
    (they are then replaced when the new run commits); files of anything else are always refused.
    """
    p = Path(out_dir)
    if str(out_dir) == "":
        raise InputError(f"{option}: empty path; give the output folder")
    if p.exists() and not p.is_dir():
        raise InputError(f"{option} {p}: is a file, not a folder; give a folder (it is created if missing)")
    if not p.exists():
        anc = p
        while not anc.exists():
            if anc.parent == anc:
                break
            anc = anc.parent
        if anc.exists() and not anc.is_dir():
            raise InputError(f"{option} {p}: cannot be created because {anc} is a file; give a folder path")
        if not os.access(anc, os.W_OK | os.X_OK):
            raise InputError(f"{option} {p}: cannot be created: {anc} is not writable; choose a folder you can write to")
        return p
    if not os.access(p, os.W_OK | os.X_OK):
        raise InputError(f"{option} {p}: folder is not writable; choose a folder you can write to")
    files = _user_files(p)
    if files:
        earlier = set(_read_manifest(p))
        foreign = [f for f in files if f not in earlier]
        if foreign:
            raise InputError(
                f"{option} {p}: folder is not empty and holds {len(foreign)} file(s) that are not from an "
                f"earlier chisep run ({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); "
                f"give an empty or new folder (one folder holds one run's files)")
        if not overwrite:
            raise InputError(
                f"{option} {p}: folder holds an earlier run's {len(files)} file(s) ({', '.join(files[:4])}"
                f"{', ...' if len(files) > 4 else ''}); pass --overwrite to replace them, or give a new folder")
    return p


def _try_lock(fd):
    """Exclusive, non-blocking lock of an open file; OSError when another process holds it."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:  # pragma: no cover - Windows
        import msvcrt
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)


class OutputFolder:
    """One run's output folder: exclusive, all-or-nothing, holding exactly one run's files.

    Use as a context manager around the computation::

        with OutputFolder(out, overwrite=False) as o:
            ... compute ...
            save_nifti(o.stage / "chi_para.nii.gz", ...)
        print(o.message)

    - **checks** (:func:`check_output_dir`) before anything is written;
    - **lock**: ``.chisep.lock`` (an ``flock``) so a second run into the same folder is refused
      with :class:`InputError`; the kernel releases it when a process dies;
    - **staging** inside the target (``.staging_<pid>_*``): files are written there and only moved
      into the folder on success; stale staging folders of killed runs are removed by the next run;
    - **signals**: SIGTERM raises :class:`Terminated` and SIGINT ``KeyboardInterrupt`` while the
      folder is open; both remove the staging folder and leave the folder as it was; the final moves
      run with SIGINT/SIGTERM held back (acted on once the moves are done), so a signal cannot split
      a run's file set;
    - **one run's files**: the folder's earlier run files are listed in ``.chisep_outputs.json``;
      ``overwrite=True`` removes them when the new run commits (not before: a failed run keeps them);
    - ``message`` says exactly what was and was not written; ``written`` lists the files.
    A folder this object created is removed again when nothing was committed.
    Only SIGKILL or a power cut during the final moves (milliseconds) can leave a mixed set; the
    next run then refuses the folder as holding foreign files.
    """

    def __init__(self, path, overwrite: bool = False, option: str = "--out"):
        self.path = Path(path)
        self.overwrite = bool(overwrite)
        self.option = option
        self.stage = None
        self.written = []
        self.removed = []
        self.committed = False
        self.message = f"nothing was written to {self.path}"
        self._fd = None
        self._created = False

    # -- lock
    def _lock(self):
        lock = self.path / LOCK_NAME
        for _ in range(5):
            fd = os.open(str(lock), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _try_lock(fd)
            except (BlockingIOError, PermissionError):
                try:
                    other = os.read(fd, 64).decode(errors="replace").strip() or "?"
                finally:
                    os.close(fd)
                raise InputError(f"{self.option} {self.path}: another chisep run (pid {other}) is writing to "
                                 f"this folder; wait for it to finish or choose another folder") from None
            try:  # the file may have been removed by the previous holder between open and flock
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                self._fd = fd
                return
            os.close(fd)
        raise InputError(f"{self.option} {self.path}: could not lock the folder; try again")

    def _unlock(self):
        if self._fd is None:
            return
        try:
            os.unlink(self.path / LOCK_NAME)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def clean_stale(self) -> list:
        """Remove staging folders and temp files left by killed runs (the lock must be held)."""
        gone = []
        for p in self.path.iterdir():
            if p.name.startswith(STAGING_PREFIX) and p != self.stage:
                shutil.rmtree(p, ignore_errors=True)
                gone.append(p.name)
            elif p.name.startswith(".tmp_") and p.is_file():
                p.unlink()
                gone.append(p.name)
        return gone

    def __enter__(self):
        check_output_dir(self.path, self.overwrite, self.option)
        self._sig = _sigterm_raises()
        self._sig.__enter__()
        try:
            try:
                if not self.path.exists():
                    self.path.mkdir(parents=True)
                    self._created = True
                self._lock()
            except OSError as exc:
                raise InputError(f"{self.option} {self.path}: cannot write there ({exc.strerror or exc}); "
                                 f"choose a folder you can write to") from None
            self.stale_removed = self.clean_stale()
            check_output_dir(self.path, self.overwrite, self.option)   # again, under the lock
            self.stage = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}_", dir=self.path))
        except BaseException:
            self._abort()
            raise
        return self

    def _abort(self):
        if self.stage is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
        self._unlock()
        if self._created:
            try:
                self.path.rmdir()
            except OSError:
                pass
        self._sig.__exit__(None, None, None)

    def __exit__(self, et, ev, tb):
        if et is not None:
            self._abort()
            if isinstance(ev, BaseException):
                ev.chisep_output = self.message   # "nothing was written to ..."
            return False
        try:
            with _signals_blocked():
                self._commit()
            shutil.rmtree(self.stage, ignore_errors=True)
            self._unlock()
            self._sig.__exit__(None, None, None)
        except BaseException as exc:
            self._abort()
            exc.chisep_output = (f"the run had already finished and {self.message}" if self.committed
                                 else self.message)
            raise
        return False

    def _commit(self):
        new = _user_files(self.stage)
        old = _read_manifest(self.path) if self.overwrite else []
        man = self.path / MANIFEST_NAME
        if man.exists():
            man.unlink()
        for rel in old:
            if rel not in new and (self.path / rel).is_file():
                (self.path / rel).unlink()
                self.removed.append(rel)
        for rel in new:
            dst = self.path / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.stage / rel, dst)
        for rel in sorted({str(Path(r).parent) for r in self.removed}, key=len, reverse=True):
            if rel != ".":
                try:
                    (self.path / rel).rmdir()
                except OSError:
                    pass
        write_json(man, {"files": new, "pid": os.getpid()})
        self.written = new
        self.committed = True
        msg = f"wrote {len(new)} files to {self.path}: {', '.join(new)}"
        if self.removed or old:
            msg += f"; replaced the earlier run's files ({len(old)}; removed {len(self.removed)} not written again" \
                   f"{': ' + ', '.join(self.removed) if self.removed else ''})"
        self.message = msg


@contextlib.contextmanager
def atomic_output_dir(out_dir):
    """Context manager yielding a staging directory; on success its files move into ``out_dir``.

    A lower-level helper than :class:`OutputFolder` (no lock, no emptiness rule: files are added to
    ``out_dir``). On an exception or a signal (SIGINT, SIGTERM) nothing is written to ``out_dir``
    (the staging folder ``.staging_*`` inside it is removed); the final moves run with the signals
    held back.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _sigterm_raises():
        stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
        try:
            yield stage
            with _signals_blocked():
                for src in sorted(stage.rglob("*")):
                    rel = src.relative_to(stage)
                    dst = out_dir / rel
                    if src.is_dir():
                        dst.mkdir(parents=True, exist_ok=True)
                    else:
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(src, dst)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
