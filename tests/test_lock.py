"""One writer per output: a second run on a locked --out (a new run, or a --resume of a run that still lives) is
refused in one line naming the holder, touches nothing, and the lock dies with its process (kill -9 included)."""

from __future__ import annotations

import json
import os
import platform
import signal

import pytest

from diffsmooth_fast.run import lock
from diffsmooth_fast.run import tsv as io
from diffsmooth_fast.run.cli import main

from .test_distributed import certify, torchrun
from .test_resume import start_certify

pytestmark = pytest.mark.usefixtures("one_thread")
TOY = ["certify", "--dataset", "toy", "--n0", "50", "--n", "1000", "--batch", "1000", "--max", "3", "--seed", "3",
       "--quiet"]
SLOW_TOY = [*TOY[:-7], "--n", "20000", "--batch", "10000", "--max", "6", "--seed", "3", "--quiet"]


def snapshot(folder) -> dict[str, bytes]:
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def test_a_second_run_on_a_locked_output_is_refused(tmp_path, capsys):
    out = tmp_path / "run.tsv"
    assert main([*TOY, "--out", str(out)]) == 0
    assert not os.path.exists(lock.lock_path(str(out)))  # removed when the run ends
    with lock.hold(str(out)):  # another run holds it (flock: a second open file, even in one process)
        holder = json.load(open(lock.lock_path(str(out))))
        assert holder["pid"] == os.getpid() and holder["host"] == platform.node()
        before = snapshot(tmp_path)
        capsys.readouterr()
        for extra in (["--resume"], ["--overwrite"], ["--resume", "--max", "5"]):
            assert main([*TOY, *extra, "--out", str(out)]) == 2
            err = capsys.readouterr().err
            assert f"{out} is in use by another run (pid {os.getpid()} on {platform.node()}, started " in err
            assert err.count("\n") == 1
        assert snapshot(tmp_path) == before
        assert main([*TOY, "--out", str(tmp_path / "other.tsv")]) == 0  # other outputs are free
        assert main([*TOY, "--out", "-"]) == 0  # stdout needs no lock
    assert main([*TOY, "--max", "5", "--out", str(out), "--resume"]) == 0
    assert [r.idx for r in io.read_certify(out)] == [0, 1, 2, 3, 4]


def test_a_new_run_waits_for_nobody_and_a_stale_lock_file_is_no_lock(tmp_path):
    """A lock file left behind (its holder killed) holds nothing: the lock was the dead process's."""
    out = tmp_path / "run.tsv"
    with open(lock.lock_path(str(out)), "w") as f:
        f.write(json.dumps({"pid": 1, "host": "elsewhere", "started": "yesterday"}))
    assert main([*TOY, "--out", str(out)]) == 0
    assert not os.path.exists(lock.lock_path(str(out)))


def test_resume_while_the_first_run_lives_is_refused_until_it_dies(tmp_path, capsys):
    """The requeued-job case: the first run still writes when the second starts with --resume."""
    out = tmp_path / "run.tsv"
    proc = start_certify(SLOW_TOY, out, rows=1)
    try:
        capsys.readouterr()
        assert main([*SLOW_TOY, "--out", str(out), "--resume"]) == 2
        err = capsys.readouterr().err
        assert f"in use by another run (pid {proc.pid} on " in err and err.count("\n") == 1
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert main([*SLOW_TOY, "--out", str(out), "--resume"]) == 0  # the lock died with its process
    rows = io.read_certify(out)
    assert [r.idx for r in rows] == [0, 1, 2, 3, 4, 5]


def test_lock_file_removed_by_its_holder_is_not_shared(tmp_path):
    """A process that opened the lock file just before its holder removed it must not hold a lock on the removed
    file while a third process locks the new one: it notices and locks the file the path names."""
    out = str(tmp_path / "run.tsv")
    path = lock.lock_path(out)
    with lock.hold(out):
        stale = os.open(path, os.O_RDWR)  # opened while held
    try:
        with lock.hold(out):  # the file it opened is gone: this lock is on a new file, and exclusive
            assert os.path.exists(path) and os.fstat(stale).st_ino != os.stat(path).st_ino
            with pytest.raises(ValueError, match="in use by another run"):
                with lock.hold(out):
                    pass
    finally:
        os.close(stale)


def test_torchrun_run_is_one_locked_run(tmp_path):
    """Under torchrun rank 0 locks the output for the run: a held lock stops every rank before any file is made."""
    out = tmp_path / "run.tsv"
    with lock.hold(str(out)):
        result = torchrun([*certify("cohen"), "--out", str(out)])
    assert result.returncode != 0
    assert result.stderr.count(f"{out} is in use by another run (pid {os.getpid()}") == 2  # every rank says why
    assert sorted(os.listdir(tmp_path)) == []


def test_a_filesystem_without_locks_warns_and_runs(tmp_path, capsys, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "run.tsv"
    assert main([*TOY, "--out", str(out)]) == 0
    assert "this filesystem has no file locks" in capsys.readouterr().err
    assert len(io.read_certify(out)) == 3


def test_an_unusable_lock_file_is_one_line(tmp_path, capsys):
    out = tmp_path / "run.tsv"
    os.mkdir(lock.lock_path(str(out)))
    assert main([*TOY, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot lock the output: {out}.lock: Is a directory" in err and err.count("\n") == 1
    assert not out.exists()
