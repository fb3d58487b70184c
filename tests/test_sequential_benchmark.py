"""benchmarks/sequential_efficiency.py: the fixed and sequential runs it alternates hold the same images, and its
comparison agrees with the files (accuracy per grid radius, samples per image). Its timings are not asserted."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from diffsmooth_fast.run import analyze
from diffsmooth_fast.smoothing import stats

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
    # Wald's floor bounds a mean over runs at the estimated p_A: one run of 5 images may beat it, so no ordering
    assert 0 < r["floor"]["mean"] <= 3000
    assert "--sequential --radii cifar10" in r["commands"]["sequential"]
    assert "--sequential" not in r["commands"]["fixed"]


@pytest.mark.parametrize("sigma", [0.25, 0.5])
def test_votes_are_recovered_from_the_written_radius(sigma):
    spec = importlib.util.spec_from_file_location("sequential_efficiency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    n, alpha = 100_000, 0.001
    for votes in (50_800, 84_000, 99_000, 99_950, 100_000):
        radius = float(f"{stats.radius(sigma, stats.clopper_pearson_lower(votes, n, alpha)):.3}")
        found = module.votes_of(radius, n, alpha, sigma)
        assert found >= votes  # the most votes written as this radius: the floor is not overstated
        assert float(f"{stats.radius(sigma, stats.clopper_pearson_lower(found, n, alpha)):.3}") == radius
