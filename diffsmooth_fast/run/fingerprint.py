"""Checkpoints told apart by content: the SHA-256 of the file, which a resume compares instead of its path.

Why: a path says where a checkpoint lies, not what it holds. Reinstalling the package moves the demo's models,
a cluster job copies its checkpoints to local disk; the rows of a run still follow from the same bytes, so such
a run must resume. Two checkpoints of one architecture have the same size, so a size says nothing either.

Hashing reads the whole file (about a second per GB), once per process for each (path, size, mtime): the
command line hashes each checkpoint once per run, and tests or scripts that run many times in one process
hash it once.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence

__all__ = ["sha256_of", "sha256_of_files"]

_CHUNK = 1 << 22  # 4 MiB reads: the hash, not the system calls, sets the speed


def sha256_of(path: str | None) -> str | None:
    """The hex SHA-256 of the regular file at ``path``; None when ``path`` is None or not a file (a
    ``module:function`` classifier).

    Raises:
        OSError: the file cannot be read.
    """
    if path is None or not os.path.isfile(path):
        return None
    status = os.stat(path)
    return _digest(os.path.realpath(path), status.st_size, status.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """``size`` and ``mtime_ns`` are part of the key only: a file changed in place is hashed again."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_of_files(paths: Sequence[str]) -> str:
    """One SHA-256 for a model kept as several files (a diffusers folder: config, weights, scheduler config):
    the digest of each file's name and digest, in name order, so the folder may move but not change."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=os.path.basename):
        digest.update(f"{os.path.basename(path)}:{sha256_of(path)}\n".encode())
    return digest.hexdigest()
