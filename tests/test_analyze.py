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
    return run_json_err(capsys, *args)[0]


def run_json_err(capsys, *args) -> tuple[dict, str]:
    """analyze --json: the JSON and stderr."""
    capsys.readouterr()
    assert main(["analyze", *map(str, args), "--json"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


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


def test_rows_no_run_writes_are_reported_and_counted_once(tmp_path, capsys):
    """Two writers and cat: a repeated idx, a second header, a short row; each named on stderr by its line, and
    every image counted once."""
    run = tmp_path / "run.tsv"
    rows = "0\t1\t1\t0.5\t1\t0:00:02\n1\t3\t3\t0.9\t1\t0:00:02\n"
    run.write_text(HEADER + rows + HEADER + rows + "2\t1\t1\t0.5\n")
    files, err = run_json_err(capsys, run, "--radii", "0,0.5")
    (summary,) = files["files"]
    assert summary["n"] == 2 and summary["acr"] == 0.7  # not 4 rows, not 1.4 / 4
    assert err.splitlines() == [f"warning: {run}:4: a second header line (files joined with cat?); not counted",
                   f"warning: {run}:7: expected 6 tab-separated fields, got 4; not counted",
                   f"warning: {run}:5: idx 0 again (first on line 2); not counted",
                   f"warning: {run}:6: idx 1 again (first on line 3); not counted"]


def test_rows_outside_the_run_of_the_sidecar_are_left_out(tmp_path, capsys):
    """With the run's sidecar analyze knows its images (every skip-th, as many as a session asked for)."""
    out = tmp_path / "run.tsv"
    assert main(["certify", "--dataset", "toy", "--n0", "20", "--n", "200", "--skip", "2", "--max", "3", "--quiet",
                 "--out", str(out)]) == 0
    with open(out, "a") as f:
        f.write("3\t1\t1\t0.5\t1\t0:00:01\n8\t1\t1\t0.5\t1\t0:00:01\n")
    files, err = run_json_err(capsys, out)
    (summary,) = files["files"]
    assert summary["n"] == 3
    assert f"{out}:5: idx 3 is not one of the run's images (0, 2, 4); not counted" in err
    assert f"{out}:6: idx 8 is not one of the run's images" in err and err.count("\n") == 2


def test_contradicting_rows_are_reported(tmp_path, capsys):
    run = tmp_path / "run.tsv"
    run.write_text(HEADER + "0\t1\t1\t0.5\t0\t0:00:02\n1\t3\t-1\t0.0\t1\t0:00:02\n2\t3\t3\t-0.5\t1\t0:00:02\n"
                   "3\t3\t3\tnan\t1\t0:00:02\n4\t2\t2\t0.5\t1\t0:00:02\n")
    files, err = run_json_err(capsys, run)
    (summary,) = files["files"]
    assert summary["n"] == 5
    assert f"{run}:2: correct is 0 but label 1 and predict 1 make it 1" in err
    assert f"{run}:3: correct is 1 but label 3 and predict -1 make it 0" in err
    assert f"{run}:4: radius -0.5 is negative or not a number" in err
    assert f"{run}:5: radius nan is negative or not a number" in err and err.count("\n") == 4


@pytest.mark.parametrize("header,row", [(HEADER, "\t-1\t0.0\t1\t0:00:02\n"),
                                        ("idx\tlabel\tpredict\tcorrect\ttime\n", "\t-1\t1\t0:00:02\n")])
def test_unlabelled_files_have_no_accuracy(tmp_path, capsys, header, row):
    """Files written before abstentions on unlabelled images were no longer counted correct: label -1, predict -1,
    correct 1. Accuracy is not defined without labels, and the rows are flagged."""
    run = tmp_path / "run.tsv"
    run.write_text(header + "".join(f"{i}\t-1{row}" for i in range(3)))
    files, err = run_json_err(capsys, run)
    (summary,) = files["files"]
    assert summary["n"] == 3 and summary["labelled"] is False and summary["abstain_rate"] == 1.0
    assert summary["clean_accuracy"] is None and summary["acr"] is None and summary["certified_accuracy"] is None
    assert f"{run}: no row has a label (label -1): accuracy is not defined" in err
    assert f"{run}:2: correct is 1 but label -1 and predict -1 make it 0" in err
    assert main(["analyze", str(run)]) == 0  # the table shows no accuracy
    cells = capsys.readouterr().out.splitlines()[1].split()
    assert cells[1:4] == ["3", "-", "1.000"] and set(cells[5:]) == {"-"}  # n, clean acc, abstain; ACR and radii
