"""Output files of a run: never overwritten by accident, described by a JSON sidecar, resumable after a kill -9.

A run writes ``OUT`` (Cohen's TSV, one row per image, each flushed and fsynced) and ``OUT.json`` (the sidecar:
the settings that decide the results, every option, versions, device and seed; one entry per session in
``runs``). Rerunning the same command with ``--resume`` repairs a torn last line (a row cut by the kill), skips
the images already written and appends the rest; it is refused when the sidecar's settings differ (each
difference listed as ``name: old -> new``; checkpoints compared by content, so moved files still resume), and
when the file holds rows that no single run writes (an idx twice or off the run's images, a second header, other
columns). The TSV is created (header only, atomically) before the sidecar, so a kill between the two leaves a
file with no rows, which a resume simply starts over. (Only one run writes at a time: :mod:`.lock`.)
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Container, Iterator, Mapping
from contextlib import contextmanager
from typing import TextIO

from . import belonging, tsv
from .atomic import atomic_write, write_atomically

SIDECAR_FORMAT = "diffsmooth-fast sidecar 1"


def sidecar_path(out: str) -> str:
    """Where the sidecar of output ``out`` lives: ``out + ".json"``."""
    return out + ".json"


def preflight(out: str, *, resume: bool, overwrite: bool) -> bool:
    """Check the output before any work is done; True when ``out`` exists and will be resumed or replaced.

    Raises:
        ValueError: both flags; --resume on stdout; ``out`` is a directory; its directory cannot be created or
            written; ``out`` exists without --resume or --overwrite.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: pick one")
    if out == "-":
        if resume:
            raise ValueError("--resume needs --out FILE (a run on stdout cannot be resumed)")
        return False
    if os.path.isdir(out):
        raise ValueError(f"--out {out} is a directory; give a file path")
    _check_writable_dir(os.path.dirname(os.path.abspath(out)))
    exists = os.path.lexists(out)
    if exists and not (resume or overwrite):
        raise ValueError(f"{out} exists: pass --resume to continue that run or --overwrite to replace it")
    if exists and not os.access(out, os.W_OK):
        raise ValueError(f"{out} is not writable; choose another --out")
    return exists


