"""Certify and predict output files in Cohen et al.'s TSV format, read and written.

Certify rows are ``idx label predict radius correct time``: radius with three significant digits (``{:.3}``)
and time as ``str(datetime.timedelta)``. Older files hold the time as float seconds; the reader accepts both.
Predict rows are ``idx label predict correct time``. Every row is written with one ``write``, flushed and fsynced.
"""

from __future__ import annotations

import datetime
import errno
import io
import os
import re
from dataclasses import dataclass
from typing import TextIO

CERTIFY_HEADER = ("idx", "label", "predict", "radius", "correct", "time")
PREDICT_HEADER = ("idx", "label", "predict", "correct", "time")
# Sequential certify runs add the estimation samples each image used; fixed runs keep Cohen's six columns exactly.
SEQUENTIAL_HEADER = (*CERTIFY_HEADER, "samples")
HEADERS = (CERTIFY_HEADER, SEQUENTIAL_HEADER, PREDICT_HEADER)

_TIMEDELTA = re.compile(r"^(?:(?P<days>-?\d+) days?, )?(?P<h>\d+):(?P<m>\d{2}):(?P<s>\d{2}(?:\.\d+)?)$")


def is_correct(label: int, predict: int) -> int:
    """The ``correct`` column: 1 when the image has a label (not -1) and the prediction is it. An abstention (-1)
    is never correct, not even for an image without a label (-1 too)."""
    return int(label >= 0 and predict == label)


@dataclass(frozen=True)
class CertifyRow:
    """One certified image: prediction -1 means abstain (radius 0.0, correct 0)."""

    idx: int
    label: int
    predict: int
    radius: float
    correct: int
    time: float  # seconds
    samples: int | None = None  # estimation samples drawn (sequential runs only)


def format_certify_row(row: CertifyRow) -> str:
    """The TSV line of ``row`` (without newline), formatted exactly as Cohen et al.'s certify.py."""
    elapsed = datetime.timedelta(seconds=row.time)
    line = f"{row.idx}\t{row.label}\t{row.predict}\t{row.radius:.3}\t{row.correct}\t{elapsed}"
    return line if row.samples is None else f"{line}\t{row.samples}"


def parse_time(text: str) -> float:
    """Seconds from ``0:02:31.433809`` (timedelta), ``1 day, 0:00:01`` or ``15.4`` (float seconds)."""
    match = _TIMEDELTA.match(text)
    if match:
        days = int(match["days"] or 0)
        return days * 86400 + int(match["h"]) * 3600 + int(match["m"]) * 60 + float(match["s"])
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"time {text!r} is neither a timedelta nor seconds") from None
    if not 0.0 <= seconds < float("inf"):
        raise ValueError(f"time {text!r} must be a finite, non-negative number of seconds")
    return seconds


def write_certify_header(stream: TextIO) -> None:
    stream.write("\t".join(CERTIFY_HEADER) + "\n")


def write_certify_row(stream: TextIO, row: CertifyRow, *, sync: bool = True) -> None:
    """Append one row and flush it; with ``sync`` also fsync, so a killed run loses at most this row."""
    write_line(stream, format_certify_row(row), sync=sync)


@dataclass(frozen=True)
class PredictRow:
    """One predicted image (Cohen's predict.py): prediction -1 means abstain (correct 0)."""

    idx: int
    label: int
    predict: int
    correct: int
    time: float  # seconds


def format_predict_row(row: PredictRow) -> str:
    """The TSV line of ``row`` (without newline), formatted exactly as Cohen et al.'s predict.py."""
    return f"{row.idx}\t{row.label}\t{row.predict}\t{row.correct}\t{datetime.timedelta(seconds=row.time)}"


def write_line(stream: TextIO, line: str, *, sync: bool = True) -> None:
    """Append ``line`` and a newline in one write, flush, and (``sync``) fsync when the stream is a real file."""
    stream.write(line + "\n")
    stream.flush()
    if sync and hasattr(stream, "fileno"):
        try:
            os.fsync(stream.fileno())
        except io.UnsupportedOperation:  # an in-memory buffer: nothing to sync
            pass
        except OSError as exc:
            # A pipe or terminal cannot be synced (EINVAL, ENOTSUP): fine. Anything else (ENOSPC, EDQUOT, EIO: a
            # network or delayed-allocation filesystem reports a full disk only here) means the row may not be on
            # disk, so it is raised like a failed write.
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
                raise


