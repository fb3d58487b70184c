"""Sequential CERTIFY (Smooth.certify_sequential, diffsmooth_fast.smoothing.sequential): sound like CERTIFY on a
linear classifier whose smoothed radius is known in closed form, while the same looks without alpha spending are
not; its stopping rules; results independent of the batch size."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.stats import norm

from diffsmooth_fast import Smooth
from diffsmooth_fast.data.toy import Halfspace, make_toy
from diffsmooth_fast.smoothing import sequential, stats

SIGMA = 0.25


def near_a_grid_radius(distance: float) -> tuple[Halfspace, torch.Tensor]:
    """A classifier and an image at signed distance ``distance`` from its plane (class 0 side)."""
    w = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(0))
    w /= w.norm()
    gray = torch.full((3, 8, 8), 0.5)
    return Halfspace(w, -float((w * gray).sum())).eval(), gray + distance * w


def overshoot_rate(certify, trials: int = 500) -> float:
    """How often the reported radius exceeds the true one, over ``trials`` independent certifications."""
    return sum(certify(idx) for idx in range(trials)) / trials


# The true radius 0.249 sits just below the grid radius 0.25, which a run of n = 2000 samples can still certify:
# the rule "stop once the best reachable grid radius is certified" then stops exactly when a bound overshoots.
DISTANCE, GRID, ALPHA, N = 0.249, (0.25,), 0.1, 2000
LIMIT = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / 500)


@pytest.fixture(scope="module")
def problem():
    model, x = near_a_grid_radius(DISTANCE)
    return Smooth(model, 2, SIGMA, seed=3), x


def test_certify_sequential_is_sound(problem):
    smooth, x = problem
    rate = overshoot_rate(lambda idx: smooth.certify_sequential(x, 50, N, ALPHA, 500, radii=GRID, idx=idx)[1]
                          > DISTANCE)
    assert rate <= LIMIT, rate


def test_certify_is_sound_on_the_same_problem(problem):
    smooth, x = problem
    rate = overshoot_rate(lambda idx: smooth.certify(x, 50, N, ALPHA, 500, idx=idx)[1] > DISTANCE)
    assert rate <= LIMIT, rate


def test_the_same_looks_without_alpha_spending_are_not_sound(problem, monkeypatch):
    """The deliberately invalid variant: every look at the full alpha. It fails the test the others pass, which
    shows the test can fail (over these 500 runs: 0.316 against 0.040 with spending and 0.074 for
    certify)."""
    smooth, x = problem
    spent = sequential.schedule

    def unspent(*settings):
        plan = spent(*settings)
        return replace(plan, levels=(ALPHA,) * len(plan.checkpoints))

    monkeypatch.setattr(sequential, "schedule", unspent)
    rate = overshoot_rate(lambda idx: smooth.certify_sequential(x, 50, N, ALPHA, 500, radii=GRID, idx=idx)[1]
                          > DISTANCE)
    assert rate > LIMIT, rate


CIFAR = tuple(0.25 * i for i in range(10))


@pytest.mark.parametrize("sigma", [0.25, 0.5])
def test_schedule_depends_on_the_settings_alone_and_spends_at_most_alpha(sigma):
    plan = sequential.schedule(100_000, 0.001, sigma, CIFAR)
    assert plan is sequential.schedule(100_000, 0.001, sigma, list(reversed(CIFAR)))  # the same looks, cached
    assert plan.checkpoints[0] >= sequential.FIRST_CHECKPOINT and plan.checkpoints[-1] == 100_000
    assert all(b > a for a, b in zip(plan.checkpoints, plan.checkpoints[1:]))
    assert 0.0009 < sum(plan.levels) <= 0.001 * (1 + 1e-12)
    top = plan.levels.index(max(plan.levels[:-1]))  # where a unanimous vote first certifies the top radius
    assert plan.levels[top] > sequential.TOP_SHARE * 0.001
    others = plan.levels[:top] + plan.levels[top + 1:]
    assert all(b > a for a, b in zip(others, others[1:]))  # later looks get more of alpha
    # a grid whose top radius a unanimous vote certifies before the first look: its share goes to the others
    low = sequential.schedule(100_000, 0.001, sigma, (0.0, 0.25))
    assert 0.0009 < sum(low.levels) <= 0.001 * (1 + 1e-12) and max(low.levels[:-1]) < sequential.TOP_SHARE * 0.001
    assert 20 <= len(plan.checkpoints) <= 60
    small = sequential.schedule(50, 0.01, sigma, CIFAR)
    assert small.checkpoints == (50,) and small.levels == (0.01,)
    with pytest.raises(ValueError, match="not a checkpoint"):
        plan.level_at(plan.checkpoints[0] + 1)


@pytest.mark.parametrize("sigma,radius", [(0.25, 0.75), (0.5, 1.5), (0.5, 1.75)])
def test_near_unanimous_votes_are_looked_at_at_the_first_count_that_certifies(sigma, radius):
    """For k = 0..3 dissenting votes there is a look at the first sample count m where m - k votes certify the grid
    radius at that look's level; one sample fewer (with the same k dissents) would not."""
    plan = sequential.schedule(100_000, 0.001, sigma, CIFAR)
    threshold = norm.cdf(radius / sigma)
    for dissent in range(sequential.NEAR_UNANIMOUS + 1):  # a look at m < n has level proportional to sqrt(m)
        hits = [m for m in plan.checkpoints
                if stats.clopper_pearson_lower(m - dissent, m, plan.level_at(m)) >= threshold
                > stats.clopper_pearson_lower(m - 1 - dissent, m - 1, plan.level_at(m) * math.sqrt((m - 1) / m))]
        assert hits, dissent