def _check_writable_dir(folder: str) -> None:
    probe = folder
    while not os.path.exists(probe):  # the nearest existing ancestor decides whether the folder can be made
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise ValueError(f"cannot create the output directory {folder}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"the output directory {probe} is not writable; choose another --out")


def check_resumable(out: str, header: tuple[str, ...], settings: Mapping[str, object]) -> None:
    """Refuse to resume ``out`` unless its sidecar holds the same ``settings`` (a file with no rows may restart).

    Checkpoints found at another path with the recorded content are accepted, and a line on stderr says so.

    Raises:
        ValueError: the sidecar is missing or unreadable while the file has rows, or the settings differ (each as
            ``name: old -> new``).
    """
    path = sidecar_path(out)
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        if _complete_rows(out, header) == 0:
            return  # killed before the sidecar was written: nothing to lose, start over
        raise ValueError(f"cannot resume {out}: its settings file {path} is missing; pass --overwrite to start over") \
            from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot resume {out}: {path} is not a readable sidecar ({exc})") from None
    old = record.get("settings") if isinstance(record, dict) else None
    if not isinstance(old, dict):
        raise ValueError(f"cannot resume {out}: {path} holds no settings (not written by diffsmooth-fast?); pass "
                         f"--overwrite to start over")
    new = _jsonable(settings)
    diffs = differences(old, new)
    if diffs:
        more = len(diffs) - MAX_SHOWN
        shown = "; ".join(diffs[:MAX_SHOWN]) + (f"; and {more} more" if more > 0 else "")
        raise ValueError(f"refusing to resume {out}, its settings differ: {shown}; rerun with its settings or pass "
                         f"--overwrite to start over")
    for note in moved_checkpoints(old, new):
        print(f"resuming {out}: {note}", file=sys.stderr)


# The settings that name a checkpoint: {"path", "sha256", "bytes", ...}. Older sidecars hold no "sha256".
CHECKPOINTS = ("classifier", "denoiser")
MAX_SHOWN = 6  # differences listed in a refusal; the rest are counted
_ABSENT = object()


def differences(old: Mapping[str, object], new: Mapping[str, object]) -> list[str]:
    """The result settings that differ between sidecar settings ``old`` and ``new``, each ``name: old -> new``
    (nested entries by their dotted names, ``denoiser.flags.num_channels: 128 -> 64``).

    A checkpoint is the same when its content is (``sha256``), wherever it lies; a sidecar written before
    checkpoints were hashed recorded a path and a size, and then the path and size must match.
    """
    a, b = _flat(old), _flat(new)
    named = []
    for name in CHECKPOINTS:
        digest, path = f"{name}.sha256", f"{name}.path"
        if a.get(digest) is not None and b.get(digest) is not None:
            if a[digest] != b[digest]:  # one line for the checkpoint: where each was, and its content
                named.append(f"{name}: {_checkpoint(a.get(path), a[digest], b.get(path), b[digest])}")
            for key in (digest, path, f"{name}.bytes"):
                a.pop(key, None)
                b.pop(key, None)
        else:  # an older sidecar, or no file to hash (a module:function classifier): the path decides
            a.pop(digest, None)
            b.pop(digest, None)
    keys = sorted(set(a) | set(b))
    return named + [f"{key}: {_show(a.get(key, _ABSENT))} -> {_show(b.get(key, _ABSENT))}" for key in keys
                    if a.get(key, _ABSENT) != b.get(key, _ABSENT)]


def moved_checkpoints(old: Mapping[str, object], new: Mapping[str, object]) -> list[str]:
    """One line per checkpoint found at another path than ``old`` recorded, with the same content."""
    notes = []
    for name in CHECKPOINTS:
        was, now = old.get(name), new.get(name)
        if isinstance(was, dict) and isinstance(now, dict) and was.get("sha256") is not None \
                and was.get("sha256") == now.get("sha256") and was.get("path") != now.get("path"):
            notes.append(f"the {name} {now.get('path')} has the content recorded for {was.get('path')} "
                         f"(sha256 {str(now['sha256'])[:12]}), so the rows follow from the same model")
    return notes


def _flat(settings: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _show(value: object) -> str:
    if value is _ABSENT:
        return "(none)"
    return value if isinstance(value, str) else json.dumps(value)


def _checkpoint(old_path: object, old_digest: str, new_path: object, new_digest: str) -> str:
    """``noise_0.25/a.pt (sha256 73c4b5b0809e) -> noise_0.50/a.pt (sha256 2eb9f4e474c7)``: the paths without the
    folders they share, or ``other content at the same path``."""
    digests = f"sha256 {old_digest[:12]} -> {new_digest[:12]}"
    if old_path == new_path or not (isinstance(old_path, str) and isinstance(new_path, str)):
        return f"other content at the same path ({digests})"
    try:
        common = os.path.commonpath([os.path.dirname(old_path), os.path.dirname(new_path)])
    except ValueError:  # one relative, one absolute: show them whole
        common = ""
    old_short, new_short = (os.path.relpath(p, common) if common else p for p in (old_path, new_path))
    return f"{old_short} (sha256 {old_digest[:12]}) -> {new_short} (sha256 {new_digest[:12]})"


def resumable_rows(out: str, header: tuple[str, ...], images: Container[int]) -> list:
    """The rows of ``out`` that a resume keeps, all checked to belong to the run (``images``); a torn last line
    (a kill mid-write) is left out, as a file whose header is torn.

    Raises:
        ValueError: a line that is not a row, or a row no single run of ``images`` writes, named by its line.
    """
    if _complete_rows(out, header) == 0:
        return []
    strays: list[tuple[int, str]] = []
    _, numbered = tsv.read_numbered(out, (header,), torn_tail=True, problems=strays)
    strays = sorted(strays + belonging.stray_rows(numbered, images))
    if strays:
        line, reason = strays[0]
        more = f" (and {len(strays) - 1} more such rows)" if len(strays) > 1 else ""
        raise ValueError(f"cannot resume {out}:{line}: {reason}{more}; no single run writes this file: remove such "
                         f"rows or pass --overwrite to start over")
    return [row for _, row in numbered]


def repair(out: str, header: tuple[str, ...]) -> None:
    """Cut a torn last line (bytes after the last newline) from ``out``; restore a torn header.

    Raises:
        ValueError: ``out`` does not start with ``header``.
    """
    header_line = ("\t".join(header) + "\n").encode()
    with open(out, "r+b") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(header_line):
            if not header_line.startswith(data[: len(header_line)].rstrip(b"\0")):
                raise ValueError(f"cannot resume {out}: it does not start with the header {' '.join(header)}")
            f.seek(0)
            f.truncate()
            f.write(header_line)
        elif not data.startswith(header_line):
            raise ValueError(f"cannot resume {out}: it does not start with the header {' '.join(header)}")
        elif end < len(data):
            f.truncate(end)
        f.flush()
        os.fsync(f.fileno())


def write_sidecar(out: str, record: Mapping[str, object]) -> None:
    """Write ``out``'s sidecar atomically (a temporary file, fsync, then ``os.replace``)."""
    with atomic_write(sidecar_path(out)) as f:
        json.dump(_jsonable(record), f, indent=2)
        f.write("\n")


def read_sidecar(out: str) -> dict:
    """The sidecar of ``out`` as a dict ({} when missing)."""
    try:
        with open(sidecar_path(out), encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


@contextmanager
def open_output(out: str, header: tuple[str, ...], settings: Mapping[str, object], session: Mapping[str, object],
                *, resume: bool) -> Iterator[TextIO]:
    """The output stream, positioned for appending rows; the sidecar written, the header in place.

    ``resume`` continues an existing file (call :func:`check_resumable` first; this repairs it); otherwise the file
    is created or replaced by a header-only file. ``out == "-"`` is stdout (header written, no sidecar).
    """
    if out == "-":
        sys.stdout.write("\t".join(header) + "\n")
        yield sys.stdout
        sys.stdout.flush()
        return
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    record = read_sidecar(out) if resume and os.path.exists(out) else {}
    if resume and os.path.exists(out):
        repair(out, header)
    else:
        write_atomically(out, "\t".join(header) + "\n")
    runs = list(record.get("runs", [])) if same_settings(record, settings) else []
    write_sidecar(out, {"format": SIDECAR_FORMAT, "settings": settings, "runs": [*runs, session]})
    with open(out, "a", encoding="utf-8") as stream:
        yield stream


def same_settings(record: Mapping[str, object], settings: Mapping[str, object]) -> bool:
    """Whether sidecar ``record`` holds ``settings`` (as :func:`differences` compares them)."""
    old = record.get("settings")
    return isinstance(old, dict) and not differences(old, _jsonable(settings))


def _complete_rows(out: str, header: tuple[str, ...]) -> int:
    try:
        with open(out, "rb") as f:
            data = f.read()
    except OSError:
        return 0
    return max(data.count(b"\n") - 1, 0) if data.startswith(("\t".join(header) + "\n").encode()) else 0


def _jsonable(value: object) -> object:
    """``value`` as JSON would give it back (tuples to lists), so stored and current settings compare equal."""
    return json.loads(json.dumps(value))
