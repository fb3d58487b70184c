"""Resumable runs: kill -9 then --resume gives the uninterrupted file; torn lines are repaired; other settings,
existing files and missing sidecars are refused without touching anything."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from diffsmooth_fast.run import tsv as io
from diffsmooth_fast.run.cli import main
from diffsmooth_fast.run.resume import differences, repair

from .tiny_models import save_halfspace, save_unet, unet_cli_flags

HEADER = "\t".join(io.CERTIFY_HEADER) + "\n"
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"), pytest.mark.usefixtures("one_thread")]
# The kill test needs images slow enough to be killed between two of them; the others run fast.
SLOW_TOY = ["certify", "--dataset", "toy", "--n0", "50", "--n", "20000", "--batch", "10000", "--max", "6", "--seed", "3", "--quiet"]
TOY = ["certify", "--dataset", "toy", "--n0", "50", "--n", "1000", "--batch", "1000", "--max", "6", "--seed", "3", "--quiet"]


def strip_time(path) -> list[str]:
    return [line.rsplit("\t", 1)[0] for line in open(path).read().splitlines()]


def snapshot(*paths) -> list[bytes | None]:
    return [open(p, "rb").read() if os.path.exists(p) else None for p in paths]


def start_certify(args: list[str], out, rows: int) -> subprocess.Popen:
    """``certify args --out out`` in a child process, returned once ``rows`` rows are in ``out`` (the child is
    asserted to be still running: the tests kill it or race it). The wait is a hang guard for a busy machine,
    ten times what an idle one needs and more, not a speed test."""
    proc = subprocess.Popen([sys.executable, "-m", "diffsmooth_fast", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.exists(out) and open(out).read().count("\n") >= rows + 1:  # the header and the rows
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        raise AssertionError("the run finished before the test could reach it")
    return proc


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path):
    full, killed = tmp_path / "full.tsv", tmp_path / "killed.tsv"
    assert main([*SLOW_TOY, "--out", str(full)]) == 0
    proc = start_certify(SLOW_TOY, killed, rows=2)
    try:
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    rows_before = killed.read_text().count("\n") - 1
    assert 2 <= rows_before < 6
    with open(killed, "a") as f:  # and a row cut in the middle, as a kill during a write leaves it
        f.write("5\t0\t0\t0.4")
    assert main([*SLOW_TOY, "--out", str(killed), "--resume"]) == 0
    assert strip_time(killed) == strip_time(full)
    rows = io.read_certify(killed)
    assert sorted(r.idx for r in rows) == [r.idx for r in rows] == [0, 1, 2, 3, 4, 5]
    sidecar = json.load(open(f"{killed}.json"))
    assert len(sidecar["runs"]) == 2 and "--resume" in sidecar["runs"][1]["argv"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_models")
    return {"unet": save_unet(root / "ema.pt"), "data": str(root / "half.npz"),
            "clf": save_halfspace(root / "half.pt", root / "half.npz", n=4, size=16)}


def diffsmooth(models) -> list[str]:
    return ["certify", "--dataset", "npz", "--data", models["data"], "--classifier", models["clf"], "--denoiser",
            models["unet"], *unet_cli_flags(), "--sigma", "0.5", "--local-sigma", "0.5", "--local-noise", "fresh",
            "--m", "2", "--n0", "8", "--n", "32", "--batch", "16", "--quiet"]


def test_torn_line_then_resume_diffsmooth(models, tmp_path, cut=2):
    """DiffSmooth with fresh local noise cut after ``cut`` rows, mid-row, then resumed with another batch size."""
    full, part = tmp_path / "full.tsv", tmp_path / "part.tsv"
    assert main([*diffsmooth(models), "--out", str(full)]) == 0
    lines = open(full).read().splitlines(keepends=True)
    part.write_text("".join(lines[: 1 + cut]) + lines[1 + cut][:7])
    shutil.copy(f"{full}.json", f"{part}.json")
    assert main([*diffsmooth(models), "--out", str(part), "--resume", "--batch", "5"]) == 0  # --batch may change
    assert strip_time(part) == strip_time(full)
    assert open(part).read().endswith("\n") and len(strip_time(part)) == 5


def test_existing_output_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "run.tsv"
    assert main([*TOY, "--max", "2", "--out", str(out)]) == 0
    before = snapshot(out, f"{out}.json")
    capsys.readouterr()
    assert main([*TOY, "--max", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "exists: pass --resume" in err and err.count("\n") == 1
    assert snapshot(out, f"{out}.json") == before
    assert main([*TOY, "--max", "1", "--seed", "9", "--out", str(out), "--overwrite"]) == 0
    assert len(io.read_certify(out)) == 1 and json.load(open(f"{out}.json"))["settings"]["seed"] == 9


@pytest.mark.parametrize("change,named", [
    (["--sigma", "0.5"], ["sigma: 0.25 -> 0.5"]), (["--n", "2000"], ["n: 1000 -> 2000"]),
    (["--skip", "2"], ["skip: 1 -> 2"]), (["--seed", "4"], ["seed: 3 -> 4"]),
    (["--method", "local-only"], ["method: cohen -> local-only", "local_noise: (none) -> fixed"]),
])
def test_resume_with_other_settings_is_refused(tmp_path, capsys, change, named):
    out = tmp_path / "run.tsv"
    assert main([*TOY, "--max", "2", "--out", str(out)]) == 0
    with open(out, "a") as f:
        f.write("2\t1\t1")  # a torn line: even its repair must wait until the settings are known to match
    before = snapshot(out, f"{out}.json")
    capsys.readouterr()
    assert main([*TOY, "--max", "2", *change, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "refusing to resume" in err and all(n in err for n in named) and err.count("\n") == 1
    if change[0] != "--method":  # (a method brings settings of its own)
        assert err.split("differ: ")[1].split("; rerun")[0] == named[0]  # only what differs, once
        assert len(err) - len(str(out)) < 150
    assert snapshot(out, f"{out}.json") == before


def test_resume_may_extend_a_run_and_finish_a_finished_one(tmp_path, capsys):
    out = tmp_path / "run.tsv"
    assert main([*TOY, "--max", "2", "--out", str(out)]) == 0
    assert main([*TOY, "--max", "4", "--out", str(out), "--resume"]) == 0  # --max is not a result setting
    assert [r.idx for r in io.read_certify(out)] == [0, 1, 2, 3]
    before = open(out).read()
    assert main([*TOY, "--max", "4", "--out", str(out), "--resume"]) == 0  # nothing left to do
    assert open(out).read() == before


def test_resume_without_sidecar(tmp_path, capsys):
    out = tmp_path / "run.tsv"
    out.write_text(HEADER + "0\t1\t1\t0.5\t1\t0:00:01\n")
    assert main([*TOY, "--max", "2", "--out", str(out), "--resume"]) == 2
    assert "settings file" in capsys.readouterr().err and open(out).read().count("\n") == 2
    out.write_text(HEADER)  # killed between creating the file and writing its sidecar: nothing to lose
    assert main([*TOY, "--max", "2", "--out", str(out), "--resume"]) == 0
    assert len(io.read_certify(out)) == 2


def test_resume_of_nothing_starts_and_stdout_cannot_resume(tmp_path, capsys):
    out = tmp_path / "new.tsv"
    assert main([*TOY, "--max", "1", "--out", str(out), "--resume"]) == 0 and len(io.read_certify(out)) == 1
    assert main([*TOY, "--max", "1", "--resume"]) == 2
    assert "--resume needs --out FILE" in capsys.readouterr().err


@pytest.mark.parametrize("content,expected", [
    (HEADER + "0\t1\t1\t0.5\t1\t0:00:01\n1\t1\t1\t0.", HEADER + "0\t1\t1\t0.5\t1\t0:00:01\n"),
    (HEADER + "0\t1\t1\t0.5\t1\t0:00:01\n", HEADER + "0\t1\t1\t0.5\t1\t0:00:01\n"),
    (HEADER[:9], HEADER),  # killed while writing the header
    ("", HEADER),
    (HEADER + "\0\0\0", HEADER),  # zeros a crash may leave after the last write
])
def test_repair(tmp_path, content, expected):
    path = tmp_path / "x.tsv"
    path.write_text(content)
    repair(str(path), io.CERTIFY_HEADER)
    assert path.read_text() == expected


def test_repair_refuses_other_files(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("idx\tlabel\tpredict\tcorrect\ttime\n")
    with pytest.raises(ValueError, match="does not start with the header"):
        repair(str(path), io.CERTIFY_HEADER)


def test_refusal_lists_one_changed_flag_once(models, tmp_path, capsys):
    """A denoiser flag that differs is named alone (the refusal used to print the flags dictionary twice)."""
    out = tmp_path / "run.tsv"
    assert main([*diffsmooth(models), "--max", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main([*diffsmooth(models), "--max", "1", "--dropout", "0.1", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.split("differ: ")[1].split("; rerun")[0] == "denoiser.flags.dropout: 0.0 -> 0.1"
    assert len(err) - len(str(out)) < 200 and err.count("\n") == 1


def test_moved_checkpoints_resume_other_content_is_refused(models, tmp_path, capsys):
    """Checkpoints are recorded by content: the same files at another path resume (and a line says so); a file
    with other content at the recorded path is refused."""
    full, part = tmp_path / "full.tsv", tmp_path / "part.tsv"
    assert main([*diffsmooth(models), "--out", str(full)]) == 0
    lines = open(full).read().splitlines(keepends=True)
    part.write_text("".join(lines[:3]))
    shutil.copy(f"{full}.json", f"{part}.json")
    moved = tmp_path / "moved"
    moved.mkdir()
    paths = {key: str(shutil.copy(models[key], moved / os.path.basename(models[key]))) for key in ("unet", "clf")}
    args = [a if a not in (models["unet"], models["clf"]) else
            paths["unet" if a == models["unet"] else "clf"] for a in diffsmooth(models)]
    capsys.readouterr()
    assert main([*args, "--out", str(part), "--resume"]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "has the content recorded for" in line]
    assert len(notes) == 2 and any(paths["clf"] in n and models["clf"] in n for n in notes)
    assert strip_time(part) == strip_time(full)
    settings = json.load(open(f"{part}.json"))["settings"]
    assert settings["classifier"]["path"] == paths["clf"]  # the sidecar now says where the files are
    assert len(json.load(open(f"{part}.json"))["runs"]) == 2  # the first session is kept: one run
    save_halfspace(paths["clf"], tmp_path / "other.npz", n=4, size=16, seed=1)  # other weights, same path
    before = snapshot(part, f"{part}.json")
    assert main([*args, "--out", str(part), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "classifier: other content at the same path (sha256 " in err and err.count("\n") == 1
    assert snapshot(part, f"{part}.json") == before


def test_sidecar_of_paths_and_sizes_still_resumes(models, tmp_path, capsys):
    """Sidecars written before checkpoints were hashed recorded their absolute path and size: the same path and
    size resume (and the sidecar is rewritten with the hashes); another path is refused, as before."""
    out = tmp_path / "run.tsv"
    assert main([*diffsmooth(models), "--max", "1", "--out", str(out)]) == 0
    record = json.load(open(f"{out}.json"))
    for name in ("classifier", "denoiser"):
        del record["settings"][name]["sha256"]
    open(f"{out}.json", "w").write(json.dumps(record))
    moved = tmp_path / "moved.pt"
    shutil.copy(models["clf"], moved)
    other = [str(moved) if a == models["clf"] else a for a in diffsmooth(models)]
    capsys.readouterr()
    assert main([*other, "--max", "2", "--out", str(out), "--resume"]) == 2
    assert "classifier.path: " in capsys.readouterr().err
    assert main([*diffsmooth(models), "--max", "2", "--out", str(out), "--resume"]) == 0
    record = json.load(open(f"{out}.json"))
    assert record["settings"]["classifier"]["sha256"] and len(record["runs"]) == 2
    assert [r.idx for r in io.read_certify(out)] == [0, 1]


def _row(idx: int) -> str:
    return f"{idx}\t1\t1\t0.5\t1\t0:00:01\n"


@pytest.mark.parametrize("args,appended,line,reason", [
    ([], lambda text: _row(0), 5, "idx 0 again (first on line 2)"),  # two writers
    ([], lambda text: text, 5, "a second header line"),  # cat run.tsv run.tsv
    ([], lambda text: _row(3).replace("\n", "\textra\n"), 5, "expected 6 tab-separated fields, got 7"),
    ([], lambda text: _row(10), 5, "idx 10 is not one of the run's images (0, 1, 2, 3)"),  # beyond --max
    (["--skip", "2"], lambda text: _row(3), 5, "idx 3 is not one of the run's images (0, 2, 4, 6)"),  # off the grid
])
def test_rows_that_no_run_writes_refuse_the_resume(tmp_path, capsys, args, appended, line, reason):
    out = tmp_path / "run.tsv"
    assert main([*TOY, "--max", "3", *args, "--out", str(out)]) == 0
    with open(out, "a") as f:
        f.write(appended(out.read_text()))
    before = snapshot(out, f"{out}.json")
    capsys.readouterr()
    assert main([*TOY, "--max", "4", *args, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"cannot resume {out}:{line}: {reason}" in err and err.count("\n") == 1
    assert snapshot(out, f"{out}.json") == before


def test_rows_beyond_this_sessions_max_but_within_an_earlier_one_resume(tmp_path, capsys):
    """A resume may ask for fewer images than an earlier session did: those rows are still the run's."""
    out = tmp_path / "run.tsv"
    assert main([*TOY, "--max", "4", "--out", str(out)]) == 0
    assert main([*TOY, "--max", "2", "--out", str(out), "--resume"]) == 0
    assert [r.idx for r in io.read_certify(out)] == [0, 1, 2, 3]


