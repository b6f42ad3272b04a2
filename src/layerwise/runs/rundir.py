"""Run directories: created atomically, locked while a process trains in them.

A new run is staged in a hidden folder next to its final place (``.NAME-….partial``), its first
files are written there, and the folder is renamed into place in one step. So no process, crash or
full disk ever leaves a run directory without its config and data description, and two jobs
started in the same second cannot pick the same directory: ``rename`` onto a folder that already
holds files fails, and the loser takes the next name.

The process training in a run holds an advisory ``flock`` on the run's ``.lock`` file (the
mechanism of pip's and Git's lock files, minus the stale-file problem: the kernel drops the lock
when the process dies, even by SIGKILL). A second writer — another ``--resume`` of the same run —
is refused in one line. POSIX only; on Windows runs are not locked.
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from ..core.errors import RunLockedError
from ..core.io import atomic_write, file_mode

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ["RunLock", "create_run_dir"]

LOCK_FILE = ".lock"


class RunLock:
    """An exclusive lock on a run directory, held until :meth:`release` (or the process ends)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        if fcntl is None:
            return self
        lock = self.path / LOCK_FILE
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLockedError(f"{self.path} is being trained by another process (pid {holder}); wait for it to "
                                 f"finish or stop it, then --resume") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def create_run_dir(runs_dir: Path, name: str, files: dict[str, Callable[[str], None]]) -> tuple[Path, RunLock]:
    """Create ``runs_dir/NAME-TIMESTAMP[-N]`` holding ``files`` (file name → ``write(tmp_path)``),
    atomically, and return it locked."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    _sweep_stale(runs_dir)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    staged = Path(tempfile.mkdtemp(prefix=f".{name}-{stamp}-", suffix=".partial", dir=runs_dir))
    lock = RunLock(staged)
    try:
        os.chmod(staged, file_mode(directory=True))  # mkdtemp's 0700 would hide the run from the user's group
        lock.acquire()  # the lock file moves with the folder: the run is locked from its first moment
        for file, write in files.items():
            atomic_write(staged / file, write)
        path = _claim(staged, runs_dir, f"{name}-{stamp}")
    except BaseException:
        lock.release()
        shutil.rmtree(staged, ignore_errors=True)
        raise
    lock.path = path
    return path, lock


def _claim(staged: Path, runs_dir: Path, base: str) -> Path:
    """Rename ``staged`` to the first free ``base``, ``base-2``, ... (rename is atomic; it fails on an
    existing folder that holds files, which every run directory does)."""
    n = 1
    while True:
        path = runs_dir / (base if n == 1 else f"{base}-{n}")
        if not path.exists():
            try:
                os.rename(staged, path)
                return path
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                    raise
        n += 1


def _sweep_stale(runs_dir: Path) -> None:
    """Remove staging folders left by a process killed while creating its run (unlocked ones only)."""
    now = time.time()
    for staged in runs_dir.glob(".*.partial"):
        try:
            if not staged.is_dir() or now - staged.stat().st_mtime < 60:  # young: maybe not locked yet
                continue
        except OSError:
            continue
        lock = RunLock(staged)
        try:
            lock.acquire()
        except (RunLockedError, OSError):
            continue  # another process is creating it right now
        lock.release()
        shutil.rmtree(staged, ignore_errors=True)
