"""How a user's mistake reaches the terminal: one line on stderr, ``diffsmooth-fast: error: ...``, exit status 2.

The command line prints the errors that reach it. Processes started by torchrun print theirs a step earlier
(:func:`diffsmooth_fast.run.distributed.agree`): torchrun stops every process as soon as one exits, so each rank
prints its line and waits for the others to have printed theirs before any of them leaves, then raises
:class:`Reported` so that nothing is printed twice.
"""

from __future__ import annotations

import errno
import sys

EXIT_USER_ERROR = 2

# How the allocators say it: CUDA and MPS "out of memory", torch's CPU allocator "can't allocate memory" (older
# versions "not enough memory"), cuBLAS "CUBLAS_STATUS_ALLOC_FAILED".
_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "not enough memory", "ALLOC_FAILED")
# A full disk, a quota or a file-size limit (ulimit -f): the output's disk, not a bug.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class Reported(Exception):
    """An error already printed; the command exits with ``status`` without printing anything more."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def is_user_error(exc: BaseException) -> bool:
    """Errors that are the user's to fix (a setting, a file, a batch too large for the memory): printed as one
    line, not as a traceback."""
    return isinstance(exc, (ValueError, OSError)) or is_out_of_memory(exc)


def one_line(exc: BaseException) -> str:
    """The message of a user error on one line (file errors as ``path: reason``, or the reason alone when the
    error does not say which file)."""
    if is_out_of_memory(exc):  # the allocator's own words run over lines and say nothing of what to do
        return str(out_of_memory(None, None))
    if isinstance(exc, OSError) and not isinstance(exc, ValueError):
        reason = exc.strerror or str(exc)
        return " ".join((f"{exc.filename}: {reason}" if exc.filename else reason).split())
    return " ".join(str(exc).split())  # one line, whatever the message held


def with_filename(exc: OSError, path: str) -> OSError:
    """``exc`` naming ``path`` when it names no file (a failed write or flush names none): the same errno, so
    callers can still tell a full disk from another error."""
    return exc if exc.filename else OSError(exc.errno, exc.strerror or str(exc), path)


def is_disk_full(exc: BaseException) -> bool:
    """A full disk or quota (ENOSPC, EDQUOT) or a file-size limit (EFBIG)."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says that the CPU or a GPU ran out of memory (MemoryError, torch.OutOfMemoryError, or a
    RuntimeError in the allocator's words)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and any(words in str(exc) for words in _OUT_OF_MEMORY)


def out_of_memory(device: object | None, batch: int | None, idx: int | None = None) -> ValueError:
    """The one-line error for running out of memory on ``device`` (None: not known) at ``--batch batch`` (None:
    not known, e.g. ``auto``), certifying image ``idx`` (None: before the first image), with the batch to try."""
    on = "" if device is None else f" on {device}"
    if batch is None:
        return ValueError(f"out of memory{on}: try a smaller --batch, --dtype float16 or another --device")
    at = f"out of memory{on} at --batch {batch}" + ("" if idx is None else f" on image {idx}")
    if batch <= 1:
        return ValueError(f"{at}: even --batch 1 does not fit; try --dtype float16 or another --device")
    if idx is None:
        return ValueError(f"{at}: try --batch {batch // 2} or smaller (results do not depend on it)")
    return ValueError(f"{at}: rerun with --resume --batch {batch // 2} or smaller (the finished rows are kept; "
                      f"results do not depend on --batch)")


def say(text: str) -> None:
    """``text`` and its newline on stderr in one write: print() writes them apart, and the processes of a torchrun
    run share one stderr, where two lines written at once would otherwise interleave into one."""
    sys.stderr.write(f"diffsmooth-fast: {text}\n")
    sys.stderr.flush()


def report(exc: BaseException) -> int:
    """Print ``exc`` as the one-line error on stderr and return the exit status."""
    say(f"error: {one_line(exc)}")
    return EXIT_USER_ERROR