def test_unanimous_votes_stop_at_their_exact_look():
    plan = sequential.schedule(100_000, 0.001, SIGMA, CIFAR)
    first = next(c for c in plan.checkpoints if sequential.look(c, c, plan, SIGMA, CIFAR).stop)
    # a vote unanimous so far stops at the first sample count that certifies 0.75 (the best 100,000 can reach)
    assert sequential.look(first, first, plan, SIGMA, CIFAR).radius >= 0.75
    assert stats.clopper_pearson_lower(first - 1, first - 1, plan.level_at(first)) < norm.cdf(0.75 / SIGMA)
    assert first < 6600  # 6,470 with TOP_SHARE of alpha at this look; 8,164 with the sqrt(n_k) share alone


def test_looks_stop_as_the_rules_say():
    grid = (0.0, 0.25, 0.5, 0.75, 1.0)
    plan = sequential.schedule(100_000, 0.001, SIGMA, grid)

    def at(samples: int) -> int:  # the first checkpoint from ``samples`` on
        return next(c for c in plan.checkpoints if c >= samples)

    c = at(12_800)
    unanimous = sequential.look(c, c, plan, SIGMA, grid)  # certifies 0.75, the best 100,000 can reach
    assert unanimous.stop and unanimous.prediction_certified and unanimous.radius >= 0.75
    c = at(800)
    assert not sequential.look(c, c, plan, SIGMA, grid).stop  # 0.5 certified, 0.75 still reachable
    abstain = sequential.look(c * 3 // 8, c, plan, SIGMA, grid)  # p_A < 1/2 established
    assert abstain.stop and not abstain.prediction_certified and abstain.radius == 0.0
    # p_A = 0.8 well established: 0.25 (Phi(1) = 0.84) is out of reach, 0 is certified
    c = at(6400)
    far = sequential.look(c * 4 // 5, c, plan, SIGMA, grid)
    assert far.stop and far.prediction_certified and 0.0 < far.radius < 0.25
    assert sequential.look(60_000, 100_000, plan, SIGMA, grid).stop
    # whatever stops the run, the radius is the bound at that look's level
    level = plan.level_at(c)
    assert far.radius == pytest.approx(SIGMA * norm.ppf(stats.clopper_pearson_lower(c * 4 // 5, c, level)))


def test_a_radius_the_budget_cannot_afford_stops_the_run_without_loss():
    """p_A = 0.998 at sigma 0.25 (radius 0.72): 0.5 certified early, 0.75 (p_A >= 0.99865) not ruled out by the upper
    bound for a long time, yet beyond reach once the dissent exceeds what n samples could hold and certify 0.75."""
    plan = sequential.schedule(100_000, 0.001, SIGMA, CIFAR)
    plan = replace(plan, futility=(1e-300,) * len(plan.checkpoints))  # this rule alone: no futility test fires
    threshold = norm.cdf(0.75 / SIGMA)
    afford = sequential.affordable_dissent(100_000, max(plan.levels), threshold)
    assert stats.clopper_pearson_lower(100_000 - afford, 100_000, plan.levels[-1]) >= threshold
    assert stats.clopper_pearson_lower(100_000 - afford - 1, 100_000, plan.levels[-1]) < threshold
    c = next(c for c in plan.checkpoints if c * 0.002 > afford + 1)
    assert stats.clopper_pearson_upper(c - afford - 1, c, plan.level_at(c)) > threshold  # the upper bound: go on
    beyond = sequential.look(c - afford - 1, c, plan, SIGMA, CIFAR)
    assert beyond.stop and 0.5 <= beyond.radius < 0.75
    assert not sequential.look(c - afford, c, plan, SIGMA, CIFAR).stop  # one dissent fewer: 0.75 still possible
    # and no later look could have certified 0.75 with that dissent
    later = [m for m in plan.checkpoints if m >= c]
    assert all(stats.clopper_pearson_lower(m - afford - 1, m, plan.level_at(m)) < threshold for m in later)
    # a grid radius beyond what n samples can certify at all: the run stops at its first look
    assert sequential.affordable_dissent(100, 0.01, norm.cdf(8.0)) == -1
    assert sequential.look(100, 100, sequential.schedule(1000, 0.01, SIGMA, (2.0,)), SIGMA, (2.0,)).stop


def test_futility_gives_up_a_radius_that_n_samples_would_not_certify():
    """p_A a little below Phi(0.5 / sigma) (as far below as the vote share n samples need for 0.5 is above it):
    the futility test stops the run once its upper bound is below that share, before an upper bound at the look's
    own level could rule out Phi(0.5 / sigma) itself."""
    plan = sequential.schedule(100_000, 0.001, SIGMA, CIFAR)
    threshold = norm.cdf(0.5 / SIGMA)
    needed = 1 - sequential.affordable_dissent(100_000, max(plan.levels), threshold) / 100_000
    p = 2 * threshold - needed
    stop = next(c for c in plan.checkpoints if sequential.look(round(p * c), c, plan, SIGMA, CIFAR).stop)
    assert stop < 100_000
    assert stats.clopper_pearson_upper(round(p * stop), stop, plan.futility[plan.index(stop)]) < needed
    assert stats.clopper_pearson_upper(round(p * stop), stop, plan.level_at(stop)) > threshold
    assert sum(plan.futility[:-1]) <= sequential.FUTILITY * (1 + 1e-12)


def test_futility_rarely_gives_up_a_radius_n_samples_reach_on_average():
    """At p_A equal to the share n samples need, the futility test gives up the radius in at most FUTILITY of the
    runs (+3 sd): its levels are spent like alpha. (Over these 400 runs: 0.058; with FUTILITY at every look,
    unspent, 0.59, which fails.)"""
    plan = sequential.schedule(100_000, 0.001, SIGMA, CIFAR)
    threshold = norm.cdf(0.75 / SIGMA)
    afford = sequential.affordable_dissent(100_000, max(plan.levels), threshold)
    p = 1 - afford / 100_000
    rng = np.random.default_rng(0)
    runs, gave_up = 400, 0
    for _ in range(runs):
        votes = np.cumsum(rng.binomial(np.diff((0, *plan.checkpoints)), p))
        for c, n_a in zip(plan.checkpoints[:-1], votes):
            decision = sequential.look(int(n_a), c, plan, SIGMA, CIFAR)
            if decision.stop:
                gave_up += decision.radius < 0.75 and c - n_a <= afford
                break
    rate = sequential.FUTILITY
    assert gave_up / runs <= rate + 3 * math.sqrt(rate * (1 - rate) / runs)


def test_the_floor_is_walds_bound_and_this_schedule_stays_above_it():
    """certify_floor: ln(1/alpha) / -ln t for a unanimous vote (the docstring's 5,114); n where p_A is at the
    threshold; falls as p_A moves away. This schedule's runs use more than the floor on average."""
    t = norm.cdf(0.75 / SIGMA)
    assert sequential.certify_floor(100_000, 100_000, 0.001, t) == pytest.approx(math.log(1000) / -math.log(t))
    assert sequential.certify_floor(99_860, 100_000, 0.001, t) == 100_000  # p_A below t: CERTIFY cannot either
    floors = [sequential.certify_floor(100_000 - d, 100_000, 0.001, t) for d in (0, 20, 60, 100)]
    assert all(b > a for a, b in zip(floors, floors[1:]))
    plan = sequential.schedule(100_000, 0.001, SIGMA, CIFAR)
    rng = np.random.default_rng(1)
    for dissent in (0, 20, 60):
        p = 1 - dissent / 100_000
        used = []
        for _ in range(30):
            votes = np.cumsum(rng.binomial(np.diff((0, *plan.checkpoints)), p))
            used.append(next(c for c, n_a in zip(plan.checkpoints, votes)
                             if sequential.look(int(n_a), c, plan, SIGMA, CIFAR).stop))
        assert np.mean(used) > sequential.certify_floor(100_000 - dissent, 100_000, 0.001, t)


def test_results_do_not_depend_on_the_batch_size():
    toy = make_toy(num_images=6)
    smooth = Smooth(toy.model, 2, 0.5, seed=1)
    grid = (0.0, 0.25, 0.5, 0.75, 1.0)
    for i in range(len(toy.labels)):
        results = {smooth.certify_sequential(toy.images[i], 30, 700, 0.01, b, radii=grid, idx=i) for b in (1, 7, 1000)}
        assert len(results) == 1, results


def test_sequential_uses_certifys_samples_and_stops_early_on_easy_images():
    toy = make_toy(num_images=5)
    smooth = Smooth(toy.model, 2, 0.25, seed=0)
    x = toy.images[0]  # one unit from the plane: every vote is for its class
    prediction, radius, used = smooth.certify_sequential(x, 100, 100_000, 0.001, 1000, radii=(0.0, 0.25, 0.5),
                                                         idx=0)
    assert prediction == int(toy.labels[0]) and radius >= 0.5 and used < 10_000
    # at n = used, certify sees the same samples: its bound at the full alpha is at least the sequential one
    assert smooth.certify(x, 100, used, 0.001, 1000, idx=0)[1] >= radius


def test_bad_radii_are_refused():
    toy = make_toy(num_images=2)
    smooth = Smooth(toy.model, 2, 0.25)
    with pytest.raises(ValueError, match="radii must name at least one radius"):
        smooth.certify_sequential(toy.images[0], 10, 100, 0.01, 50, radii=())
    with pytest.raises(ValueError, match="radius must be"):
        smooth.certify_sequential(toy.images[0], 10, 100, 0.01, 50, radii=(0.0, -1.0))


def test_split_by_sample_over_two_processes_gives_one_process_results():
    """Two ranks (threads here) draw their halves of every look's samples and sum the counts at each look."""
    import threading

    from diffsmooth_fast.smoothing.certify import SampleShard

    toy = make_toy(num_images=4)
    grid = (0.0, 0.25, 0.5, 0.75, 1.0)
    barrier, slots = threading.Barrier(2), [None, None]

    def all_reduce_for(rank):
        def all_reduce(t: torch.Tensor) -> None:
            slots[rank] = t.clone()
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            t.copy_(total)
        return all_reduce

    single = Smooth(toy.model, 2, 0.5, seed=2)
    want = [single.certify_sequential(toy.images[i], 30, 900, 0.01, 64, radii=grid, idx=i) for i in range(4)]
    got: dict[int, list] = {}

    def rank_run(rank: int) -> None:
        smooth = single.with_shard(SampleShard(rank, 2, all_reduce_for(rank)))
        got[rank] = [smooth.certify_sequential(toy.images[i], 30, 900, 0.01, 64, radii=grid, idx=i) for i in range(4)]

    threads = [threading.Thread(target=rank_run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)  # a hang guard for a busy machine, not a speed test
    assert got[0] == got[1] == want


# --- the command line and the files ------------------------------------------------------------------------------

def test_sequential_certify_adds_a_samples_column_and_analyze_reads_it(tmp_path, capsys):
    import json

    from diffsmooth_fast.run import tsv
    from diffsmooth_fast.run.cli import main

    args = ["certify", "--dataset", "toy", "--method", "cohen", "--sigma", "0.5", "--n0", "50", "--n", "5000",
            "--max", "6", "--quiet"]
    seq, fixed = tmp_path / "seq.tsv", tmp_path / "fixed.tsv"
    assert main([*args, "--sequential", "--radii", "0,0.5,1", "--out", str(seq)]) == 0
    assert main([*args, "--out", str(fixed)]) == 0
    assert seq.read_text().splitlines()[0].split("\t") == [*tsv.CERTIFY_HEADER, "samples"]
    assert fixed.read_text().splitlines()[0].split("\t") == list(tsv.CERTIFY_HEADER)
    assert all(len(line.split("\t")) == 6 for line in fixed.read_text().splitlines())  # Cohen's six, exactly
    rows = tsv.read_certify(seq)
    assert len(rows) == 6 and all(1 <= r.samples <= 5000 for r in rows) and any(r.samples < 5000 for r in rows)
    sidecar = json.loads((tmp_path / "seq.tsv.json").read_text())["settings"]
    assert sidecar["sequential"] is True and sidecar["radii"] == [0.0, 0.5, 1.0]
    capsys.readouterr()
    assert main(["analyze", "--json", str(seq), str(fixed)]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    assert files[0]["samples_per_image"] == pytest.approx(sum(r.samples for r in rows) / 6)
    assert files[1]["samples_per_image"] is None
    # sequential and its grid are result settings: a fixed-n resume of a sequential file is refused
    assert main([*args, "--out", str(seq), "--resume"]) == 2
    assert main([*args, "--sequential", "--radii", "0,0.5", "--out", str(seq), "--resume"]) == 2
    assert main([*args, "--sequential", "--radii", "0,0.5,1", "--max", "8", "--out", str(seq), "--resume"]) == 0
    assert [r.idx for r in tsv.read_certify(seq)] == list(range(8))


@pytest.mark.parametrize("extra,message", [
    (["--radii", "0,0.5"], "--radii is the grid of --sequential"),
    (["--sequential", "--radii", "0,-1"], "--radii must be non-negative"),
])
def test_sequential_option_errors_are_one_line(extra, message, capsys):
    from diffsmooth_fast.run.cli import main

    assert main(["certify", "--dataset", "toy", "--method", "cohen", "--max", "1", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
