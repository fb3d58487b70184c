"""Certify and predict output files in Cohen et al.'s TSV format, read and written.

Certify rows are ``idx label predict radius correct time``: radius with three significant digits (``{:.3}``)
and time as ``str(datetime.timedelta)``. Older files hold the time as float seconds; the reader accepts both.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from typing import TextIO

CERTIFY_HEADER = ("idx", "label", "predict", "radius", "correct", "time")
PREDICT_HEADER = ("idx", "label", "predict", "correct", "time")

_TIMEDELTA = re.compile(r"^(?:(?P<days>-?\d+) days?, )?(?P<h>\d+):(?P<m>\d{2}):(?P<s>\d{2}(?:\.\d+)?)$")


@dataclass(frozen=True)
class CertifyRow:
    """One certified image: prediction -1 means abstain (radius 0.0, correct 0)."""

    idx: int
    label: int
    predict: int
    radius: float
    correct: int
    time: float  # seconds


def format_certify_row(row: CertifyRow) -> str:
    """The TSV line of ``row`` (without newline), formatted exactly as Cohen et al.'s certify.py."""
    elapsed = datetime.timedelta(seconds=row.time)
    return f"{row.idx}\t{row.label}\t{row.predict}\t{row.radius:.3}\t{row.correct}\t{elapsed}"


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
    stream.write(format_certify_row(row) + "\n")
    stream.flush()
    if sync and hasattr(stream, "fileno"):
        try:
            os.fsync(stream.fileno())
        except (OSError, ValueError):  # not a real file (a pipe or an in-memory buffer)
            pass


def read_certify(path: str | os.PathLike[str]) -> list[CertifyRow]:
    """All rows of a certify TSV. Errors name the file and line."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such certify file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, expected a certify TSV file") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text file (byte {exc.start} is not UTF-8)") from None
    if not lines or tuple(lines[0].split("\t")) != CERTIFY_HEADER:
        raise ValueError(f"{path}: not a certify file (expected the header {' '.join(CERTIFY_HEADER)})")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(CERTIFY_HEADER):
            raise ValueError(f"{path}:{number}: expected {len(CERTIFY_HEADER)} tab-separated fields, got {len(fields)}")
        try:
            rows.append(
                CertifyRow(
                    idx=int(fields[0]),
                    label=int(fields[1]),
                    predict=int(fields[2]),
                    radius=float(fields[3]),
                    correct=int(fields[4]),
                    time=parse_time(fields[5]),
                )
            )
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: {exc}") from None
    return rows