def read_certify(path: str | os.PathLike[str], *, torn_tail: bool = False) -> list[CertifyRow]:
    """All rows of a certify TSV. Errors name the file and line.

    With ``torn_tail``, a last line without its newline that does not parse (a run killed mid-write) is
    dropped instead of raising.
    """
    return [row for _, row in _read_table(path, (CERTIFY_HEADER, SEQUENTIAL_HEADER), "certify", torn_tail)[1]]


def read_predict(path: str | os.PathLike[str], *, torn_tail: bool = False) -> list[PredictRow]:
    """All rows of a predict TSV (``idx label predict correct time``); see :func:`read_certify`."""
    return [row for _, row in _read_table(path, (PREDICT_HEADER,), "predict", torn_tail)[1]]


def read_numbered(path: str | os.PathLike[str], headers: tuple[tuple[str, ...], ...] = HEADERS, *,
                  torn_tail: bool = False, problems: list[tuple[int, str]] | None = None
                  ) -> tuple[tuple[str, ...], list[tuple[int, CertifyRow | PredictRow]]]:
    """The header of a file whose header is one of ``headers``, and its rows with their line numbers (1: the header).

    With a ``problems`` list, a line that is not a row (a second header, another number of fields, a bad value)
    is added to it as (line, reason) and skipped; without one it raises ``path:line: reason``. ``torn_tail``: see
    :func:`read_certify`.
    """
    return _read_table(path, headers, "certify" if CERTIFY_HEADER in headers else "predict", torn_tail, problems)


def read_header(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The tab-separated fields of the first line of ``path`` (tells certify files from predict files)."""
    lines, _ = _read_lines(os.fspath(path), "TSV")
    return tuple(lines[0].split("\t")) if lines else ()


def _row(header: tuple[str, ...], fields: list[str]) -> CertifyRow | PredictRow:
    if tuple(fields) in HEADERS:
        raise ValueError("a second header line (files joined with cat?)")
    if len(fields) != len(header):
        raise ValueError(f"expected {len(header)} tab-separated fields, got {len(fields)}")
    return _predict_row(fields) if header == PREDICT_HEADER else _certify_row(fields)


def _certify_row(fields: list[str]) -> CertifyRow:
    return CertifyRow(idx=int(fields[0]), label=int(fields[1]), predict=int(fields[2]), radius=float(fields[3]),
                      correct=int(fields[4]), time=parse_time(fields[5]),
                      samples=int(fields[6]) if len(fields) > 6 else None)


def _predict_row(fields: list[str]) -> PredictRow:
    return PredictRow(idx=int(fields[0]), label=int(fields[1]), predict=int(fields[2]), correct=int(fields[3]),
                      time=parse_time(fields[4]))


def _read_lines(path: str, what: str) -> tuple[list[str], bool]:
    """The file's lines and whether it ends with a newline."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, expected a {what} TSV file") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text file (byte {exc.start} is not UTF-8)") from None
    return text.splitlines(), text.endswith(("\n", "\r"))


def _read_table(path: str | os.PathLike[str], headers: tuple[tuple[str, ...], ...], what: str, torn_tail: bool,
                problems: list[tuple[int, str]] | None = None) -> tuple[tuple[str, ...], list[tuple[int, object]]]:
    """The header and numbered rows of a file whose header is one of ``headers`` (the first is the one an error
    names); see :func:`read_numbered`."""
    path = os.fspath(path)
    lines, terminated = _read_lines(path, what)
    header = tuple(lines[0].split("\t")) if lines else ()
    if header not in headers:
        raise ValueError(f"{path}: not a {what} file (expected the header {' '.join(headers[0])})")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            rows.append((number, _row(header, line.split("\t"))))
        except ValueError as exc:
            if torn_tail and number == len(lines) and not terminated:
                break  # the last line, cut by a kill mid-write
            if problems is None:
                raise ValueError(f"{path}:{number}: {exc}") from None
            problems.append((number, str(exc)))
    return header, rows
