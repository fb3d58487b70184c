"""Statistics of randomized smoothing (Cohen et al. 2019), computed on the host with SciPy.

Everything a certificate rests on is here, in one place: the one-sided Clopper-Pearson lower bound of the
top-class probability, the certified L2 radius, the binomial test that guards ``predict``, and the summary
numbers of a certify run (certified accuracy at radii, average certified radius).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import beta, binomtest, norm

ABSTAIN = -1


def _check_counts(n_a: int, n: int) -> None:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= n_a <= n:
        raise ValueError(f"the count must be in [0, n={n}], got {n_a}")


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def clopper_pearson_lower(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on p from n_a successes in n trials.

    Equals ``beta.ppf(alpha, n_a, n - n_a + 1)`` (0 when n_a == 0), i.e. statsmodels'
    ``proportion_confint(n_a, n, alpha=2 * alpha, method="beta")[0]``.
    """
    _check_counts(n_a, n)
    _check_alpha(alpha)
    if n_a == 0:
        return 0.0
    return float(beta.ppf(alpha, n_a, n - n_a + 1))


def clopper_pearson_upper(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper confidence bound on p from n_a successes in n trials
    (``beta.ppf(1 - alpha, n_a + 1, n - n_a)``; 1 when n_a == n)."""
    _check_counts(n_a, n)
    _check_alpha(alpha)
    if n_a == n:
        return 1.0
    return float(beta.ppf(1.0 - alpha, n_a + 1, n - n_a))


def radius(sigma: float, p_a_lower: float) -> float:
    """Certified L2 radius ``sigma * Phi^-1(p_a_lower)`` for p_a_lower in [0.5, 1)."""
    if not 0.5 <= p_a_lower < 1.0:
        raise ValueError(f"p_a_lower must be in [0.5, 1) for a certificate, got {p_a_lower}")
    return float(sigma * norm.ppf(p_a_lower))


def certify_decision(c_a: int, n_a: int, n: int, alpha: float, sigma: float) -> tuple[int, float]:
    """Cohen's CERTIFY after sampling: class c_a (selected from independent samples) was seen n_a times in n.

    Returns ``(c_a, radius)``, or ``(ABSTAIN, 0.0)`` when the lower bound on p_A is below 1/2.
    """
    p_a_lower = clopper_pearson_lower(n_a, n, alpha)
    if p_a_lower < 0.5:
        return ABSTAIN, 0.0
    return c_a, radius(sigma, p_a_lower)


def binomial_pvalue(k: int, n: int, p: float = 0.5) -> float:
    """Two-sided exact binomial test p-value of k successes in n trials (``scipy.stats.binomtest``)."""
    _check_counts(k, n)
    return float(binomtest(k, n, p).pvalue)


def predict_decision(counts: Sequence[int], alpha: float) -> int:
    """Cohen's PREDICT after sampling: the top class, or ABSTAIN unless it beats the runner-up at level alpha.

    Ties between the top two counts always abstain (their p-value is 1).
    """
    _check_alpha(alpha)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or counts.size < 2:
        raise ValueError(f"counts must be a vector over >= 2 classes, got shape {counts.shape}")
    order = np.argsort(-counts, kind="stable")  # stable: the lower class index wins ties, as argmax does
    top, runner_up = int(order[0]), int(order[1])
    c1, c2 = int(counts[top]), int(counts[runner_up])
    if c1 + c2 == 0 or binomial_pvalue(c1, c1 + c2, 0.5) > alpha:
        return ABSTAIN
    return top


def certified_accuracy(
    radii: Sequence[float], correct: Sequence[int | bool], at: Sequence[float] | float
) -> np.ndarray | float:
    """Fraction of images that are correct and certified at radius >= r, for each r in ``at``.

    ``radii`` and ``correct`` are per image (abstentions have correct 0); a scalar ``at`` gives a float.
    """
    radii_arr = np.asarray(radii, dtype=np.float64)
    correct_arr = np.asarray(correct).astype(bool)
    if radii_arr.shape != correct_arr.shape or radii_arr.ndim != 1:
        raise ValueError(f"radii and correct must be vectors of one length, got {radii_arr.shape} and {correct_arr.shape}")
    if radii_arr.size == 0:
        raise ValueError("certified accuracy of an empty run is undefined")
    at_arr = np.asarray(at, dtype=np.float64)
    acc = ((radii_arr[None, :] >= at_arr.reshape(-1, 1)) & correct_arr[None, :]).mean(axis=1)
    return float(acc[0]) if at_arr.ndim == 0 else acc


def average_certified_radius(radii: Sequence[float], correct: Sequence[int | bool]) -> float:
    """ACR: the mean over images of radius * correct (abstentions and errors count as 0)."""
    radii_arr = np.asarray(radii, dtype=np.float64)
    correct_arr = np.asarray(correct).astype(bool)
    if radii_arr.shape != correct_arr.shape or radii_arr.ndim != 1 or radii_arr.size == 0:
        raise ValueError(f"radii and correct must be non-empty vectors of one length, got {radii_arr.shape} and {correct_arr.shape}")
    return float(np.mean(radii_arr * correct_arr))
