"""One writer per output: an exclusive lock on ``OUT.lock`` for a run's whole life.

Why: two runs on one ``--out`` (the same command started twice, or a ``--resume`` of a run that still lives, as a
requeued cluster job does) both append rows; rows vanish or appear twice and nothing says so. So a run takes
``OUT.lock`` before it looks at ``OUT`` and keeps it until it has written its last byte; a second run is refused
in one line naming the holder (pid, host, start time, written into the lock file).

The lock is the operating system's (``flock``), held through an open file: it dies with its process however
the process ends (kill -9 included), so there is no stale lock to clean up by hand. The file itself is removed
by the holder when it lets go; a process that locked the file just as it was removed notices (the path no
longer names the file it locked) and tries again. flock works across the nodes of NFS (Linux maps it to NFS
locks) and of Lustre mounted with ``-o flock``; where the filesystem has no locks, the run says so and goes on
unlocked rather than not at all.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import platform
import sys
from collections.abc import Iterator

__all__ = ["hold", "lock_path"]

_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # a filesystem without locks


def lock_path(out: str) -> str:
    """The lock file of output ``out``: ``out + ".lock"``, beside it."""
    return out + ".lock"


@contextlib.contextmanager
def hold(out: str) -> Iterator[None]:
    """Hold the exclusive lock on ``out`` (``"-"``, stdout, needs none) for the ``with`` block.

    Makes ``out``'s folder if needed (the lock file lives in it).

    Raises:
        ValueError: another process holds the lock (named: pid, host, start time), or the lock file cannot be
            made.
    """
    if out == "-":
        yield
        return
    path = lock_path(out)
    fd = _acquire(path)
    try:
        yield
    finally:
        if fd is not None:
            # Remove the file while still holding it: a process waiting on this very file then finds that the path
            # names another file (or none) and starts over on a fresh one (_acquire).
            with contextlib.suppress(OSError):
                if _same_file(fd, path):
                    os.remove(path)
            os.close(fd)  # releases the lock


def _acquire(path: str) -> int | None:
    """The descriptor of ``path``, locked and holding this process's description; None where locks do not work."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create the output directory {folder}: {exc.strerror or exc}") from None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ValueError(f"cannot lock the output: {path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            out = path[: -len(".lock")]
            raise ValueError(f"{out} is in use by another run ({holder}; lock file {os.path.basename(path)}): wait "
                             f"for it to end, or choose another --out") from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in _NO_LOCKS:
                print(f"warning: cannot lock {path} ({exc.strerror}): this filesystem has no file locks; make sure "
                      f"no other run writes this output", file=sys.stderr)
                return None
            raise ValueError(f"cannot lock the output: {path}: {exc.strerror or exc}") from None
        if _same_file(fd, path):
            break
        os.close(fd)  # the holder removed the file as it let go: lock the one the path names now
    _write_holder(fd)
    return fd


def _same_file(fd: int, path: str) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _write_holder(fd: int) -> None:
    """Who holds the lock, for the message a second run prints: pid, host, start time (UTC)."""
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    record = json.dumps({"pid": os.getpid(), "host": platform.node(), "started": started}) + "\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode(), 0)
    os.fsync(fd)


def _read_holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {int(record['pid'])} on {record['host']}, started {record['started']}"
    except (OSError, ValueError, KeyError, TypeError):  # it locked the file an instant ago and is writing it
        return "a process that has not yet written its name"
