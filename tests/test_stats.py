"""diffsmooth_fast.smoothing.stats: Clopper-Pearson bound, radius, CERTIFY/PREDICT decisions, run summaries.

Checked against statsmodels (what Cohen et al.'s code calls), against the definitions (binomial tail equations
solved independently of beta.ppf), on hand-computed examples, and on certify files published by Cohen et al.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import binom, binomtest, norm

from diffsmooth_fast.smoothing.stats import (
    ABSTAIN,
    average_certified_radius,
    certified_accuracy,
    certify_decision,
    clopper_pearson_lower,
    predict_decision,
    radius,
)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "cohen-certify"

NS = (1, 2, 10, 100, 1000, 100000)
ALPHAS = (0.001, 0.01, 0.05)


def _counts_for(n: int) -> list[int]:
    """n_a values to test for n trials: the edges 0, 1, n-1, n and a few in between."""
    candidates = {0, 1, 2, n // 3, n // 2, n // 2 + 1, (9 * n) // 10, n - 2, n - 1, n}
    return sorted(k for k in candidates if 0 <= k <= n)


GRID = [(n_a, n, alpha) for n in NS for n_a in _counts_for(n) for alpha in ALPHAS]


# --------------------------------------------------------------------------------------------------------------
# clopper_pearson_lower


@pytest.mark.parametrize("n_a,n,alpha", GRID)
def test_clopper_pearson_matches_statsmodels(n_a, n, alpha):
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    expected = proportion.proportion_confint(n_a, n, alpha=2 * alpha, method="beta")[0]
    got = clopper_pearson_lower(n_a, n, alpha)
    assert isinstance(got, float)
    assert got == pytest.approx(float(expected), rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("n_a,n,alpha", [g for g in GRID if g[0] >= 1])
def test_clopper_pearson_solves_binomial_tail_equation(n_a, n, alpha):
    """The lower bound p_L is the p with P(X >= n_a | X ~ Binomial(n, p)) = alpha, found here by root finding."""

    def excess(p: float) -> float:
        return binom.sf(n_a - 1, n, p) - alpha

    # P(X >= n_a) rises from 0 (p = 0) to 1 (p = 1) for n_a >= 1, so the root is bracketed.
    p_lower = brentq(excess, 0.0, 1.0, xtol=1e-300, rtol=1e-13, maxiter=500)
    got = clopper_pearson_lower(n_a, n, alpha)
    assert got == pytest.approx(p_lower, rel=1e-7)
    # and the tail probability at the returned bound is alpha itself
    assert binom.sf(n_a - 1, n, got) == pytest.approx(alpha, rel=1e-6)


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_clopper_pearson_all_successes_closed_form(n, alpha):
    # P(X >= n | p) = p**n = alpha
    assert clopper_pearson_lower(n, n, alpha) == pytest.approx(alpha ** (1.0 / n), rel=1e-12)


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_clopper_pearson_no_success_is_zero(n, alpha):
    assert clopper_pearson_lower(0, n, alpha) == 0.0


def test_clopper_pearson_monotone_and_below_point_estimate():
    n, alpha = 1000, 0.001
    bounds = [clopper_pearson_lower(k, n, alpha) for k in range(n + 1)]
    assert all(a < b for a, b in zip(bounds, bounds[1:]))
    assert all(bound < k / n for k, bound in enumerate(bounds) if k > 0)
    # a smaller alpha (more confidence) gives a smaller lower bound
    assert clopper_pearson_lower(700, n, 0.0001) < clopper_pearson_lower(700, n, 0.001) < clopper_pearson_lower(
        700, n, 0.05
    )


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_clopper_pearson_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        clopper_pearson_lower(5, 10, alpha)


@pytest.mark.parametrize("n", [0, -1])
def test_clopper_pearson_rejects_bad_n(n):
    with pytest.raises(ValueError, match=r"\bn must be >= 1"):
        clopper_pearson_lower(0, n, 0.01)


@pytest.mark.parametrize("n_a", [11, -1])
def test_clopper_pearson_rejects_count_out_of_range(n_a):
    with pytest.raises(ValueError, match=rf"count.*n=10.*got {n_a}"):
        clopper_pearson_lower(n_a, 10, 0.01)


# --------------------------------------------------------------------------------------------------------------
# radius


@pytest.mark.parametrize("sigma", [0.12, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("p", [0.5, 0.5000001, 0.6, 0.75, 0.9, 0.99, 0.999999])
def test_radius_is_sigma_times_probit(sigma, p):
    r = radius(sigma, p)
    assert isinstance(r, float)
    assert r == pytest.approx(sigma * norm.ppf(p), rel=1e-12, abs=1e-15)
    # inverse check independent of ppf: Phi(r / sigma) = p
    assert norm.cdf(r / sigma) == pytest.approx(p, rel=1e-9)


def test_radius_at_one_half_is_zero_and_known_value():
    assert radius(0.5, 0.5) == 0.0
    # Phi^-1(0.975) = 1.959963984540054
    assert radius(0.5, 0.975) == pytest.approx(0.5 * 1.959963984540054, rel=1e-12)


@pytest.mark.parametrize("p", [0.4999999, 0.0, -0.5, 1.0, 1.2, float("nan")])
def test_radius_rejects_p_outside_half_open_interval(p):
    with pytest.raises(ValueError, match="p_a_lower"):
        radius(0.25, p)


# --------------------------------------------------------------------------------------------------------------
# certify_decision


def test_certify_abstains_exactly_below_one_half_boundary():
    n, alpha, sigma, c_a = 100, 0.001, 0.25, 7
    decisions = [certify_decision(c_a, n_a, n, alpha, sigma) for n_a in range(n + 1)]
    bounds = [clopper_pearson_lower(n_a, n, alpha) for n_a in range(n + 1)]
    boundary = next(n_a for n_a in range(n + 1) if bounds[n_a] >= 0.5)
    # the boundary is where the one-sided binomial test of p <= 1/2 rejects at level alpha (definition, no beta)
    boundary_by_test = next(n_a for n_a in range(1, n + 1) if binom.sf(n_a - 1, n, 0.5) <= alpha)
    assert boundary == boundary_by_test
    assert 50 < boundary < n  # sanity: not an edge case
    assert decisions[boundary - 1] == (ABSTAIN, 0.0)
    predicted, r = decisions[boundary]
    assert predicted == c_a and r >= 0.0
    for n_a, (predicted, r) in enumerate(decisions):
        if n_a < boundary:
            assert (predicted, r) == (ABSTAIN, 0.0), n_a
            assert isinstance(r, float)
        else:
            assert predicted == c_a, n_a
            assert r == pytest.approx(sigma * norm.ppf(bounds[n_a]), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("n,alpha,sigma", [(100, 0.001, 0.25), (1000, 0.01, 0.5), (100000, 0.001, 1.0)])
def test_certify_radius_monotone_and_below_point_estimate(n, alpha, sigma):
    n_as = sorted({*range(0, n + 1, max(1, n // 200)), n - 1, n})
    previous = -1.0
    certified = 0
    for n_a in n_as:
        predicted, r = certify_decision(3, n_a, n, alpha, sigma)
        if predicted == ABSTAIN:
            assert r == 0.0
            assert previous <= 0.0, "abstained after having certified at a smaller n_a"
            continue
        certified += 1
        assert predicted == 3
        assert r > previous or (r == previous == 0.0)
        if n_a < n:
            assert r <= sigma * norm.ppf(n_a / n)
        previous = r
    assert certified > 10
    # all successes: the largest radius a run of n samples can give
    assert certify_decision(3, n, n, alpha, sigma)[1] == pytest.approx(sigma * norm.ppf(alpha ** (1 / n)), rel=1e-10)


def test_certify_decision_propagates_input_errors():
    with pytest.raises(ValueError, match="alpha"):
        certify_decision(0, 90, 100, 0.0, 0.25)
    with pytest.raises(ValueError, match="count"):
        certify_decision(0, 101, 100, 0.001, 0.25)


# --------------------------------------------------------------------------------------------------------------
# predict_decision


def _pvalue(c1: int, c2: int) -> float:
    return binomtest(c1, c1 + c2, 0.5).pvalue


@pytest.mark.parametrize("counts", [[5, 5], [500, 500, 3], [0, 0], [0, 0, 0], [1, 40, 40, 2]])
def test_predict_tie_abstains(counts):
    assert predict_decision(counts, 0.5) == ABSTAIN
    assert predict_decision(counts, 0.999) == ABSTAIN


@pytest.mark.parametrize("counts,winner", [([1000, 0], 0), ([0, 1000, 0], 1), ([3, 10, 2, 900], 3), ([80, 1, 1, 2], 0)])
def test_predict_clear_winner(counts, winner):
    assert predict_decision(counts, 0.001) == winner
    assert predict_decision(np.asarray(counts), 0.001) == winner
    assert isinstance(predict_decision(counts, 0.001), int)


def test_predict_pvalue_threshold():
    # top two: c1 vs c2 with c1 + c2 = 100; the first c1 whose two-sided binomial p-value is <= 0.001
    total = 100
    c1 = next(k for k in range(50, total + 1) if _pvalue(k, total - k) <= 0.001)
    p_strong, p_weak = _pvalue(c1, total - c1), _pvalue(c1 - 1, total - c1 + 1)
    assert p_strong < p_weak
    # a third, smaller class and a winner at a position other than 0 do not change the test
    strong = [5, total - c1, c1]
    weak = [5, total - c1 + 1, c1 - 1]
    alpha = math.sqrt(p_strong * p_weak)  # strictly between the two p-values
    assert predict_decision(strong, alpha) == 2  # p-value just below alpha
    assert predict_decision(weak, alpha) == ABSTAIN  # p-value just above alpha
    # p-value a hair above / below alpha for the same counts
    assert predict_decision(strong, p_strong * (1 - 1e-9)) == ABSTAIN
    assert predict_decision(strong, p_strong * (1 + 1e-9)) == 2
    # Cohen: abstain only when p-value > alpha, so p-value == alpha returns the class
    assert predict_decision(strong, p_strong) == 2


def test_predict_uses_top_two_only():
    # the same top two with other, smaller classes beside them: the test ignores the rest (not c1 vs n - c1)
    c1, c2 = 70, 30
    p = _pvalue(c1, c2)
    assert predict_decision([c2, c1], p * 1.01) == 1
    assert predict_decision([c2, c1, 20, 10], p * 1.01) == 1
    assert predict_decision([c2, c1, 20, 10], p * 0.99) == ABSTAIN


@pytest.mark.parametrize("counts", [[], [10], [[5, 3], [2, 1]]])
def test_predict_needs_two_classes(counts):
    with pytest.raises(ValueError, match="2 classes"):
        predict_decision(counts, 0.001)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_predict_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        predict_decision([10, 0], alpha)


# --------------------------------------------------------------------------------------------------------------
# certified_accuracy, average_certified_radius

# image 0 abstained (radius 0, correct 0); image 3 is a wrong prediction with a radius; the others are correct.
RADII = [0.0, 0.5, 1.0, 0.25, 2.0]
CORRECT = [0, 1, 1, 0, 1]


def test_certified_accuracy_hand_computed_vector():
    at = [0.0, 0.25, 0.5, 0.75, 1.0, 2.0, 2.5]
    got = certified_accuracy(RADII, CORRECT, at)
    assert isinstance(got, np.ndarray) and got.shape == (7,)
    np.testing.assert_allclose(got, [0.6, 0.6, 0.6, 0.4, 0.4, 0.2, 0.0], rtol=0, atol=1e-15)


@pytest.mark.parametrize("r,expected", [(0.0, 0.6), (0.5, 0.6), (0.50001, 0.4), (1.0, 0.4), (2.0, 0.2), (2.0001, 0.0)])
def test_certified_accuracy_scalar_and_threshold_inclusive(r, expected):
    got = certified_accuracy(RADII, CORRECT, r)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, abs=1e-15)


def test_certified_accuracy_one_element_list_gives_vector_and_bools_accepted():
    got = certified_accuracy(RADII, [bool(c) for c in CORRECT], [1.0])
    assert isinstance(got, np.ndarray) and got.shape == (1,)
    assert got[0] == pytest.approx(0.4)
    assert certified_accuracy(np.asarray(RADII), np.asarray(CORRECT), np.float64(0.25)) == pytest.approx(0.6)


def test_certified_accuracy_wrong_prediction_never_counts():
    # a large radius on a wrong prediction counts for nothing
    assert certified_accuracy([3.0, 0.1], [0, 1], 0.0) == pytest.approx(0.5)
    assert certified_accuracy([3.0, 0.1], [0, 1], 1.0) == 0.0


def test_average_certified_radius_hand_computed():
    assert average_certified_radius(RADII, CORRECT) == pytest.approx((0.5 + 1.0 + 2.0) / 5, rel=1e-15)
    assert average_certified_radius([0.0, 0.0], [0, 0]) == 0.0
    assert average_certified_radius([1.5], [True]) == pytest.approx(1.5)
    assert isinstance(average_certified_radius(RADII, CORRECT), float)


@pytest.mark.parametrize(
    "radii,correct",
    [([0.1, 0.2], [1]), ([0.1], [1, 0]), ([[0.1, 0.2]], [[1, 0]])],
)
def test_summaries_reject_mismatched_shapes(radii, correct):
    with pytest.raises(ValueError, match="one length"):
        certified_accuracy(radii, correct, 0.0)
    with pytest.raises(ValueError, match="one length"):
        average_certified_radius(radii, correct)


def test_summaries_reject_empty():
    with pytest.raises(ValueError, match="empty"):
        certified_accuracy([], [], [0.0, 0.5])
    with pytest.raises(ValueError, match="non-empty"):
        average_certified_radius([], [])


# --------------------------------------------------------------------------------------------------------------
# Cohen et al.'s published certify files


@pytest.mark.parametrize(
    "relative,at,expected_accuracy,expected_acr",
    [
        ("cifar10/resnet110/noise_0.25/test/sigma_0.25", [0.0, 0.25, 0.5, 0.75], [0.748, 0.600, 0.428, 0.266], 0.429),
        ("imagenet/resnet50/noise_0.50/test/sigma_0.50", [0.0, 0.5, 1.0, 1.5], [0.572, 0.458, 0.372, 0.286], 0.733),
    ],
)
def test_published_certify_runs(relative, at, expected_accuracy, expected_acr):
    path = FIXTURES / relative
    if not path.is_file():
        pytest.skip(f"fixture {path} is absent (../shared is not part of a clone)")
    from diffsmooth_fast.run.tsv import read_certify

    rows = read_certify(path)
    assert len(rows) == 500
    radii = [row.radius for row in rows]
    correct = [row.correct for row in rows]
    accuracy = certified_accuracy(radii, correct, at)
    assert np.round(accuracy, 3).tolist() == expected_accuracy
    assert round(average_certified_radius(radii, correct), 3) == expected_acr
    # the scalar form agrees with the vector form
    assert certified_accuracy(radii, correct, at[1]) == pytest.approx(accuracy[1])
