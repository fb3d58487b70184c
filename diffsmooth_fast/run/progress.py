"""Progress of a run on stderr: a bar with ETA and running certified accuracy on a terminal, a line per image
otherwise (logs of batch jobs), nothing with --quiet."""

from __future__ import annotations

import datetime
import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


class Progress:
    """Reports each finished image; ``already`` rows (radius, correct) come from a resumed file.

    Args:
        total: images in the whole run (done before included).
        already: (radius, correct) of the rows already in the file; radius None for predict rows.
        stream: where to write (stderr); ``tty`` None asks the stream.
        quiet: write nothing.
        label: prefix of every line (``rank 1/4``), for processes that share a terminal.
    """

    def __init__(self, total: int, already: list[tuple[float | None, int]], *, stream: TextIO | None = None,
                 quiet: bool = False, tty: bool | None = None, label: str = "") -> None:
        self.total, self.rows = total, list(already)
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty() if tty is None and hasattr(self.stream, "isatty") else bool(tty)
        self.start, self.session = time.perf_counter(), 0
        self.samples: list[int] = []  # a sequential run's samples per image, this session's images
        self.labelled = True  # a run's images are all labelled or all not (data.check_labels): the first one tells
        self.label = f"{label}: " if label else ""
        if self.rows and not quiet:
            print(f"{self.label}resuming: {len(self.rows)} of {total} images already done", file=self.stream,
                  flush=True)
        if self.tty and not quiet and len(self.rows) < total:  # an image can take minutes: show the bar at once
            self._bar("ETA --:--:--")

    def update(self, idx: int, label: int, predict: int, radius: float | None, correct: int, seconds: float,
               samples: int | None = None) -> None:
        """One image done; ``samples``: the estimation samples a sequential run drew for it."""
        self.rows.append((radius, correct))
        self.session += 1
        if samples is not None:
            self.samples.append(samples)
        self.labelled = label >= 0
        if self.quiet:
            return
        done = len(self.rows)
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.session * max(self.total - done, 0)
        running = self._running()
        if self.tty:
            self._bar(f"ETA {_duration(eta)} | {running}")
            if done >= self.total:
                self.stream.write("\n")
        else:
            what = f"radius {radius:.3f} " if radius is not None else ""
            drawn = f" ({samples:,} samples)" if samples is not None else ""
            self.stream.write(f"{self.label}[{done}/{self.total}] idx {idx}: predict {predict} (label {label}) {what}"
                              f"in {seconds:.2f}s{drawn}; {running}; ETA {_duration(eta)}\n")
        self.stream.flush()

    def _bar(self, text: str) -> None:
        width, done = 24, len(self.rows)
        filled = int(width * min(done, self.total) / max(self.total, 1))
        bar = f"[{'#' * filled}{'.' * (width - filled)}]"
        self.stream.write(f"\r{self.label}{bar} {done}/{self.total} {text}".ljust(100))
        self.stream.flush()

    def close(self) -> None:
        """End a bar left unfinished (an error or a partial run)."""
        if self.tty and not self.quiet and self.session and len(self.rows) < self.total:
            self.stream.write("\n")
            self.stream.flush()

    def _running(self) -> str:
        cost = f"; {sum(self.samples) / len(self.samples):,.0f} samples/image" if self.samples else ""
        return self._accuracy() + cost

    def _accuracy(self) -> str:
        if not self.labelled:  # an unlabelled image is never correct: a running accuracy of 0 would mislead
            return "no labels: accuracy not defined"
        n = len(self.rows)
        correct = sum(c for _, c in self.rows)
        if any(r is None for r, _ in self.rows):
            return f"accuracy {correct / n:.3f}"
        acr = sum(r * c for r, c in self.rows) / n
        return f"certified accuracy (r=0) {correct / n:.3f}, ACR {acr:.3f}"
