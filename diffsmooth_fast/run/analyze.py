"""Summaries of certify and predict TSV files: certified accuracy at radii, ACR, abstain rate, clean accuracy and
time per image, as text, Markdown, LaTeX (a table like the paper's Table 1, best value in bold) or JSON, and a
plot of certified accuracy against radius.

Reads Cohen et al.'s files as they are: both time formats, interrupted runs, and a torn last line. What no single
run writes (a repeated image, an image outside the run, a second header, a ``correct`` that contradicts the row)
is reported on stderr, one line each, and no image counts twice.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..smoothing import stats
from . import belonging, resume, tsv

# The paper's tables: Table 1 (CIFAR-10) at 0, 0.25, ..., 2.25; Table 2 (ImageNet) at 0, 0.5, ..., 3.0.
PAPER_RADII = {
    "cifar10": tuple(round(0.25 * i, 2) for i in range(10)),
    "imagenet": tuple(round(0.5 * i, 1) for i in range(7)),
}
DEFAULT_RADII = PAPER_RADII["cifar10"]


@dataclass(frozen=True)
class Summary:
    """One file's numbers; the certified fields are None for predict files, every rate None for an empty file, the
    accuracies and ACR None for a file without labels.

    certified_accuracy: radius -> fraction of rows with correct == 1 and radius >= r.
    """

    path: str
    kind: str  # "certify" or "predict"
    n: int
    clean_accuracy: float | None
    abstain_rate: float | None
    time_per_image: float | None  # seconds
    acr: float | None = None
    certified_accuracy: dict[float, float] | None = None
    samples_per_image: float | None = None  # sequential runs: estimation samples, mean and median per image
    median_samples: float | None = None
    labelled: bool = True  # False: no row has a label, so every accuracy (and the ACR) is None


def parse_radii(text: str) -> tuple[float, ...]:
    """``cifar10``, ``imagenet`` (the paper's tables) or comma-separated non-negative radii."""
    if text in PAPER_RADII:
        return PAPER_RADII[text]
    try:
        radii = tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError:
        raise ValueError(f"--radii must be cifar10, imagenet or numbers like 0,0.25,0.5; got {text!r}") from None
    if not radii or any(not math.isfinite(r) or r < 0 for r in radii):
        raise ValueError(f"--radii must be non-negative finite numbers, got {text!r}")
    return radii


def summarize(path: str, radii: Sequence[float] = DEFAULT_RADII, *, warn: Callable[[str], None] | None = None
              ) -> Summary:
    """The summary of one certify or predict file (told apart by the header).

    Every row counts once: a line that is not a row, an idx seen before (two writers, files joined) and, where the
    file's sidecar says which images the run certified, an idx outside them are left out, and each is reported
    through ``warn`` (default: a line on stderr), as are rows whose ``correct`` contradicts their label and
    prediction and radii that are negative or not a number. When no row has a label (-1: an image folder, an
    .npz without labels) accuracy is not defined: the accuracies and ACR are None.

    Raises:
        ValueError: the file is missing or is not a certify or predict file.
    """
    warn = warn or _warn
    kind, rows = counted_rows(path, warn=warn)
    summary = _common(path, kind, rows, [r.predict for r in rows])
    if rows and all(r.label == -1 for r in rows):
        warn(f"{path}: no row has a label (label -1): accuracy is not defined")
        return replace(summary, clean_accuracy=None, labelled=False)
    if kind == "predict" or not rows:
        return summary
    radius, correct = [r.radius for r in rows], [r.correct for r in rows]
    acc = stats.certified_accuracy(radius, correct, list(radii))
    samples = [r.samples for r in rows if r.samples is not None]
    return replace(summary, acr=stats.average_certified_radius(radius, correct),
                   certified_accuracy={float(r): float(a) for r, a in zip(radii, acc)},
                   samples_per_image=float(np.mean(samples)) if samples else None,
                   median_samples=float(np.median(samples)) if samples else None)


def counted_rows(path: str, *, warn: Callable[[str], None]) -> tuple[str, list]:
    """("certify" or "predict", the rows of ``path`` that count: each image once, only the run's images; see
    :func:`summarize`), reporting every row left out and every contradiction through ``warn``."""
    unreadable: list[tuple[int, str]] = []
    header, numbered = tsv.read_numbered(path, torn_tail=True, problems=unreadable)
    problems = [f"{path}:{line}: {reason}; not counted" for line, reason in unreadable]
    strays = belonging.stray_rows(numbered, _run_images(path, problems))
    problems += [f"{path}:{line}: {reason}; not counted" for line, reason in strays]
    left_out = {line for line, _ in strays}
    numbered = [(line, row) for line, row in numbered if line not in left_out]
    problems += _contradictions(path, numbered)
    for problem in problems[:MAX_PROBLEMS]:
        warn(problem)
    if len(problems) > MAX_PROBLEMS:
        warn(f"{path}: and {len(problems) - MAX_PROBLEMS} more problems")
    return ("predict" if header == tsv.PREDICT_HEADER else "certify"), [row for _, row in numbered]


MAX_PROBLEMS = 20  # lines reported per file; the rest are counted


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def _run_images(path: str, problems: list[str]) -> range | None:
    """The images the run behind ``path`` certified, from its sidecar (None: no sidecar, as Cohen's files)."""
    try:
        with open(resume.sidecar_path(path), encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        problems.append(f"{resume.sidecar_path(path)}: not a readable sidecar ({type(exc).__name__}); the rows are "
                        f"checked for repeated images only")
        return None
    settings = record.get("settings") if isinstance(record, dict) else None
    skip = settings.get("skip") if isinstance(settings, dict) else None
    if not (isinstance(skip, int) and skip >= 1):
        return None
    grid = belonging.run_images(record, range(0, 2**62, skip))
    part = settings.get("part")
    if isinstance(part, dict) and isinstance(part.get("rank"), int) and isinstance(part.get("world_size"), int):
        grid = grid[part["rank"]::part["world_size"]]  # a part file of a torchrun run: one rank's share
    return grid


def _contradictions(path: str, numbered: list[tuple[int, object]]) -> list[str]:
    """Rows that no run writes as they are: ``correct`` other than (label known and predict == label), a radius
    negative or not a number; and unlabelled rows among labelled ones."""
    problems, unlabelled = [], []
    for line, row in numbered:
        expected = tsv.is_correct(row.label, row.predict)
        if row.correct != expected:
            problems.append(f"{path}:{line}: correct is {row.correct} but label {row.label} and predict {row.predict} "
                            f"make it {expected}")
        radius = getattr(row, "radius", 0.0)
        if not radius >= 0.0:
            problems.append(f"{path}:{line}: radius {radius} is negative or not a number")
        if row.label == -1:
            unlabelled.append(line)
    if unlabelled and len(unlabelled) < len(numbered):
        problems.append(f"{path}:{unlabelled[0]}: {len(unlabelled)} rows without a label (-1) among labelled rows; "
                        f"they count as not correct")
    return problems


def _common(path: str, kind: str, rows: list, predict: list[int]) -> Summary:
    n = len(rows)
    if n == 0:
        return Summary(path, kind, 0, None, None, None)
    return Summary(path, kind, n, clean_accuracy=float(np.mean([r.correct for r in rows])),
                   abstain_rate=float(np.mean([p == stats.ABSTAIN for p in predict])),
                   time_per_image=float(np.mean([r.time for r in rows])))


def to_json(summaries: Sequence[Summary]) -> str:
    """``{"files": [{"path", "kind", "n", "acr", "certified_accuracy": {"0.0": ...}, ...}]}``."""
    files = []
    for s in summaries:
        cert = None if s.certified_accuracy is None else {str(r): a for r, a in s.certified_accuracy.items()}
        files.append({"path": s.path, "kind": s.kind, "n": s.n, "acr": s.acr, "certified_accuracy": cert,
                      "clean_accuracy": s.clean_accuracy, "abstain_rate": s.abstain_rate,
                      "time_per_image": s.time_per_image, "samples_per_image": s.samples_per_image,
                      "median_samples": s.median_samples, "labelled": s.labelled})
    return json.dumps({"files": files}, indent=2)


def _columns(radii: Sequence[float]) -> list[str]:
    return ["n", "clean acc", "abstain", "time/img (s)", "ACR", *[f"r={r:g}" for r in radii]]


def _values(s: Summary, radii: Sequence[float]) -> list[float | None]:
    cert = s.certified_accuracy or {}
    return [s.n, s.clean_accuracy, s.abstain_rate, s.time_per_image, s.acr, *[cert.get(float(r)) for r in radii]]


def _best(summaries: Sequence[Summary], radii: Sequence[float]) -> list[float | None]:
    """Per column (ACR and certified accuracies) the best value over two or more files, as shown (3 decimals, so
    values that print alike tie); None where there is nothing to mark (one file, or all zero)."""
    table = [_values(s, radii) for s in summaries]
    best: list[float | None] = [None] * len(_columns(radii))
    for col in range(4, len(best)):
        present = [round(row[col], 3) for row in table if row[col] is not None]
        if len(summaries) > 1 and present and max(present) > 0:
            best[col] = max(present)
    return best


def _is_best(value: float | None, best: float | None) -> bool:
    return value is not None and best is not None and round(value, 3) == best


def _cell(value: float | None, col: int, percent: bool = False) -> str:
    if value is None:
        return "-"
    if col == 0:
        return str(value)
    if col == 3:
        return f"{value:.1f}"
    return f"{100 * value:.1f}" if percent and col != 4 else f"{value:.3f}"


def to_text(summaries: Sequence[Summary], radii: Sequence[float], *, markdown: bool = False) -> str:
    """An aligned text table, or a Markdown table (best values in bold), one row per file."""
    cols, best = ["file", *_columns(radii)], _best(summaries, radii)
    rows = []
    for s in summaries:
        cells = [s.path]
        for col, value in enumerate(_values(s, radii)):
            cell = _cell(value, col)
            cells.append(f"**{cell}**" if markdown and _is_best(value, best[col]) else cell)
        rows.append(cells)
    if any(s.samples_per_image is not None for s in summaries):  # sequential runs: what they cost
        cols.append("samples/img")
        for cells, s in zip(rows, summaries):
            cells.append("-" if s.samples_per_image is None else f"{s.samples_per_image:.0f}")
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(row[i]) for row in [cols, *rows]) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in [cols, *rows])


