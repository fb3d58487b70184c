"""The command line: a certify run on the built-in toy problem, its output file, and its errors."""

from __future__ import annotations

import pytest

from diffsmooth_fast import io
from diffsmooth_fast.cli import main
from diffsmooth_fast.demo import make_toy


def test_certify_toy_writes_cohen_tsv(tmp_path, capsys):
    out = tmp_path / "runs" / "toy.tsv"  # the directory does not exist yet
    rc = main(["certify", "--n0", "20", "--n", "2000", "--alpha", "0.01", "--skip", "3", "--max", "5",
               "--batch", "512", "--out", str(out)])
    assert rc == 0
    rows = io.read_certify(out)
    assert [r.idx for r in rows] == [0, 3, 6, 9, 12]
    toy = make_toy()
    for row in rows:
        assert row.label == int(toy.labels[row.idx])
        assert row.correct == int(row.predict == row.label)
        # radius printed with 3 significant digits, so allow rounding; alpha=0.01 over 5 rows
        assert row.radius <= float(toy.exact_radius[row.idx]) * 1.005 + 1e-3
    err = capsys.readouterr().err
    assert "[5/5]" in err and "certified accuracy" in err and "ACR" in err


def test_certify_to_stdout_is_deterministic(capsys):
    args = ["certify", "--n0", "10", "--n", "500", "--max", "3", "--quiet", "--seed", "4"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args + ["--batch", "37"]) == 0  # same seed, other batch size: same rows but for the time
    second = capsys.readouterr().out
    strip = lambda text: [line.rsplit("\t", 1)[0] for line in text.splitlines()]  # noqa: E731
    assert first.splitlines()[0] == "\t".join(io.CERTIFY_HEADER)
    assert strip(first) == strip(second) and len(strip(first)) == 4


@pytest.mark.parametrize(
    "args,match",
    [
        (["--sigma", "0"], "sigma"),
        (["--n", "0"], "n must"),
        (["--alpha", "1.5"], "alpha"),
        (["--batch", "0"], "batch_size"),
        (["--skip", "0"], "--skip"),
        (["--backend", "warp"], "unknown backend"),
    ],
)
def test_user_errors_are_one_line(args, match, capsys):
    assert main(["certify", "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffsmooth-fast: error:") and match in err and "\n" not in err
