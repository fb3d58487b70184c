"""Certification under torchrun: 2 gloo processes, by image and by sample, equal a single process; a killed rank
is resumed; parts of another number of processes are refused; the merge; the sample-range split.

The end-to-end tests start real processes with ``python -m torch.distributed.run --standalone`` (a free port of
its own) and compare the rows (all but the time column) with a run in this process. They certify the built-in
toy problem and the demo's digits with its shipped models; ``PROBLEMS`` holds their CLI arguments (nothing else
depends on them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from diffsmooth_fast.data.toy import make_toy
from diffsmooth_fast.engine.method import MethodConfig, PurifiedClassifier
from diffsmooth_fast.run import distributed
from diffsmooth_fast.run import tsv as io
from diffsmooth_fast.run.cli import main
from diffsmooth_fast.smoothing.certify import SampleShard, Smooth
from diffsmooth_fast.smoothing.noise_address import PHASE_ESTIMATION, PHASE_SELECTION

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What is certified: the toy problem with Cohen's Gaussian smoothing, and with fresh local noise (which the base
# classifier draws itself, by sample position: the case where a sample range must match the full run exactly).
PROBLEMS = {
    "cohen": ["--dataset", "toy", "--method", "cohen"],
    "fresh": ["--dataset", "toy", "--method", "local-only", "--local-noise", "fresh", "--m", "2"],
    # the shipped demo models: DiffSmooth (one-shot denoise, fresh local noise) on the first 7 digits
    "demo": ["--dataset", "demo", "--skip", "1", "--method", "diffsmooth", "--local-noise", "fresh", "--m", "2"],
}
SAMPLING = ["--n0", "50", "--n", "400", "--batch", "64", "--seed", "5", "--max", "7", "--quiet"]
IMAGES = list(range(7))


def certify(problem: str) -> list[str]:
    return ["certify", *PROBLEMS[problem], *SAMPLING]


def predict(problem: str) -> list[str]:
    return ["predict", *PROBLEMS[problem], "--n", "300", "--batch", "64", "--seed", "5", "--max", "7", "--quiet"]


def torchrun(args: list[str], nproc: int = 2, env: dict[str, str] | None = None,
             restarts: int = 0) -> subprocess.CompletedProcess:
    """``diffsmooth-fast ARGS`` under torchrun with ``nproc`` gloo processes on this machine."""
    environ = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    environ.pop(distributed.TEST_DIE_ENV, None)
    environ.update(env or {})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "--max-restarts", str(restarts), "-m", "diffsmooth_fast", "--", *args]
    return subprocess.run(command, env=environ, capture_output=True, text=True, timeout=1800)  # a hang guard for a busy machine, not a speed test


def rows_of(path) -> list[str]:
    """The file's lines without the time column."""
    return [line.rsplit("\t", 1)[0] for line in open(path).read().splitlines()]


