"""Atomic file writes: a file is either its old self or its complete new self, never a torn mixture.

Why: a run can be killed (``kill -9``, a preempted node) or meet a full disk in the middle of writing its TSV,
its sidecar or a checkpoint. Writing to a temporary file, fsyncing it and then ``os.replace``-ing it onto the
target means a reader (or a later ``--resume``) sees the old file or the whole new one. The temporary file
``<path>.<pid>.tmp`` lies in the target's own folder because ``os.replace`` is atomic only within one
filesystem, and carries the pid so two processes writing the same target never share one. A failed write
(a full disk, a file-size limit) removes the temporary file and names the target: the error of a write or a
flush names no file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import IO, Any

from .errors import with_filename

__all__ = ["atomic_write", "temporary_path", "write_atomically"]


def temporary_path(path: str | os.PathLike[str]) -> str:
    """Where :func:`atomic_write` writes before the rename: ``<path>.<pid>.tmp``, beside ``path``."""
    return f"{os.fspath(path)}.{os.getpid()}.tmp"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", *, encoding: str = "utf-8") -> Iterator[IO[Any]]:
    """A file object whose contents replace ``path`` in one step when the ``with`` block ends without an error.

    Args:
        path: the file to create or replace; its folder must exist.
        mode: ``"w"`` (text, in ``encoding``) or ``"wb"`` (bytes).

    On success the data is flushed and fsynced, then the temporary file is ``os.replace``-d onto ``path``. On any
    exception (KeyboardInterrupt included) the temporary file is removed, ``path`` is left as it was, and the
    exception propagates; an OSError that names no file (a full disk, ``ulimit -f``) is raised naming ``path``.

    Raises:
        ValueError: an empty ``path`` or a bad ``mode``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    if not os.fspath(path):
        raise ValueError("atomic_write needs a file path, got an empty one")
    tmp = temporary_path(path)
    try:
        with open(tmp, mode, encoding=None if mode == "wb" else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # gone already, or the folder itself fails: the first error matters
            os.remove(tmp)
        if isinstance(exc, OSError) and not exc.filename:
            raise with_filename(exc, os.fspath(path)) from exc
        raise


def write_atomically(path: str | os.PathLike[str], data: str | bytes, *, encoding: str = "utf-8") -> None:
    """Replace ``path`` by ``data`` (text in ``encoding``, or bytes) with :func:`atomic_write`."""
    with atomic_write(path, "wb" if isinstance(data, bytes) else "w", encoding=encoding) as f:
        f.write(data)
