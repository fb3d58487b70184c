"""Signals that end a run: SIGTERM and SIGHUP stop it as Ctrl-C does, and a file-size limit is an error.

Schedulers (Slurm, Kubernetes, torchrun's agent) send SIGTERM some time before they kill a job, and closing
a terminal sends SIGHUP; by default either kills Python at once, mid-row, with no word. Inside
:func:`stop_on_signals` they raise :class:`Stopped`, a KeyboardInterrupt, so every ``finally`` and
``except BaseException`` that cleans up after Ctrl-C (atomic writes, the progress bar, the output file's close)
runs as well: the row in progress is lost, every finished row is on disk, and the command line says how to resume
and exits with 128 + the signal's number, as a shell reports a process killed by it. A second signal of the same
kind kills at once (the default action is restored when the first arrives).

SIGXFSZ (a write beyond ``ulimit -f``) is ignored, so that the write raises EFBIG, which names the file, instead
of killing the process; CPython ignores it at start-up already, an embedding interpreter need not.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

# The signals that stop a run cleanly; those missing on a platform (Windows has no SIGHUP) are left out.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Stopped(KeyboardInterrupt):
    """The run was stopped by signal ``signum``; the exit status is ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def status(self) -> int:
        return 128 + self.signum


def _stop(signum: int, frame: FrameType | None) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second one kills: a run that does not stop can still be ended
    raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Stopped` and SIGXFSZ is ignored; the previous
    handlers are restored after it. Only the main thread can install handlers: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = {signum: _stop for signum in STOP_SIGNALS}
    if hasattr(signal, "SIGXFSZ"):
        wanted[signal.SIGXFSZ] = signal.SIG_IGN
    previous = {signum: signal.signal(signum, handler) for signum, handler in wanted.items()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
