"""The few lines on stderr at the end of a certify or predict run: what was measured, how many images, how many
abstained, where the rows went, and why a curve can stop early (n caps the radius)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

import numpy as np

from ..smoothing import stats
from ..smoothing.sequential import schedule
from .configs import RunSettings

SUMMARY_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def radius_cap(settings: RunSettings) -> float:
    """The largest radius ``settings`` can certify: every one of the n samples votes for the class, so the
    Clopper-Pearson bound is ``alpha^(1/n)`` and the radius ``sigma * Phi^-1(alpha^(1/n))`` (sequential runs:
    at the level of the last look, a share of alpha). 0.616 at n = 1000, sigma 0.25, alpha 0.001."""
    sampling, sigma = settings.sampling, settings.method.sigma
    if sampling.sequential:
        return schedule(sampling.n, sampling.alpha, sigma, sampling.radii).largest_radius(sigma)
    return stats.radius(sigma, stats.clopper_pearson_lower(sampling.n, sampling.n, sampling.alpha))


def lines(settings: RunSettings, rows: Sequence, exact_radius: Sequence[float] | None = None) -> list[str]:
    """The summary of a run whose output holds ``rows`` (certify or predict rows; resumed rows included);
    ``exact_radius`` [N images] the toy problem's true radii, or None."""
    if not rows:
        return ["no images were processed"]
    out = settings.output.out
    where = "rows on stdout" if out == "-" else f"rows in {out} (settings in {out}.json)"
    abstained = sum(r.predict == stats.ABSTAIN for r in rows)
    labelled = any(r.label >= 0 for r in rows)
    correct = [r.correct for r in rows]
    counts = f"{len(rows)} images, {abstained} abstained; {where}"
    if settings.command == "predict":
        accuracy = f"accuracy {np.mean(correct):.3f}" if labelled else "no labels: accuracy is not defined"
        return [f"{accuracy}; {counts}"]
    if not labelled:
        said = ["no labels: certified accuracy is not defined"]
    else:
        radii = [r.radius for r in rows]
        acc = stats.certified_accuracy(radii, correct, SUMMARY_RADII)
        said = ["certified accuracy " + ", ".join(f"{a:.3f} at r={r}" for r, a in zip(SUMMARY_RADII, acc))
                + f"; ACR {stats.average_certified_radius(radii, correct):.3f}"]
    said.append(counts)
    drawn = [r.samples for r in rows if getattr(r, "samples", None) is not None]
    if drawn:  # what a sequential run saved against CERTIFY's n per image
        n = settings.sampling.n
        said.append(f"estimation samples per image: mean {np.mean(drawn):,.0f}, median {np.median(drawn):,.0f} of "
                    f"n = {n:,} ({n / np.mean(drawn):.1f}x fewer than a fixed-n run on average); "
                    f"{sum(k >= n for k in drawn)} of {len(drawn)} images used all n")
    cap = radius_cap(settings)
    if cap < SUMMARY_RADII[-1]:  # the curve drops to 0 at the cap, whatever the classifier: say why
        n, sampling = settings.sampling.n, settings.sampling
        alpha = "the last look's share of alpha" if sampling.sequential else "alpha"
        said.append(f"n = {n} caps every radius at sigma * Phi^-1({alpha}^(1/n)) = {cap:.3f} (sigma "
                    f"{settings.method.sigma:g}, alpha {sampling.alpha:g}): accuracy beyond it is 0 by construction; "
                    f"a larger --n certifies larger radii")
    if exact_radius is not None:
        ratios = [r.radius / float(exact_radius[r.idx]) for r in rows if r.correct]
        if ratios:
            over = sum(1 for q in ratios if q > 1.0)
            said.append(f"toy check: certified/exact radius mean {sum(ratios) / len(ratios):.3f}; {over} of "
                        f"{len(ratios)} certificates above the exact radius (expected about alpha of them)")
    return said


def report(settings: RunSettings, rows: Sequence, exact_radius: Sequence[float] | None = None,
           stream: TextIO | None = None) -> None:
    """Print :func:`lines` on ``stream`` (stderr)."""
    stream = sys.stderr if stream is None else stream
    for line in lines(settings, rows, exact_radius):
        print(line, file=stream)
    stream.flush()
