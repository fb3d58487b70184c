"""Sequential CERTIFY (Smooth.certify_sequential, diffsmooth_fast.smoothing.sequential): sound like CERTIFY on a
linear classifier whose smoothed radius is known in closed form, while the same looks without alpha spending are
not; its stopping rules; results independent of the batch size."""

from __future__ import annotations

import math

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
    shows the test can fail (over these 500 runs: 0.244 against 0.062 with spending and 0.074 for certify)."""
    smooth, x = problem
    spent = sequential.schedule
    monkeypatch.setattr(sequential, "schedule", lambda n, alpha: sequential.Schedule(spent(n, alpha).checkpoints,
                                                                                     alpha))
    rate = overshoot_rate(lambda idx: smooth.certify_sequential(x, 50, N, ALPHA, 500, radii=GRID, idx=idx)[1]
                          > DISTANCE)
    assert rate > LIMIT, rate


def test_schedule_depends_on_n_alone_and_spends_alpha():
    plan = sequential.schedule(100_000, 0.001)
    assert plan.checkpoints[0] == sequential.FIRST_CHECKPOINT and plan.checkpoints[-1] == 100_000
    assert all(b > a for a, b in zip(plan.checkpoints, plan.checkpoints[1:]))
    assert plan.alpha_per_look * len(plan.checkpoints) == pytest.approx(0.001)
    assert sequential.schedule(50, 0.01).checkpoints == (50,)


def test_looks_stop_as_the_rules_say():
    plan = sequential.schedule(100_000, 0.001)
    grid = (0.0, 0.25, 0.5, 0.75, 1.0)
    unanimous = sequential.look(12_800, 12_800, plan, SIGMA, grid)  # certifies 0.75, the best 100,000 can reach
    assert unanimous.stop and unanimous.prediction_certified and unanimous.radius >= 0.75
    assert not sequential.look(800, 800, plan, SIGMA, grid).stop  # 0.5 certified, 0.75 still reachable
    abstain = sequential.look(300, 800, plan, SIGMA, grid)  # p_A < 1/2 established
    assert abstain.stop and not abstain.prediction_certified and abstain.radius == 0.0
    # p_A = 0.8 well established: 0.25 (Phi(1) = 0.84) is out of reach, 0 is certified
    far = sequential.look(5120, 6400, plan, SIGMA, grid)
    assert far.stop and far.prediction_certified and 0.0 < far.radius < 0.25
    last = sequential.look(60_000, 100_000, plan, SIGMA, grid)
    assert last.stop
    # whatever stops the run, the radius is the bound at the spent level
    assert far.radius == pytest.approx(SIGMA * norm.ppf(stats.clopper_pearson_lower(5120, 6400, plan.alpha_per_look)))


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
