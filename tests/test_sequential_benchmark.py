"""benchmarks/sequential_efficiency.py: the fixed and sequential runs it alternates hold the same images, and its
comparison agrees with the files (accuracy per grid radius, samples per image). Its timings are not asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from diffsmooth_fast.run import analyze

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                      "sequential_efficiency.py")


def test_the_comparison_matches_the_two_files(tmp_path):
    out, result = tmp_path / "cmp", tmp_path / "cmp.json"
    options = ["--dataset", "toy", "--method", "cohen", "--sigma", "0.25", "--n", "3000", "--batch", "3000"]
    subprocess.run([sys.executable, SCRIPT, "--out", str(out), "--images", "5", "--chunk", "3", "--json",
                    str(result), "--", *options], check=True, capture_output=True, timeout=600)
    r = json.loads(result.read_text())
    fixed, seq = analyze.summarize(str(out / "fixed.tsv")), analyze.summarize(str(out / "sequential.tsv"))
    assert r["images"] == fixed.n == seq.n == 5 and r["idx"] == [0, 1, 2, 3, 4]
    assert r["certified_accuracy"]["fixed"] == [round(fixed.certified_accuracy[x], 4) for x in analyze.DEFAULT_RADII]
    assert r["certified_accuracy"]["sequential"] == [round(seq.certified_accuracy[x], 4)
                                                     for x in analyze.DEFAULT_RADII]
    assert r["samples_per_image"]["sequential_mean"] == seq.samples_per_image
    assert r["samples_per_image"]["fixed"] == 3000 and all(0 < k <= 3000 for k in r["samples_per_image"][
        "sequential_each"])
    assert "--sequential --radii cifar10" in r["commands"]["sequential"]
    assert "--sequential" not in r["commands"]["fixed"]
