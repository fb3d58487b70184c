"""Which rows belong to one run: every image once, and only the run's images (every skip-th from 0, as many
as its sessions asked for).

Why: a file holding an image twice or an image the run never certified was written by two runs at once, joined by
hand or by ``cat``; resuming it, or summarising it, would count images twice or count another run's. A resume
refuses such a file (:func:`diffsmooth_fast.run.resume.resumable_rows`), ``analyze`` leaves the rows out and says so.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence


def run_images(record: Mapping[str, object], grid: range, current: int = 0) -> range:
    """The images whose rows a run's file may hold: the first N of ``grid`` (every skip-th image from 0), N the most
    that any session asked for (``--max`` may grow or shrink between sessions; ``current``: this session's).

    A session's count is its ``run_images`` (older single-process sessions: ``images``); where one is unknown,
    all of ``grid``.
    """
    runs = record.get("runs") if isinstance(record.get("runs"), list) else []
    counts = [current]
    for session in runs:
        count = session.get("run_images") if isinstance(session, dict) else None
        if count is None and isinstance(session, dict) and "distributed" not in session:
            count = session.get("images")  # a share's count in distributed sessions, the run's otherwise
        counts.append(count if isinstance(count, int) and count >= 0 else len(grid))
    return grid[: max(counts)] if runs or current else grid


def stray_rows(numbered: Sequence[tuple[int, object]], images: Container[int] | None) -> list[tuple[int, str]]:
    """(line, reason) of every row that no single run of ``images`` (None: any idx >= 0) writes: an idx already
    seen on an earlier line (two writers, or files joined), or one outside ``images``."""
    first: dict[int, int] = {}
    strays = []
    for line, row in numbered:
        idx = row.idx  # type: ignore[attr-defined]
        if idx in first:
            strays.append((line, f"idx {idx} again (first on line {first[idx]})"))
        elif idx < 0 or (images is not None and idx not in images):
            strays.append((line, f"idx {idx} is not one of the run's images ({describe(images)})"))
        else:
            first[idx] = line
    return strays


def describe(images: Container[int] | None) -> str:
    """``0, 5, 10, ..., 355`` for a range (all of it up to 4 images); ``idx >= 0`` for None."""
    if not isinstance(images, range):
        return "idx >= 0" if images is None else "another set"
    if len(images) == 0:
        return "none"
    if len(images) <= 4:
        return ", ".join(str(i) for i in images)
    return f"{images[0]}, {images[1]}, {images[2]}, ..., {images[-1]}"
