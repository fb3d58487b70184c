"""Sequential CERTIFY: stop drawing estimation samples once the image's grid radius is decided.

The paper's tables ask of each image only for the largest radius of a fixed grid (0, 0.25, 0.5, ...) at which it
is certified. Cohen's CERTIFY spends n samples on every image to answer it; most images settle it far earlier.
:meth:`~diffsmooth_fast.Smooth.certify_sequential` draws the estimation samples in the order CERTIFY draws them
(sample j is the same noise) and looks at the counts at checkpoints fixed in advance.

Validity: alpha spending over the looks (a union bound, Bonferroni). The checkpoints ``n_1 < ... < n_K = n`` and
their levels ``alpha_1, ..., alpha_K`` (``sum alpha_k <= alpha``) are functions of the settings alone (n, alpha,
sigma and the radii grid), never of the data, and at look k the Clopper-Pearson lower bound on p_A is taken at
level alpha_k. With probability at least 1 - sum alpha_k >= 1 - alpha every look's bound holds at once, so the
bound at whatever look the run stops is a valid lower bound and the radius sigma * Phi^-1(bound) is a valid
certificate whatever the stopping rule. The stopping rule decides cost only. This is alpha spending in the sense of
Lan and DeMets ("Discrete sequential boundaries for clinical trials", Biometrika 1983) without their correction
for the correlation between looks, which would tie the levels to one stopping boundary; the union bound holds for
any stopping rule, including the two-sided one below. Looks at the full alpha each (no spending) are not valid:
the run would stop exactly when one of K bounds overshoots (tests/test_sequential.py shows that variant failing).

Why this and not a confidence sequence valid at every sample (e.g. the betting sequences that V. Voráček,
"Treatment of Statistical Estimation Problems in Randomized Smoothing for Adversarial Robustness", arXiv
2406.17830, 2024, compares): the engine looks only at batch boundaries anyway, each look costs a host sync, and
the price of a union bound over a few dozen looks, log(1/alpha_k) instead of log(1/alpha), is about what a
time-uniform sequence pays at the sample counts that matter here. Clopper-Pearson at each look keeps every bound
exact for the binomial, as in CERTIFY.

The looks (:func:`schedule`), chosen to waste few samples:

* Exact looks for (near-)unanimous votes. On a grid radius r with threshold t = Phi(r/sigma), a vote with k
  dissenting samples can first certify r at the smallest m with ``CP_lower(m - k, m, alpha_m) >= t``. Between two
  such counts the bound of a run with k dissents only falls, so a look there would certify nothing new: looks
  at exactly these m (k = 0 .. NEAR_UNANIMOUS, every grid radius) stop such images at the first sample count that
  can. These images are the common case (a vote that stays unanimous up to the largest grid radius n can reach,
  e.g. 0.75 at sigma 0.25), and a geometric schedule overshoots them by half its growth factor on average.
* A geometric schedule, each look GROWTH times the last from FIRST_CHECKPOINT on, for everything else (votes
  near a grid threshold in the normal regime, and the upper bounds that rule a radius out, which cross at random
  counts). A geometric look within SPECIAL_SPAN of an exact look is dropped: the exact look serves it.
* Alpha in three parts. Half for the last look (FINAL_SHARE): it judges the images that run to n, those whose p_A
  sits near a grid threshold, and at alpha / 2 its bound is close to a fixed-n run's (z = 3.29 instead of 3.09 at
  alpha 0.001), so few such images certify a grid radius less than CERTIFY would (at a tenth of alpha, z = 3.72,
  about one in a hundred did on the demo, in simulation). TOP_SHARE for the top look, the exact look where a
  unanimous vote first certifies the largest grid radius n samples can reach: it is where most images of a good
  model stop (66 of the 120 demo Cohen images at sigma 0.25 did), and its level sets their cost directly, as
  log(alpha_k) / log(t). The rest over the earlier looks in proportion to sqrt(n_k). The earlier looks' levels
  enter the samples an image needs through log(1/alpha_k) (a unanimous vote needs log(alpha_k)/log(t) samples; a
  vote in the normal regime about z(alpha_k)^2 p(1-p)/gap^2). Minimising the expected samples
  sum_k m_k log(1/alpha_k) under sum_k alpha_k = alpha gives alpha_k proportional to m_k, the samples spent by runs
  that stop at look k: late looks stop the expensive images and deserve more, and so does a look where many stop.
  Which looks those are depends on the model, except for the top look, so sqrt(n_k) is the compromise for the
  rest. Where the top look would fall before the first look (a grid whose top radius is easy), its share goes to
  the others.

The levels of the exact looks depend on the normaliser Z = sum_k sqrt(n_k) (over the looks before the last), which
depends on the looks: Z is raised to the value the looks give until the looks give no more (a fixed point), which
keeps sum alpha_k <= alpha (the last look's share, plus the top look's, plus the rest times at most 1).

Stopping (at look k, with n_A of the first n_k samples for the selected class):

* the bound certifies the largest grid radius that all n samples could still certify (a unanimous vote of n at
  the last look's level): nothing more to gain;
* the next grid radius r above the one certified now is out of reach:
  - the votes against the selected class already exceed those that all n samples could hold and still certify r
    (:func:`affordable_dissent`; dissent never falls, so no later look could certify r: this rule loses nothing);
  - or the futility test: an upper bound on p_A, at level FUTILITY spent over the looks like alpha (sqrt(n_k)),
    is below the share of votes that all n samples need to certify r. An image whose p_A reaches that share is
    given up this way in at most 20% of runs (max(FUTILITY, alpha / 2): the levels are never below the lower
    bound's); one below it would, more often than not, fail to certify r at n too. 20% and not less because at
    p_A equal to that share CERTIFY itself certifies r in only about half of its runs, and the runs the test
    gives up are mostly among the other half (the sequential run's samples are the first of CERTIFY's): in
    simulation on the demo's 120 images, raising FUTILITY from 0.05 to 0.2 cut the mean samples by 4% at
    sigma 0.25 and 9% at sigma 0.5 and changed the grid radii lost against CERTIFY from 0.50 to 0.53 and 0.56
    images per run of 120. For r = 0 this is the abstention (p_A < 1/2, or too close to it for n samples to show
    otherwise). The futility test bears on cost and on how often the run matches CERTIFY, never on validity;
* n samples are used.

What no schedule can save: an image whose p_A sits on the share n samples need for a grid radius decides neither
way and uses all n samples, as CERTIFY does; and a unanimous vote needs at least ln(1/alpha) / -ln Phi(r/sigma)
samples to certify r under any valid test, sequential or not (n unanimous votes have probability Phi(r/sigma)^n at
p_A = Phi(r/sigma), and a level-alpha test may reject p_A <= Phi(r/sigma) on them only if that is <= alpha): at
alpha 0.001, 5,114 for 0.75 at sigma 0.25 (this schedule: 6,470) and 29,691 for 1.75 at sigma 0.5 (37,295). More
generally, any sequential test that certifies r at level alpha when p_A = p > t = Phi(r/sigma) uses on average at
least about ln(1/alpha) / KL(p || t) samples (Wald's bound on the expected sample size of a sequential test,
"Sequential Analysis", 1947); :func:`certify_floor` gives it per image. Measured costs, and that floor for the demo:
benchmarks/results/sequential-cpu.json.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import beta, binom, norm

from . import stats

FIRST_CHECKPOINT = 100  # samples at the first look: fewer can certify nothing of interest on a paper's grid
GROWTH = 1.25  # each geometric look 1.25 times the last: overshoot 11% on average, ~30 looks to n = 100,000
NEAR_UNANIMOUS = 3  # exact looks for votes with 0, 1, 2, 3 dissenting samples
SPECIAL_SPAN = 1.1  # a geometric look within 10% of an exact look is dropped
FINAL_SHARE = 0.5  # the last look's share of alpha: images that run to n are judged at alpha / 2
TOP_SHARE = 0.15  # the top look's share of alpha: unanimous votes stop there (6,470 samples, not 8,164, at sigma 0.25)
FUTILITY = 0.2  # chance, over all looks, of giving up a radius that n samples' votes would reach on average


@dataclass(frozen=True)
class Schedule:
    """The looks of a sequential run: cumulative sample counts (increasing, the last is n), the level of each
    look's lower bound (their sum is at most the run's alpha) and the level of each look's futility test (the
    upper bound that gives up a radius n samples would likely not certify; it bears on cost, not validity)."""

    checkpoints: tuple[int, ...]
    levels: tuple[float, ...]
    futility: tuple[float, ...]

    @property
    def n(self) -> int:
        return self.checkpoints[-1]

    def largest_radius(self, sigma: float) -> float:
        """The largest radius a run on this schedule can certify: all n samples vote for the class, bound taken
        at the last look's level (below the run's alpha, so a little below a fixed-n run's cap)."""
        return stats.radius(sigma, stats.clopper_pearson_lower(self.n, self.n, self.levels[-1]))

    def index(self, used: int) -> int:
        """Which look comes after ``used`` samples (a checkpoint)."""
        k = bisect.bisect_left(self.checkpoints, used)
        if k == len(self.checkpoints) or self.checkpoints[k] != used:
            raise ValueError(f"{used} samples is not a checkpoint of this schedule")
        return k

    def level_at(self, used: int) -> float:
        """The level of the lower bound at the look after ``used`` samples (a checkpoint)."""
        return self.levels[self.index(used)]


