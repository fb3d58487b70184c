"""A run stopped by SIGTERM or SIGHUP (what schedulers send before they kill, and a closed terminal) ends like
Ctrl-C: every finished row on disk, one line saying how to resume, exit status 128 + the signal; a file-size limit
(``ulimit -f``) is an error naming the file, not a kill by SIGXFSZ."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time

import pytest

import diffsmooth_fast
from diffsmooth_fast.run import signals
from diffsmooth_fast.run import tsv as io

from .tiny_models import save_halfspace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(diffsmooth_fast.__file__)))  # this checkout, not another
HANG_GUARD = 600  # seconds; these runs take a few seconds on an idle machine: ten times that and more for a busy one
pytestmark = [pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals"),
              pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")]


def environment() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return env


def toy_run(out, *extra: str) -> list[str]:
    # 6 images of the toy problem at n = 5000: about 0.1-1 s each, so the run is still going when it is stopped
    return [sys.executable, "-m", "diffsmooth_fast", "certify", "--dataset", "toy", "--n0", "20", "--n", "5000",
            "--batch", "1000", "--max", "6", "--out", str(out), *extra]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_signal_stops_the_run_after_a_row_and_it_resumes(tmp_path, signum):
    out = tmp_path / "toy.tsv"
    # SIGINT at its default in the child: a shell that starts pytest in the background (``cmd &`` in a script)
    # leaves SIGINT ignored, the child would inherit that, and Python installs no Ctrl-C handler for an ignored one
    child = subprocess.Popen(toy_run(out), stderr=subprocess.PIPE, text=True, env=environment(), cwd=tmp_path,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in child.stderr:
            if line.startswith("[1/6]"):  # the first row is on disk (written before its progress line)
                child.send_signal(signum)
                break
        rest = child.stderr.read()
        status = child.wait(timeout=HANG_GUARD)
    finally:
        if child.poll() is None:
            child.kill()
    what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"  # Ctrl-C
    assert status == 128 + signum, rest
    last = rest.strip().splitlines()[-1]
    assert last == (f"diffsmooth-fast: {what}; every finished row is in {out}: rerun the same command "
                    f"with --resume to continue"), rest
    assert "Traceback" not in rest
    done = [r.idx for r in io.read_certify(out, torn_tail=True)]
    assert done[:1] == [0] and len(done) < 6  # the rows before the signal; the one in progress is lost
    assert sorted(os.listdir(tmp_path)) == ["toy.tsv", "toy.tsv.json"]  # no temporary file
    resumed = subprocess.run(toy_run(out, "--resume", "--quiet"), capture_output=True, text=True, env=environment(),
                             cwd=tmp_path, timeout=HANG_GUARD)
    assert resumed.returncode == 0, resumed.stderr
    assert [r.idx for r in io.read_certify(out)] == [0, 1, 2, 3, 4, 5]


def test_a_second_signal_kills_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with signals.stop_on_signals():
        with pytest.raises(signals.Stopped) as info:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(HANG_GUARD)  # the handler interrupts it
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # a second SIGTERM would kill at once
        assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN
    assert info.value.status == 143 and info.value.name == "SIGTERM"
    assert isinstance(info.value, KeyboardInterrupt)  # cleans up where Ctrl-C does
    assert signal.getsignal(signal.SIGTERM) == before


def limited(size: int):
    """A preexec_fn that limits the size of any file the child writes to ``size`` bytes (``ulimit -f``)."""
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return apply


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="no file-size limit signal")
def test_a_file_size_limit_names_the_file(tmp_path):
    """ulimit -f: the sidecar (about 2 kB) cannot be written at 500 bytes; at 4 kB the rows outgrow the limit."""
    out = tmp_path / "toy.tsv"
    small = subprocess.run(toy_run(out, "--quiet"), capture_output=True, text=True, env=environment(), cwd=tmp_path,
                           timeout=HANG_GUARD, preexec_fn=limited(500))
    assert small.returncode == 2, small.stderr
    assert small.stderr.strip() == f"diffsmooth-fast: error: {out}.json: File too large"
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]

    model, data = tmp_path / "halfspace.pt", tmp_path / "many.npz"
    save_halfspace(model, data, n=300, size=4)
    rows = tmp_path / "rows.tsv"
    command = [sys.executable, "-m", "diffsmooth_fast", "certify", "--dataset", "npz", "--data", str(data),
               "--classifier", str(model), "--method", "cohen", "--n0", "4", "--n", "8", "--batch", "8", "--quiet",
               "--out", str(rows)]
    big = subprocess.run(command, capture_output=True, text=True, env=environment(), cwd=tmp_path,
                         timeout=HANG_GUARD, preexec_fn=limited(4096))
    assert big.returncode == 2, big.stderr
    err = big.stderr.strip()
    assert err.startswith(f"diffsmooth-fast: error: {rows}: File too large") and "--resume" in err, err
    assert "\n" not in err
    kept = io.read_certify(rows, torn_tail=True)
    assert 10 < len(kept) < 300 and [r.idx for r in kept] == list(range(len(kept)))
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
