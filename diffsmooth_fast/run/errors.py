"""How a user's mistake reaches the terminal: one line on stderr, ``diffsmooth-fast: error: ...``, exit status 2.

The command line prints the errors that reach it. Processes started by torchrun print theirs a step earlier
(:func:`diffsmooth_fast.run.distributed.agree`): torchrun stops every process as soon as one exits, so each rank
prints its line and waits for the others to have printed theirs before any of them leaves, then raises
:class:`Reported` so that nothing is printed twice.
"""

from __future__ import annotations

import sys

EXIT_USER_ERROR = 2


class Reported(Exception):
    """An error already printed; the command exits with ``status`` without printing anything more."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def is_user_error(exc: BaseException) -> bool:
    """Errors that are the user's to fix (a setting, a file): printed as one line, not as a traceback."""
    return isinstance(exc, (ValueError, OSError))


def one_line(exc: BaseException) -> str:
    """The message of a user error on one line (file errors as ``path: reason``)."""
    if isinstance(exc, OSError) and not isinstance(exc, ValueError):
        return f"{exc.filename or ''}: {exc.strerror or exc}"
    return " ".join(str(exc).split())  # one line, whatever the message held


def say(text: str) -> None:
    """``text`` and its newline on stderr in one write: print() writes them apart, and the processes of a torchrun
    run share one stderr, where two lines written at once would otherwise interleave into one."""
    sys.stderr.write(f"diffsmooth-fast: {text}\n")
    sys.stderr.flush()


def report(exc: BaseException) -> int:
    """Print ``exc`` as the one-line error on stderr and return the exit status."""
    say(f"error: {one_line(exc)}")
    return EXIT_USER_ERROR