def geometric(n: int) -> list[int]:
    """FIRST_CHECKPOINT, then GROWTH times the last (rounded up), then n."""
    points, c = [], min(n, FIRST_CHECKPOINT)
    while c < n:
        points.append(c)
        c = max(c + 1, math.ceil(c * GROWTH))
    points.append(n)
    return points


def first_certifying(dissent: int, threshold: float, level_of, n: int) -> int | None:
    """The smallest m <= n at which ``m - dissent`` votes of m give a Clopper-Pearson lower bound (at level
    ``level_of(m)``, non-decreasing in m) of at least ``threshold``; None if even m = n does not."""
    def certifies(m: int) -> bool:  # non-decreasing in m: the bound grows with m and with the level
        return m > dissent and beta.ppf(level_of(m), m - dissent, dissent + 1) >= threshold

    if not certifies(n):
        return None
    low, high = dissent + 1, n
    while low < high:
        mid = (low + high) // 2
        if certifies(mid):
            high = mid
        else:
            low = mid + 1
    return low


@functools.lru_cache(maxsize=64)
def _schedule(n: int, alpha: float, sigma: float, radii: tuple[float, ...]) -> Schedule:
    base = geometric(n)
    if len(base) == 1:  # n <= FIRST_CHECKPOINT: one look, which is CERTIFY
        return Schedule((n,), (alpha,), (alpha,))
    last = alpha * FINAL_SHARE
    # the top look: where a unanimous vote first certifies the largest grid radius all n samples can reach
    cap = stats.radius(sigma, stats.clopper_pearson_lower(n, n, last))
    top = max((r for r in radii if r <= cap), default=None)
    top_level = alpha * TOP_SHARE
    alone = None if top is None else first_certifying(0, float(norm.cdf(top / sigma)), lambda m: top_level, n - 1)
    if alone is None or alone < FIRST_CHECKPOINT:
        top_level = 0.0  # no such look between the first and the last: its share goes to the others
    rest = alpha * (1 - FINAL_SHARE) - top_level
    z = sum(math.sqrt(c) for c in base[:-1])
    while True:
        def level_of(m: int, z: float = z) -> float:  # non-decreasing in m, as first_certifying needs
            return last if m >= n else min(last, rest * math.sqrt(m) / z)

        exact, top_look = set(), None
        for r in radii:
            for dissent in range(NEAR_UNANIMOUS + 1):
                if r == top and dissent == 0 and top_level > 0:
                    m = top_look = max(FIRST_CHECKPOINT, first_certifying(  # not None: top_level alone certifies
                        0, float(norm.cdf(r / sigma)), lambda m: top_level + level_of(m), n - 1))
                else:
                    m = first_certifying(dissent, float(norm.cdf(r / sigma)), level_of, n)
                if m is not None and FIRST_CHECKPOINT <= m < n:
                    exact.add(m)
        kept = [c for c in base if c == n or not any(c / SPECIAL_SPAN <= m <= c * SPECIAL_SPAN for m in exact)]
        points = sorted(set(kept) | exact)
        needed = sum(math.sqrt(c) for c in points[:-1])
        if needed <= z:  # the looks before the last spend top_level + rest * needed / z at most
            levels = tuple(level_of(c) + (top_level if c == top_look else 0.0) for c in points)
            futility = tuple(max(level, FUTILITY * math.sqrt(c) / z) for c, level in zip(points, levels))
            return Schedule(tuple(points), levels, futility)
        z = needed  # more looks than z paid for: raise z (lowers every level, moves exact looks later) and redo


