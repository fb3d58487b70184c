"""The end-to-end benchmark (diffsmooth_fast.bench.end_to_end, ``diffsmooth-fast bench e2e``) on a CPU with tiny
models: the JSON record it writes (fields, not timings), the cost
table it computes MFU from, and that its paper-style baseline computes the same base classifier as the engine."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess

import pytest
import torch

from diffsmooth_fast import MethodConfig, PurifiedClassifier

pytestmark = pytest.mark.usefixtures("one_thread")

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture(scope="module")
def e2e():
    from diffsmooth_fast.bench import end_to_end

    return end_to_end


@pytest.fixture(scope="module")
def tiny_run(e2e, tmp_path_factory):
    """One quick tiny run on the CPU: (its JSON path, the record, what it printed)."""
    path = tmp_path_factory.mktemp("results") / "end_to_end-tiny.json"
    printed = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models gain nothing from threads on a loaded 2-core machine
    try:
        with contextlib.redirect_stdout(printed):
            e2e.main(["--device", "cpu", "--quick", "--tiny", "--images", "2", "--dtype", "float32", "bfloat16",
                      "--json", str(path)])
    finally:
        torch.set_num_threads(threads)
    return path, json.loads(path.read_text()), printed.getvalue()


def test_tiny_quick_run_writes_the_record(tiny_run):
    path, record, out = tiny_run
    assert record["benchmark"] == "end_to_end"
    assert record["device"]["type"] == "cpu" and record["device"]["name"]
    assert record["versions"]["torch"] == torch.__version__ and "triton" in record["versions"]
    if os.path.exists(os.path.join(os.path.dirname(BENCHMARKS), ".git")):  # a checkout (not an unpacked sdist)
        assert re.fullmatch(r"[0-9a-f]{40}", record["git"]["commit"]) and isinstance(record["git"]["dirty"], bool)
    s = record["settings"]
    assert s["tiny"] and s["quick"] and s["dtypes"] == ["float32", "bfloat16"] and s["images"] == 2
    assert (s["n0"], s["N"], s["n"], s["m"], s["baseline_batch"]) == (10, 1000, 20, 5, 50)
    assert s["unet_flags"]["num_channels"] == 32 and s["classifier_arch"] == "cifar_resnet20"
    assert abs(s["local_sigma"] - 0.28) < 1e-12 and set(s["tf32"]) == {"cudnn", "matmul"}
    flops = record["flops"]
    assert flops["source"] == "FlopCounterMode" and flops["peak_flops"] == 989e12
    assert flops["per_sample"] == pytest.approx(
        1e9 * (flops["unet_gflops_per_image"] + 5 * flops["classifier_gflops_per_image"]))

    runs = record["runs"]
    assert [(r["name"], r["dtype"]) for r in runs] == [("baseline", "float32"), ("engine", "float32"),
                                                       ("engine", "bfloat16")]
    for run in runs:
        assert run["extrapolated"] is True and run["peak_gpu_memory_bytes"] is None
        assert (run["measured_samples_per_image"], run["target_samples_per_image"]) == (30, 1010)
        assert run["measured_seconds"] > 0 and run["samples_per_second"] > 0
        # Derived fields agree with each other (the values themselves are timings, not checked).
        assert run["samples_per_second"] == pytest.approx(2 * 30 / run["measured_seconds"])
        assert run["seconds_per_image"] == pytest.approx(1010 / run["samples_per_second"])
        assert run["mfu"] == pytest.approx(flops["per_sample"] * run["samples_per_second"] / 989e12)
        assert len(run["predictions"]) == len(run["radii"]) == 2
        assert all(p == -1 or 0 <= p < 10 for p in run["predictions"]) and all(r >= 0 for r in run["radii"])
    assert runs[0]["batch"] == 50 and runs[1]["batch"] == 16
    assert set(record["speedup"]) == {"float32", "bfloat16"}
    assert record["speedup"]["float32"] == pytest.approx(runs[0]["seconds_per_image"] / runs[1]["seconds_per_image"])
    assert "(extrapolated)" in out and "speedup of engine in bfloat16" in out and str(path) in out


def test_cost_table_matches_counted_flops(e2e):
    """MFU uses REFERENCE.md's GFLOPs for the presets: they must be what the models compute."""
    for name, setup in e2e.SETUPS.items():
        counted = e2e.counted_gflops(setup)
        assert counted["unet"] == pytest.approx(setup.unet_gflops, rel=1e-3), name
        assert counted["classifier"] == pytest.approx(setup.classifier_gflops, rel=1e-3), name