def to_latex(summaries: Sequence[Summary], radii: Sequence[float]) -> str:
    """A booktabs table like the paper's Table 1: certified accuracy (%) per radius and ACR, best in bold."""
    best = _best(summaries, radii)
    head = "Method & " + " & ".join(f"{r:.2f}" for r in radii) + r" & ACR \\"
    lines = [r"\begin{tabular}{l" + "c" * (len(radii) + 1) + "}", r"\toprule",
             r"& \multicolumn{" + str(len(radii)) + r"}{c}{Certified accuracy (\%) at $\ell_2$ radius $r$} & \\",
             head, r"\midrule"]
    for s in summaries:
        values = _values(s, radii)
        order = [*range(5, len(values)), 4]
        cells = []
        for col in order:
            cell = _cell(values[col], col, percent=True)
            cells.append(rf"\textbf{{{cell}}}" if _is_best(values[col], best[col]) else cell)
        lines.append(_latex_escape(s.path) + " & " + " & ".join(cells) + r" \\")
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"])


def _latex_escape(text: str) -> str:
    for char in ("\\", "&", "%", "$", "#", "_", "{", "}"):
        text = text.replace(char, "\\" + char if char != "\\" else r"\textbackslash{}")
    return text


# Curves are told apart by colour, line style and marker together: with 10 colours, 4 styles and 7 markers
# (pairwise coprime but for 10 and 4), the first lcm(10, 4, 7) = 140 curves look all different, and any two of the
# first 20 differ in colour or style, so they stay apart in print (grey) and for readers who do not see colour.
_COLOURS = tuple(f"C{i}" for i in range(10))
_LINE_STYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "x", "*")