def schedule(n: int, alpha: float, sigma: float, radii: Sequence[float]) -> Schedule:
    """The looks for a budget of n samples at level alpha on the grid ``radii`` at noise ``sigma`` (see the module
    docstring): a function of these settings alone, never of the data. Cached: every image of a run shares it."""
    return _schedule(int(n), float(alpha), float(sigma), tuple(sorted(float(r) for r in radii)))


@dataclass(frozen=True)
class Look:
    """What one look decided: whether to stop, and the certificate if the run stops here."""

    stop: bool
    prediction_certified: bool  # the lower bound is at least 1/2 (else: abstain)
    radius: float  # sigma * Phi^-1(lower bound), 0 when abstaining


def look(n_a: int, used: int, plan: Schedule, sigma: float, radii: Sequence[float]) -> Look:
    """The decision after ``used`` samples (a checkpoint), ``n_a`` of them for the selected class (see the module
    docstring)."""
    k = plan.index(used)
    lower = stats.clopper_pearson_lower(n_a, used, plan.levels[k])
    certified = lower >= 0.5
    radius = stats.radius(sigma, lower) if certified else 0.0
    if used >= plan.n:
        return Look(True, certified, radius)
    grid = sorted(radii)
    reachable = [r for r in grid if r <= plan.largest_radius(sigma)]
    reached = [r for r in grid if certified and r <= radius]
    if reachable and reached and reached[-1] >= reachable[-1]:
        return Look(True, certified, radius)
    above = [r for r in grid if not reached or r > reached[-1]]
    if above:
        afford = affordable_dissent(plan.n, max(plan.levels), float(norm.cdf(above[0] / sigma)))
        if used - n_a > afford:  # no later look can certify the next radius
            return Look(True, certified, radius)
        needed = (plan.n - afford) / plan.n  # the share of votes all n samples need to certify it
        if stats.clopper_pearson_upper(n_a, used, plan.futility[k]) < needed:  # p_A is below that share
            return Look(True, certified, radius)
    return Look(False, certified, radius)


