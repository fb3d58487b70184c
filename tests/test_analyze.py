"""`diffsmooth-fast analyze`: Cohen et al.'s published numbers from their own files, the table formats, partial
and torn files, predict files, the plot, and errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from diffsmooth_fast.run import analyze
from diffsmooth_fast.run.cli import main

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "cohen-certify"
CIFAR = FIXTURES / "cifar10/resnet110/noise_0.25/test/sigma_0.25"  # time as float seconds
IMAGENET = FIXTURES / "imagenet/resnet50/noise_0.50/test/sigma_0.50"  # time as timedelta
INTERRUPTED = FIXTURES / "imagenet/resnet50/noise_0.25/test/sigma_0.25"  # 427 of 500 rows
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason="../shared/fixtures is absent (a user's clone)")

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"


def run_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["analyze", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@needs_fixtures
def test_cohen_published_values(capsys):
    """REFERENCE.md: the values Cohen et al.'s own certify outputs give."""
    files = run_json(capsys, CIFAR, IMAGENET, "--radii", "0,0.25,0.5,0.75,1.0,1.5")["files"]
    cifar, imagenet = files
    assert cifar["path"] == str(CIFAR) and cifar["n"] == 500 and imagenet["n"] == 500
    assert [round(cifar["certified_accuracy"][r], 3) for r in ("0.0", "0.25", "0.5", "0.75")] == \
        [0.748, 0.600, 0.428, 0.266]
    assert round(cifar["acr"], 3) == 0.429
    assert [round(imagenet["certified_accuracy"][r], 3) for r in ("0.0", "0.5", "1.0", "1.5")] == \
        [0.572, 0.458, 0.372, 0.286]
    assert round(imagenet["acr"], 3) == 0.733
    assert 14 < cifar["time_per_image"] < 20 and 140 < imagenet["time_per_image"] < 160  # both time formats
    assert cifar["clean_accuracy"] == cifar["certified_accuracy"]["0.0"]
    assert 0 < cifar["abstain_rate"] < 0.2


@needs_fixtures
def test_interrupted_run_and_default_radii(capsys):
    (summary,) = run_json(capsys, INTERRUPTED)["files"]
    assert summary["n"] == 427
    assert list(summary["certified_accuracy"]) == [str(r) for r in analyze.PAPER_RADII["cifar10"]]


@needs_fixtures
def test_tables_mark_the_best(capsys):
    other = FIXTURES / "cifar10/resnet110/noise_0.50/test/sigma_0.50"  # better at large radii
    assert main(["analyze", str(CIFAR), str(other), "--latex"]) == 0
    latex = capsys.readouterr().out
    assert latex.startswith(r"\begin{tabular}") and latex.rstrip().endswith(r"\end{tabular}")
    first, second = [line for line in latex.splitlines() if "sigma" in line]
    assert r"\textbf{74.8}" in first and "& 65.2 &" in second  # r = 0: sigma 0.25 wins
    assert r"\textbf{0.538}" in second and "0.429" in first  # ACR: sigma 0.50 wins
    assert r"noise\_0.25" in first  # escaped for LaTeX
    assert main(["analyze", str(CIFAR), str(other), "--markdown", "--radii", "imagenet"]) == 0
    md = capsys.readouterr().out.splitlines()
    assert md[0].startswith("| file | n |") and "r=3" in md[0] and md[1].startswith("|---|")
    assert "**0.748**" in md[2] and "**0.538**" in md[3]
    assert main(["analyze", str(CIFAR)]) == 0
    text = capsys.readouterr().out
    assert "0.748" in text and "**" not in text


def test_partial_torn_and_predict_files(tmp_path, capsys):
    torn = tmp_path / "torn.tsv"
    torn.write_text(HEADER + "0\t1\t1\t0.5\t1\t0:00:02\n20\t3\t-1\t0.0\t0\t4.0\n40\t2\t2\t1.2\t1\t0:0")
    pred = tmp_path / "predict.tsv"
    pred.write_text("idx\tlabel\tpredict\tcorrect\ttime\n0\t1\t1\t1\t0:00:01\n1\t2\t-1\t0\t0:00:03\n")
    empty = tmp_path / "empty.tsv"
    empty.write_text(HEADER)
    t, p, e = run_json(capsys, torn, pred, empty, "--radii", "0,0.5,1")["files"]
    assert t["n"] == 2 and t["certified_accuracy"] == {"0.0": 0.5, "0.5": 0.5, "1.0": 0.0} and t["acr"] == 0.25
    assert t["abstain_rate"] == 0.5 and t["time_per_image"] == 3.0
    assert p["kind"] == "predict" and p["clean_accuracy"] == 0.5 and p["certified_accuracy"] is None
    assert e["n"] == 0 and e["acr"] is None
    assert main(["analyze", str(torn), str(pred), str(empty)]) == 0  # the text table copes with all three
    assert "predict.tsv" in capsys.readouterr().out


def test_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run.tsv"
    run.write_text(HEADER + "0\t1\t1\t0.5\t1\t0:00:02\n1\t3\t3\t0.9\t1\t0:00:02\n")
    out = tmp_path / "curve.png"
    assert main(["analyze", str(run), "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run.tsv"
    run.write_text(HEADER + "0\t1\t1\t0.5\t1\t0:00:02\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main(["analyze", str(run), "--plot", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "pip install matplotlib" in err and err.count("\n") == 1


@pytest.mark.parametrize("args,match", [
    (["missing.tsv"], "no such"),
    (["{dir}"], "is a directory"),
    (["{run}", "--radii", "0,a"], "--radii"),
    (["{run}", "--radii", "-1"], "non-negative"),
    (["{run}", "--json", "--latex"], "not allowed with"),
])
def test_errors(tmp_path, capsys, args, match):
    run = tmp_path / "run.tsv"
    run.write_text(HEADER)
    assert main(["analyze", *[a.format(dir=tmp_path, run=run) for a in args]]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1