def test_differences_name_each_setting_once_and_checkpoints_by_content():
    ckpt = {"path": "/a/noise_0.25/c.pt", "sha256": "1" * 64, "bytes": 10, "normalization": "auto"}
    flags = {"num_channels": 128, "dropout": 0.0}
    old = {"sigma": 0.25, "classifier": ckpt, "denoiser": {"path": "/a/d.pt", "sha256": "3" * 64, "flags": flags}}
    moved = {**old, "classifier": {**ckpt, "path": "/b/c.pt"}, "denoiser": {**old["denoiser"], "path": "/c/d.pt"}}
    assert differences(old, moved) == []  # the same content elsewhere
    other = {**old, "sigma": 0.5, "classifier": {**ckpt, "path": "/a/noise_0.50/c.pt", "sha256": "2" * 64},
             "denoiser": {**old["denoiser"], "flags": {**flags, "dropout": 0.1}}}
    assert differences(old, other) == [
        "classifier: noise_0.25/c.pt (sha256 111111111111) -> noise_0.50/c.pt (sha256 222222222222)",
        "denoiser.flags.dropout: 0.0 -> 0.1", "sigma: 0.25 -> 0.5"]
    recorded = {**old, "classifier": {"path": ckpt["path"], "bytes": 10, "normalization": "auto"}}  # no sha256
    assert differences(recorded, old) == []  # same path and size, as such sidecars were compared
    assert differences(recorded, moved) == ["classifier.path: /a/noise_0.25/c.pt -> /b/c.pt"]