@functools.lru_cache(maxsize=256)
def affordable_dissent(n: int, level: float, threshold: float) -> int:
    """The most votes against the selected class that n samples can hold and still give a Clopper-Pearson lower
    bound (at ``level``) of at least ``threshold``; -1 if even a unanimous vote of n cannot.

    A run whose dissenting votes already exceed this can certify the threshold at no later look: dissent never
    falls, and a look at m <= n samples at a level <= ``level`` affords no more dissent than n at ``level``."""
    def certifies(dissent: int) -> bool:  # non-increasing in dissent
        return dissent < n and float(beta.ppf(level, n - dissent, dissent + 1)) >= threshold

    if not certifies(0):
        return -1
    low, high = 0, n - 1  # certifies(low) holds
    while low < high:
        mid = (low + high + 1) // 2
        if certifies(mid):
            low = mid
        else:
            high = mid - 1
    return low


def certify_floor(n_a: int, n: int, alpha: float, threshold: float) -> float:
    """About the fewest samples, on average, that any sequential level-alpha test needs to certify p_A > threshold
    as often as CERTIFY does with n samples, for an image whose p_A is n_a / n (the plug-in estimate); at most n.

    Wald's bound: a test that certifies with probability at most alpha when p_A = t and with probability
    1 - beta when p_A = p spends at least d(1 - beta || alpha) / KL(p || t) samples on average at p, where d is the
    binary relative entropy (the log-likelihood ratio at the stop has mean E[N] KL(p || t), and no decision can
    separate the two hypotheses by more than its data does). 1 - beta is CERTIFY's own chance of certifying at p.
    For a unanimous vote this is about ln(1/alpha) / -ln t, the floor in the module docstring."""
    p = n_a / n
    if p <= threshold:
        return float(n)
    need = n - affordable_dissent(n, alpha, threshold)  # the votes CERTIFY needs of n
    power = float(binom.sf(need - 1, n, p)) if need <= n else 0.0
    relative = p * math.log(p / threshold) + ((1 - p) * math.log((1 - p) / (1 - threshold)) if p < 1 else 0.0)
    separation = (power * math.log(power / alpha) if power > 0 else 0.0) + (
        (1 - power) * math.log((1 - power) / (1 - alpha)) if power < 1 else 0.0)
    return min(float(n), max(0.0, separation) / relative)