def curve_style(index: int) -> dict[str, str]:
    """Matplotlib's ``color``, ``linestyle`` and ``marker`` of the ``index``-th curve (no two alike below 140)."""
    return {"color": _COLOURS[index % len(_COLOURS)], "linestyle": _LINE_STYLES[index % len(_LINE_STYLES)],
            "marker": _MARKERS[index % len(_MARKERS)]}


def plot(summaries: Sequence[Summary], paths: Sequence[str], out: str) -> int:
    """Certified accuracy against radius, one curve per certify file, saved to ``out`` (png, pdf, svg, ...);
    returns the number of curves drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install matplotlib") from None
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise ValueError(f"--plot {out}: no such directory {folder}")
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = _short_labels(paths)
    curves = 0
    for summary, path, label in zip(summaries, paths, labels):
        if summary.kind != "certify" or summary.n == 0 or not summary.labelled:  # no labels: no accuracy to draw
            continue
        _, rows = counted_rows(path, warn=lambda _: None)  # the rows the table counts; summarize said what it left out
        radius, correct = [r.radius for r in rows], [r.correct for r in rows]
        grid = np.linspace(0.0, max(max(radius), 0.01) * 1.02, 400)
        # markers every 40 points, each curve shifted a little so that curves that coincide still show theirs
        ax.plot(grid, stats.certified_accuracy(radius, correct, grid), label=label, markersize=4,
                markevery=(3 * curves % 40, 40), **curve_style(curves))
        curves += 1
    ax.set_xlabel(r"$\ell_2$ radius")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return curves


def _short_labels(paths: Sequence[str]) -> list[str]:
    """The paths without the folders they all share (``noise_0.25/test/sigma_0.25``), for a readable legend."""
    full = [os.path.abspath(p) for p in paths]
    if len(full) < 2:
        return [os.path.basename(p) for p in full]
    common = os.path.commonpath([os.path.dirname(p) for p in full])
    return [os.path.relpath(p, common) for p in full]