def test_baseline_is_the_same_base_classifier(e2e):
    """The paper-style baseline purifies and votes exactly as the engine's pipeline with the reference's local
    noise (torch.manual_seed(42)), so the two runs time the same computation."""
    setup, device = e2e.TINY, torch.device("cpu")
    denoiser, classifier = e2e.build_models(setup, device, seed=3)
    baseline = e2e.PaperBaseline(denoiser, classifier, num_classes=10, sigma=0.25, local_sigma=0.28, m=5,
                                 image_shape=(3, 32, 32), batch=4)
    noisy = torch.rand((4, 3, 32, 32), generator=torch.Generator().manual_seed(0)) + 0.25 * torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(baseline.purify(noisy), denoiser(noisy, 0.25), atol=1e-5, rtol=0)
        method = MethodConfig("diffsmooth", sigma=0.25, local_sigma_shift=0.03, m=5, local_noise="reference")
        engine = PurifiedClassifier(method, classifier, denoiser)(noisy)
    torch.testing.assert_close(baseline.softmax_sum(noisy) / 5, engine, atol=1e-5, rtol=0)


def test_gpu_run_script_dry_run(tiny_run):
    """benchmarks/gpu_run.sh with DRY_RUN=1: valid bash, every step listed, the summary of a results folder."""
    path, _, _ = tiny_run
    script = os.path.join(BENCHMARKS, "gpu_run.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    done = subprocess.run(["bash", script, str(path.parent)], env={**os.environ, "DRY_RUN": "1"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for name in ("build", "pytest-gpu", "bench-ops", "end_to_end-cifar10", "end_to_end-imagenet", "pytest-rest"):
        assert f"start {name} " in done.stdout
    assert "DIFFSMOOTH_CUDA=1 pip install --no-build-isolation" in done.stdout
    assert "--preset imagenet --quick --dtype bfloat16 float16 float32" in done.stdout
    assert "tiny on " in done.stdout and "speedup bfloat16: " in done.stdout and "dry run" in done.stdout
    assert "speedup bfloat16: " in (path.parent / "summary.txt").read_text()


def test_gpu_run_short_profile_fits_one_device_call(tiny_run):
    """PROFILE=short: no CPU-only steps, and its time limits add up to under 10 minutes."""
    path, _, _ = tiny_run
    done = subprocess.run(["bash", os.path.join(BENCHMARKS, "gpu_run.sh"), str(path.parent / "short")],
                          env={**os.environ, "DRY_RUN": "1", "PROFILE": "short"}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    starts = re.findall(r"start (\S+) \(limit (\d+)s\)", done.stdout)
    names = [name for name, _ in starts]
    assert names == ["build", "extension-check", "pytest-gpu", "end_to_end-cifar10", "end_to_end-imagenet",
                     "bench-ops-cuda"]
    assert sum(int(limit) for _, limit in starts) <= 900  # limits are ceilings; the expected total is ~7 minutes
    assert "--variants graphs fast" in done.stdout


def test_a_failing_run_is_recorded(e2e, tmp_path, monkeypatch, capsys):
    """One run failing (out of memory, NaN in float16) leaves an error entry and the other runs' results."""

    class Broken(e2e.Smooth):
        def certify(self, *args, **kwargs):
            raise ValueError("base classifier returned NaN or infinite logits\nsecond line")

    monkeypatch.setattr(e2e, "Smooth", Broken)
    path = tmp_path / "broken.json"
    record = e2e.main(["--device", "cpu", "--quick", "--tiny", "--images", "1", "--skip-baseline", "--dtype",
                       "float16", "--json", str(path)])
    assert json.loads(path.read_text()) == record
    assert record["runs"] == [{"name": "engine", "dtype": "float16", "batch": 16,
                               "error": "ValueError: base classifier returned NaN or infinite logits"}]
    assert record["speedup"] == {} and "FAILED" in capsys.readouterr().out


def test_cuda_graphs_run_only_on_cuda(e2e, tmp_path, capsys):
    """--cuda-graphs adds an engine+graphs run per dtype on CUDA; on a CPU it says so and runs the rest."""
    path = tmp_path / "graphs.json"
    record = e2e.main(["--device", "cpu", "--quick", "--tiny", "--images", "1", "--skip-baseline", "--dtype",
                       "float32", "--n0", "4", "--n", "8", "--cuda-graphs", "--json", str(path)])
    assert [(r["name"], r["dtype"]) for r in record["runs"]] == [("engine", "float32")]
    assert record["settings"]["cuda_graphs"] is False and record["speedup_graphs"] == {}
    assert "no engine+graphs run on cpu" in capsys.readouterr().out


@pytest.mark.gpu
def test_cuda_graphs_run_matches_the_engine_on_gpu(e2e, tmp_path):
    record = e2e.main(["--device", "cuda", "--quick", "--tiny", "--images", "2", "--skip-baseline", "--dtype",
                       "float32", "--cuda-graphs", "--json", str(tmp_path / "graphs.json")])
    assert [(r["name"], r["dtype"]) for r in record["runs"]] == [("engine", "float32"), ("engine+graphs", "float32")]
    assert record["runs"][1]["matches_engine"] is True


def test_rejects_bad_counts(e2e):
    with pytest.raises(SystemExit):
        e2e.parse_args(["--images", "0"])


def test_variants_time_the_engine_with_its_speed_options(e2e, tmp_path, capsys):
    """--variants adds one engine run per option set; on a CPU the graphed ones are skipped with a note, the others
    run and are compared with the plain engine's certificates."""
    record = e2e.main(["--device", "cpu", "--quick", "--tiny", "--images", "1", "--dtype", "float32", "--n0", "4",
                       "--n", "8", "--variants", "cl+fused+norms", "fast", "--json", str(tmp_path / "v.json")])
    out = capsys.readouterr().out
    assert "no engine+fused+norms+cl+graphs run on cpu" in out
    runs = {r["name"]: r for r in record["runs"]}
    assert set(runs) == {"baseline", "engine", "engine+fused+norms+cl"}
    fast = runs["engine+fused+norms+cl"]
    assert fast["prediction_agreement"] == 1.0 and fast["max_radius_diff"] < 1e-3
    assert set(record["speedups"]) == {"engine", "engine+fused+norms+cl"}
    assert record["settings"]["variants"] == ["fused+norms+cl", "fused+norms+cl+graphs"]


def test_autocast_variant_keeps_float32_weights(e2e):
    setup = e2e.TINY
    denoiser, classifier = e2e.build_models(setup, torch.device("cpu"), seed=3)
    method = MethodConfig("diffsmooth", sigma=0.25, m=2)
    base = e2e.engine_base(method, classifier, denoiser.unet, setup.unet_flags, torch.bfloat16, ("amp",), seed=0)
    assert base.autocast == torch.bfloat16 and next(base.denoiser.parameters()).dtype == torch.float32
    held = e2e.engine_base(method, classifier, denoiser.unet, setup.unet_flags, torch.bfloat16, (), seed=0)
    assert held.autocast is None and next(held.denoiser.parameters()).dtype == torch.bfloat16


def test_unknown_variant_is_refused(e2e):
    assert e2e.parse_variant("graphs+fused") == ("fused", "graphs")
    assert e2e.parse_variant("fast+compile") == ("fused", "norms", "cl", "graphs", "compile")
    assert e2e.parse_variant("cl+amp") == ("amp", "cl")
    with pytest.raises(SystemExit):
        e2e.main(["--device", "cpu", "--tiny", "--variants", "turbo"])