def snapshot(folder) -> dict[str, bytes]:
    """The folder's files but lock files (a killed run leaves its OUT.lock, which locks nothing: the next run on
    OUT takes it and removes it when done)."""
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))
            if not name.endswith(".lock")}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Single-process outputs, by (command, problem), computed once."""
    folder, cache = tmp_path_factory.mktemp("single"), {}

    def get(command: str, problem: str) -> list[str]:
        if (command, problem) not in cache:
            out = folder / f"{command}-{problem}.tsv"
            args = certify(problem) if command == "certify" else predict(problem)
            assert main([*args, "--out", str(out)]) == 0
            cache[command, problem] = rows_of(out)
        return cache[command, problem]

    return get


def check_merged(out, expected: list[str], runs: int) -> None:
    """``out`` holds the expected rows sorted by idx, one sidecar with ``runs`` sessions, and no parts."""
    assert rows_of(out) == expected
    assert [row.idx for row in io.read_certify(out)] == IMAGES
    sidecar = json.load(open(f"{out}.json"))
    assert len(sidecar["runs"]) == runs and all("distributed" in run for run in sidecar["runs"])
    assert "part" not in sidecar["settings"]
    assert sorted(os.listdir(out.parent)) == [out.name, f"{out.name}.json"]


# End to end under torchrun -------------------------------------------------------------------------------------


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_image_sharding_equals_a_single_process(problem, single, tmp_path):
    out = tmp_path / "out.tsv"
    done = torchrun([*certify(problem), "--out", str(out)])
    assert done.returncode == 0, done.stderr
    check_merged(out, single("certify", problem), runs=2)
    sessions = json.load(open(f"{out}.json"))["runs"]
    assert [s["distributed"] for s in sessions] == [{"mode": "images", "rank": r, "world_size": 2} for r in (0, 1)]
    assert [s["images"] for s in sessions] == [4, 3]


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_split_samples_equals_a_single_process(problem, single, tmp_path):
    out = tmp_path / "out.tsv"
    done = torchrun([*certify(problem), "--split-samples", "--out", str(out)])
    assert done.returncode == 0, done.stderr
    assert rows_of(out) == single("certify", problem)
    sidecar = json.load(open(f"{out}.json"))
    assert [run["distributed"] for run in sidecar["runs"]] == [{"mode": "samples", "world_size": 2}]
    assert sorted(os.listdir(tmp_path)) == ["out.tsv", "out.tsv.json"]  # rank 0 alone writes


def without_time(path) -> list[list[str]]:
    """The file's rows without the time column (not the last one in sequential files: 'samples' follows it)."""
    lines = [line.split("\t") for line in open(path).read().splitlines()]
    keep = [i for i, name in enumerate(lines[0]) if name != "time"]
    return [[fields[i] for i in keep] for fields in lines]


@pytest.mark.parametrize("problem", ["cohen", "fresh"])
def test_split_samples_sequential_equals_a_single_process(problem, tmp_path):
    """--sequential under --split-samples: the ranks draw their shares of every look's samples and all-reduce the
    counts at each look, so they stop at the same look as one process: the same rows, samples included."""
    args = [*certify(problem), "--n", "3000", "--sequential", "--radii", "0,0.25,0.5,0.75,1"]
    alone = tmp_path / "alone.tsv"
    assert main([*args, "--out", str(alone)]) == 0
    out = tmp_path / "split.tsv"
    done = torchrun([*args, "--split-samples", "--out", str(out)])
    assert done.returncode == 0, done.stderr
    assert without_time(out) == without_time(alone)
    samples = [row.samples for row in io.read_certify(out)]
    assert min(samples) < 3000 and len(set(samples)) > 1  # runs stopped at different looks, some early
    sidecar = json.load(open(f"{out}.json"))
    assert sidecar["settings"]["sequential"] is True
    assert [run["distributed"] for run in sidecar["runs"]] == [{"mode": "samples", "world_size": 2}]


def test_predict_by_image(single, tmp_path):
    out = tmp_path / "out.tsv"
    done = torchrun([*predict("fresh"), "--out", str(out)])
    assert done.returncode == 0, done.stderr
    assert rows_of(out) == single("predict", "fresh")
    assert [row.idx for row in io.read_predict(out)] == IMAGES


def test_predict_by_sample_on_stdout(single):
    done = torchrun([*predict("cohen"), "--split-samples"])
    assert done.returncode == 0, done.stderr
    assert [line.rsplit("\t", 1)[0] for line in done.stdout.splitlines()] == single("predict", "cohen")


def test_image_sharding_refuses_stdout():
    done = torchrun(certify("cohen"))
    assert done.returncode != 0
    assert "give --out FILE" in done.stderr


