"""Atomic file writes: readers see the old file or the new one, never half of either.

A write that runs out of space raises :class:`~layerwise.core.errors.DiskFullError` saying how much
was free and roughly how much the file needs; the temporary file is removed and the old file is
untouched. New files get the permissions of any other file the user creates (``0666 & ~umask``),
not ``mkstemp``'s private 0600.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from .errors import DiskFullError

__all__ = ["atomic_write", "file_mode", "disk_full_error", "NO_SPACE"]

NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # the disk, the user's quota, the file size limit


def file_mode(directory: bool = False) -> int:
    """The mode ``open``/``mkdir`` would give a new file or folder under the current umask."""
    mask = os.umask(0)  # the only portable way to read it: set it and put it straight back
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def disk_full_error(path: Path, exc: OSError, needed: int | None = None) -> DiskFullError:
    """A one-line error for a write of ``path`` that ran out of space (``needed``: bytes, if known)."""
    path = Path(path)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    what = {errno.EDQUOT: "the disk quota is exhausted", errno.EFBIG: "the file size limit was reached"}.get(
        exc.errno, "no space left on the device")
    free_text = "" if free is None else f"{_size(free)} free"
    need_text = "" if not needed else f"it needs about {_size(needed)}"
    detail = ", ".join(t for t in (free_text, need_text) if t)
    return DiskFullError(f"{path}: {what} while writing it{f' ({detail})' if detail else ''}")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def atomic_write(path: Path, write, durable: bool = True) -> None:
    """Call ``write(tmp_path)``, fsync, then rename onto ``path``: readers see old or new, never half.

    The rename alone survives a killed process; ``durable`` (fsync) also survives a power cut, at
    the price of waiting for the disk: skip it for files that can be rebuilt.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())  # after: a writer may replace the file (safetensors does)
        if durable:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        if os.path.exists(tmp):
            os.unlink(tmp)
        error = _no_space(exc)
        if error is not None:
            # the old file's size is the best guess of the new one's (a checkpoint, the weights)
            needed = max(written, path.stat().st_size if path.exists() else 0)
            raise disk_full_error(path, error, needed or None) from exc
        raise


def _no_space(exc: BaseException) -> OSError | None:
    """The out-of-space OSError behind ``exc``, if any. Libraries wrap it: torch.save into a file
    object raises RuntimeError('unexpected pos') in the context of the failed write; safetensors only
    says so in its message ('No space left on device (os error 28)')."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return exc
        if f"(os error {errno.ENOSPC})" in str(exc):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        exc = exc.__cause__ or exc.__context__
    return None