def test_killed_rank_then_resume_by_image(single, tmp_path):
    """Rank 1 is killed (SIGKILL) after 2 images; torchrun stops rank 0; the same command with --resume finishes
    every part and merges them into the single-process rows. Before that, resuming with another number of
    processes (1 here) is refused and touches nothing."""
    out = tmp_path / "out.tsv"
    args = [*certify("demo"), "--out", str(out)]
    killed = torchrun(args, env={distributed.TEST_DIE_ENV: "1:2"})
    assert killed.returncode != 0
    assert not out.exists()
    part1 = tmp_path / "out.rank1-of2.tsv"
    assert [row.idx for row in io.read_certify(part1)] == [1, 3]
    assert (tmp_path / "out.rank0-of2.tsv").exists()
    before = snapshot(tmp_path)
    assert main([*args, "--resume"]) == 2  # one process cannot resume the parts of two
    assert snapshot(tmp_path) == before
    resumed = torchrun([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    check_merged(out, single("certify", "demo"), runs=4)  # two sessions of each rank


def test_resume_with_another_number_of_processes_is_refused(tmp_path):
    out = tmp_path / "out.tsv"
    args = [*certify("cohen"), "--out", str(out)]
    assert torchrun(args, env={distributed.TEST_DIE_ENV: "1:1"}).returncode != 0
    before = snapshot(tmp_path)
    assert sorted(before) == ["out.rank0-of2.tsv", "out.rank0-of2.tsv.json", "out.rank1-of2.tsv",
                              "out.rank1-of2.tsv.json"]
    refused = torchrun([*args, "--resume"], nproc=3)
    assert refused.returncode != 0
    errors = [line for line in refused.stderr.splitlines() if line.startswith("diffsmooth-fast: error:")]
    assert len(errors) == 3 and len(set(errors)) == 1  # every rank stops, with the same one line
    assert "unfinished run over 2 processes" in errors[0]
    assert snapshot(tmp_path) == before
    assert main([*args, "--overwrite"]) == 0  # one process starting over removes the parts
    assert sorted(os.listdir(tmp_path)) == ["out.tsv", "out.tsv.json"]


def test_workers_restarted_by_torchrun_resume_on_their_own(single, tmp_path):
    """torchrun --max-restarts 1: rank 1 dies after 2 images, torchrun restarts both workers, which continue the
    run (as with --resume, not given here) instead of refusing the files they left."""
    out = tmp_path / "out.tsv"
    done = torchrun([*certify("fresh"), "--out", str(out)], env={distributed.TEST_DIE_ENV: "1:2"}, restarts=1)
    assert done.returncode == 0, done.stderr
    check_merged(out, single("certify", "fresh"), runs=4)


def test_killed_rank_then_resume_by_sample(single, tmp_path):
    out = tmp_path / "out.tsv"
    args = [*certify("demo"), "--split-samples", "--out", str(out)]
    killed = torchrun(args, env={distributed.TEST_DIE_ENV: "1:3"})
    assert killed.returncode != 0
    assert 2 <= len(io.read_certify(out)) <= 3  # rank 0 may be stopped before it writes the third row
    resumed = torchrun([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert rows_of(out) == single("certify", "demo")
    assert len(json.load(open(f"{out}.json"))["runs"]) == 2


# The merge -----------------------------------------------------------------------------------------------------


SETTINGS = {"command": "certify", "n": 10}


def write_part(path, indices, session) -> None:
    with open(path, "w") as f:
        io.write_certify_header(f)
        for idx in indices:
            io.write_certify_row(f, io.CertifyRow(idx, 1, 1, 0.25 + idx / 100, 1, 0.5 + idx), sync=False)
    with open(f"{path}.json", "w") as f:
        json.dump({"settings": {**SETTINGS, "part": session}, "runs": [session]}, f)


def test_merge_sorts_by_idx_writes_one_sidecar_and_removes_the_parts(tmp_path):
    out = str(tmp_path / "m.tsv")
    write_part(distributed.part_path(out, 0, 2), [0, 2, 4], {"rank": 0})
    write_part(distributed.part_path(out, 1, 2), [1, 3], {"rank": 1})
    rows = distributed.merge_parts(out, io.CERTIFY_HEADER, 2, range(5), SETTINGS)
    assert [r.idx for r in rows] == [r.idx for r in io.read_certify(out)] == [0, 1, 2, 3, 4]
    assert io.read_certify(out)[3] == io.CertifyRow(3, 1, 1, 0.28, 1, 3.5)
    assert json.load(open(f"{out}.json")) == {"format": "diffsmooth-fast sidecar 1", "settings": SETTINGS,
                                              "runs": [{"rank": 0}, {"rank": 1}]}
    assert sorted(os.listdir(tmp_path)) == ["m.tsv", "m.tsv.json"]


def test_merge_keeps_the_rows_and_sessions_of_a_resumed_output(tmp_path):
    out = str(tmp_path / "m.tsv")
    write_part(out, [0, 1], {"rank": "before"})
    json.dump({"settings": SETTINGS, "runs": [{"before": 1}]}, open(f"{out}.json", "w"))
    with open(out, "a") as f:
        f.write("9\t1\t1\t0.")  # a row torn by a kill
    write_part(distributed.part_path(out, 0, 2), [1, 2], {"rank": 0})  # 1 again: killed before the parts went
    write_part(distributed.part_path(out, 1, 2), [3], {"rank": 1})
    distributed.merge_parts(out, io.CERTIFY_HEADER, 2, range(4), SETTINGS)
    assert [r.idx for r in io.read_certify(out)] == [0, 1, 2, 3]
    assert json.load(open(f"{out}.json"))["runs"] == [{"before": 1}, {"rank": 0}, {"rank": 1}]


def test_merge_refuses_a_missing_part_or_image(tmp_path):
    out = str(tmp_path / "m.tsv")
    write_part(distributed.part_path(out, 0, 2), [0, 2], {"rank": 0})
    with pytest.raises(ValueError, match="m.rank1-of2.tsv is missing"):
        distributed.merge_parts(out, io.CERTIFY_HEADER, 2, range(4), SETTINGS)
    write_part(distributed.part_path(out, 1, 2), [1], {"rank": 1})
    with pytest.raises(ValueError, match=r"1 images are in no part \(idx \[3\]\)"):
        distributed.merge_parts(out, io.CERTIFY_HEADER, 2, range(4), SETTINGS)
    assert not os.path.exists(out) and len(os.listdir(tmp_path)) == 4  # nothing written, nothing removed


def test_part_paths_and_finding_them(tmp_path):
    assert distributed.part_path("runs/a.tsv", 1, 4) == "runs/a.rank1-of4.tsv"
    assert distributed.part_path("a", 0, 2) == "a.rank0-of2"
    out = str(tmp_path / "a.b.tsv")
    for rank, world in ((0, 2), (1, 2), (2, 3)):
        write_part(distributed.part_path(out, rank, world), [rank], {"rank": rank})
    open(tmp_path / "a.b.rank5-of2.tsv", "w").close()  # not a part: rank >= K
    found = distributed.find_parts(out)
    assert {k: [os.path.basename(p) for p in v] for k, v in found.items()} == {
        2: ["a.b.rank0-of2.tsv", "a.b.rank1-of2.tsv"], 3: ["a.b.rank2-of3.tsv"]}
    with pytest.raises(ValueError, match="unfinished run over 3 processes"):
        distributed.preflight_images(out, 2, 0, resume_run=True, overwrite=False)
    distributed.remove_parts(out, keep_world_size=2)
    assert list(distributed.find_parts(out)) == [2]
    assert distributed.preflight_images(out, 2, 1, resume_run=True, overwrite=False) == (False, True)
    with pytest.raises(ValueError, match="pass --resume to continue it or --overwrite"):
        distributed.preflight_images(out, 2, 0, resume_run=False, overwrite=False)
    with pytest.raises(ValueError, match="unfinished run over 2 processes"):
        distributed.check_no_parts(out, overwrite=False)


# Who does what --------------------------------------------------------------------------------------------------


def test_launch_from_env():
    assert distributed.launch_from_env({}) is None
    assert distributed.launch_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "TORCHELASTIC_RESTART_COUNT": "2"}
    assert distributed.launch_from_env(env) == distributed.Launch(3, 4, 1, 2)
    with pytest.raises(ValueError, match="torchrun"):
        distributed.launch_from_env({"WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="do not fit"):
        distributed.launch_from_env({"WORLD_SIZE": "2", "RANK": "2"})


def test_image_shares_cover_every_image_once():
    indices = list(range(0, 100, 7))
    for world in (1, 2, 3, 5, 20):
        shares = [distributed.image_share(indices, r, world) for r in range(world)]
        assert sorted(i for share in shares for i in share) == indices
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


@pytest.mark.parametrize("num", [0, 1, 2, 7, 100, 1001])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_sample_ranges_are_disjoint_and_cover_all(num, world):
    parts = [SampleShard(rank, world, lambda t: None).part(num) for rank in range(world)]
    assert parts[0][0] == 0 and parts[-1][1] == num
    assert all(a[1] == b[0] and a[0] <= a[1] for a, b in zip(parts, parts[1:]))


def test_sample_shard_checks_its_place():
    with pytest.raises(ValueError, match="rank"):
        SampleShard(2, 2, lambda t: None)
    with pytest.raises(ValueError, match="world_size"):
        SampleShard(0, 0, lambda t: None)


def toy_smooth(local_noise: str) -> tuple[Smooth, torch.Tensor]:
    toy = make_toy()
    method = MethodConfig("local-only" if local_noise else "cohen", 0.5, m=3, local_noise=local_noise or "fixed")
    return Smooth(PurifiedClassifier(method, toy.model, seed=7), 2, 0.5, seed=7), toy.images[4]


@pytest.mark.parametrize("local_noise", [None, "fresh", "fixed"])
@pytest.mark.parametrize("world", [2, 3, 7])
def test_sub_range_counts_sum_to_the_full_counts(local_noise, world):
    smooth, x = toy_smooth(local_noise)
    for phase in (PHASE_SELECTION, PHASE_ESTIMATION):
        full = smooth.sample_counts(x, 1000, 128, idx=4, phase=phase)
        parts = [SampleShard(rank, world, lambda t: None).part(1000) for rank in range(world)]
        summed = sum(smooth.sample_counts(x, stop - start, 37, idx=4, phase=phase, start=start)
                     for start, stop in parts)
        assert torch.equal(summed, full)


@pytest.mark.parametrize("local_noise", [None, "fresh"])
def test_sharded_certify_and_predict_equal_the_full_run(local_noise):
    """Each shard's certify/predict, with an all-reduce that adds the other shards' counts, decides as the full
    run does: the same prediction and radius on every shard."""
    smooth, x = toy_smooth(local_noise)
    world = 3
    for call in (lambda s: s.certify(x, 60, 700, 0.001, 100, idx=4), lambda s: s.predict(x, 500, 0.01, 64, idx=4)):
        local = []  # pass 1: what each shard contributes
        for rank in range(world):
            call(smooth.with_shard(SampleShard(rank, world, lambda t: local.append(t.clone()))))
        total = sum(local)
        results = [call(smooth.with_shard(SampleShard(rank, world, lambda t: t.copy_(total))))
                   for rank in range(world)]
        assert results == [call(smooth)] * world


def test_non_finite_logits_on_another_shard_fail_this_one():
    """The status bits travel with the counts: NaN logits seen by one shard stop every shard."""
    smooth, x = toy_smooth(None)
    other = torch.tensor([0, 0, 0, 0, 0, 1])  # counts0 [2], counts [2], then x and logits flags: NaN logits there

    shard = SampleShard(0, 2, lambda t: t.add_(other))
    with pytest.raises(ValueError, match="NaN or infinite logits"):
        smooth.with_shard(shard).certify(x, 10, 20, 0.001, 10, idx=0)
    smooth.with_shard(SampleShard(0, 2, lambda t: None)).certify(x, 10, 20, 0.001, 10, idx=0)  # alone: fine


def test_cli_drops_the_separator_torchrun_needs(tmp_path, capsys):
    out = tmp_path / "a.tsv"
    assert main(["--", *certify("cohen"), "--max", "2", "--out", str(out)]) == 0
    assert [r.idx for r in io.read_certify(out)] == [0, 1]
    assert main(["certify", "--dist-timeout", "0"]) == 2
    assert "--dist-timeout must be a number of minutes > 0" in capsys.readouterr().err
