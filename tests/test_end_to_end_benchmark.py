"""The end-to-end benchmark (diffsmooth_fast.bench.end_to_end, ``diffsmooth-fast bench e2e``) on a CPU with tiny
models: the JSON record it writes (fields, not timings), that every run is warmed on every batch shape before its
clock, that selection and estimation are timed and extrapolated apart, the controls, the demo preset, the cost
table it computes MFU from, that its paper-style baseline computes the same base classifier as the engine; and
benchmarks/gpu_run.sh (dry runs and a short CPU rehearsal)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import tarfile

import pytest
import torch

from diffsmooth_fast import MethodConfig, PurifiedClassifier
from diffsmooth_fast.ops import resolve_backend
from diffsmooth_fast.smoothing.certify import PHASE_ESTIMATION, PHASE_SELECTION

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

    assert s["backend"] == resolve_backend("auto", "cpu") and s["backend_requested"] == "auto"
    assert s["controls"] is False and record["complete"] is True  # controls: off by default on a CPU

    runs = record["runs"]
    assert [(r["name"], r["dtype"]) for r in runs] == [("baseline", "float32"), ("engine", "float32"),
                                                       ("engine", "bfloat16")]
    for run in runs:
        assert run["extrapolated"] is True and run["peak_gpu_memory_bytes"] is None
        assert (run["measured_samples_per_image"], run["target_samples_per_image"]) == (30, 1010)
        assert min(run[f"{part}_seconds"] for part in ("selection", "estimation", "decision")) > 0
        assert run["measured_seconds"] >= run["selection_seconds"] + run["estimation_seconds"]
        # Derived fields agree with each other (the values themselves are timings, not checked): selection is
        # n0 = 10 samples as measured, estimation scaled from n = 20 to N = 1000.
        assert run["selection_seconds_per_image"] == pytest.approx(run["selection_seconds"] / 2)
        assert run["estimation_seconds_per_image"] == pytest.approx(run["estimation_seconds"] / 2 * 1000 / 20)
        assert run["seconds_per_image"] == pytest.approx(
            run["selection_seconds_per_image"] + run["estimation_seconds_per_image"]
            + run["decision_seconds_per_image"])
        assert run["samples_per_second"] == pytest.approx(1010 / run["seconds_per_image"])
        assert run["estimation_samples_per_second"] == pytest.approx(2 * 20 / run["estimation_seconds"])
        assert run["selection_samples_per_second"] == pytest.approx(2 * 10 / run["selection_seconds"])
        assert run["mfu"] == pytest.approx(flops["per_sample"] * run["samples_per_second"] / 989e12)
        assert len(run["predictions"]) == len(run["radii"]) == 2
        assert all(p == -1 or 0 <= p < 10 for p in run["predictions"]) and all(r >= 0 for r in run["radii"])
    assert runs[0]["batch"] == 50 and runs[1]["batch"] == 16
    # every batch shape of both phases, the n0 batch included, warmed before the clock
    assert runs[0]["warmup"] == {"rounds": 2, "selection_batches": [10], "estimation_batches": [20]}
    assert runs[1]["warmup"] == {"rounds": 2, "selection_batches": [10], "estimation_batches": [16, 4]}
    assert set(record["speedup"]) == {"float32", "bfloat16"}
    assert record["speedup"]["float32"] == pytest.approx(runs[0]["seconds_per_image"] / runs[1]["seconds_per_image"])
    phases = record["phase_speedups"]["engine"]["float32"]
    assert phases["selection"] == pytest.approx(runs[0]["selection_seconds"] / runs[1]["selection_seconds"])
    assert phases["estimation"] == pytest.approx(runs[0]["estimation_seconds"] / runs[1]["estimation_seconds"])
    assert "(extrapolated)" in out and "speedup of engine in bfloat16" in out and str(path) in out
    assert "selection" in out and "estimation" in out and f"backend {s['backend']}" in out


@pytest.fixture(scope="module")
def controls_run(e2e, tmp_path_factory):
    """A tiny run with --controls at baseline batch 8, every sampling batch logged: (record, printed, events).
    Events: "warm" when a run's warm-up starts, "clock" when its clock starts, (who, phase, batch size) per batch
    its networks see (the engine's phase from its sample_counts call; the baseline's phases are not told apart)."""
    events: list = []
    from diffsmooth_fast.bench import timing  # warm_up lives there: time_run calls it

    real_counts, real_sum, real_warm = e2e.Smooth.sample_counts, e2e.PaperBaseline.softmax_sum, timing.warm_up

    def sample_counts(self, x, num, batch_size, **kw):
        start = kw.get("start", 0)
        events.extend(("engine", kw["phase"], min(batch_size, start + num - first))
                      for first in range(start, start + num, batch_size))
        return real_counts(self, x, num, batch_size, **kw)

    def softmax_sum(self, noisy):
        events.append(("baseline", None, noisy.shape[0]))
        return real_sum(self, noisy)

    def warm_up(*args, **kwargs):
        events.append("warm")
        out = real_warm(*args, **kwargs)
        events.append("clock")
        return out

    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr(e2e.Smooth, "sample_counts", sample_counts)
        mp.setattr(e2e.PaperBaseline, "softmax_sum", softmax_sum)
        mp.setattr(timing, "warm_up", warm_up)
        record = e2e.main(["--device", "cpu", "--quick", "--tiny", "--images", "1", "--dtype", "float32",
                           "--baseline-batch", "8", "--controls", "--json",
                           str(tmp_path_factory.mktemp("controls") / "c.json")])
    return record, printed.getvalue(), events


def test_warm_up_covers_every_batch_shape_before_the_clock(controls_run):
    """Each run, the baseline's included, sees every batch shape it is timed on (the n0 selection batch too)
    before its clock starts, WARMUP_ROUNDS times."""
    record, _, events = controls_run
    assert events[0] == "warm"
    segments: list[tuple[list, list]] = []  # (warm-up batches, timed batches) per run
    for event in events:
        if event == "warm":
            segments.append(([], []))
            timing = 0
        elif event == "clock":
            timing = 1
        else:
            segments[-1][timing].append(event)
    assert len(segments) == len(record["runs"]) == 4
    expected = {  # (who, phase, batch) per run: n0 = 10, n = 20, engine batch 16, baseline batch 8
        "baseline": {("baseline", None, 8), ("baseline", None, 2), ("baseline", None, 4)},
        "baseline+autocast": {("baseline", None, 8), ("baseline", None, 2), ("baseline", None, 4)},
        "engine": {("engine", PHASE_SELECTION, 10), ("engine", PHASE_ESTIMATION, 16), ("engine", PHASE_ESTIMATION, 4)},
        "engine@baseline-batch": {("engine", PHASE_SELECTION, 8), ("engine", PHASE_SELECTION, 2),
                                  ("engine", PHASE_ESTIMATION, 8), ("engine", PHASE_ESTIMATION, 4)},
    }
    for run, (warm, timed) in zip(record["runs"], segments):
        assert set(timed) == expected[run["name"]], run["name"]
        assert set(warm) == set(timed), run["name"]
        plan = run["warmup"]  # WARMUP_ROUNDS = 2 rounds of one batch per shape and phase
        assert len(warm) == 2 * (len(plan["selection_batches"]) + len(plan["estimation_batches"])), run["name"]
    engine_warm = segments[2][0]
    assert engine_warm[0] == ("engine", PHASE_SELECTION, 10)  # the n0 batch, before the clock


def test_controls_time_what_the_speedup_is_made_of(controls_run):
    """--controls: the engine in float32 at the baseline's batch (same certificates as the float32 engine: the
    noise is drawn by position) and the baseline under bf16 autocast, labelled, with their speedups."""
    record, out, _ = controls_run
    runs = {r["name"]: r for r in record["runs"]}
    assert [(r["name"], r["dtype"], r["batch"]) for r in record["runs"]] == [
        ("baseline", "float32", 8), ("baseline+autocast", "bfloat16", 8), ("engine", "float32", 16),
        ("engine@baseline-batch", "float32", 8)]
    assert record["settings"]["baseline_batch"] == 8 and record["settings"]["controls"] is True
    assert "control" in runs["baseline+autocast"] and "control" in runs["engine@baseline-batch"]
    assert "cpu" in runs["baseline+autocast"]["note"]
    control = runs["engine@baseline-batch"]
    assert control["prediction_agreement"] == 1.0 and control["max_radius_diff"] < 1e-3
    assert runs["baseline+autocast"]["matches_baseline"] in (True, False)
    for name in ("baseline+autocast", "engine@baseline-batch", "engine"):
        assert record["speedups"][name][runs[name]["dtype"]] == pytest.approx(
            runs["baseline"]["seconds_per_image"] / runs[name]["seconds_per_image"])
        assert set(record["phase_speedups"][name][runs[name]["dtype"]]) == {"selection", "estimation"}
    table = out[out.index("tiny on "):]
    assert "baseline+autocast" in table and "engine@baseline-batch" in table and "x  " in table


def test_engine_phases_give_the_certificates_of_certify(e2e):
    """Timing selection and estimation apart changes nothing: the certificates are Smooth.certify's (trained
    demo models, so that they are real radii, not abstentions)."""
    setup, cpu = e2e.SETUPS["demo"], torch.device("cpu")
    denoiser, classifier = e2e.build_models(setup, cpu, seed=0)
    method = MethodConfig("diffsmooth", sigma=0.25, m=5)
    smooth = e2e.Smooth(e2e._engine_base(method, classifier, denoiser, (), torch.float32, seed=0), 10, 0.25)
    images, _ = e2e.load_images(setup, 2, 0, cpu)
    run = e2e.time_run(e2e.EngineCertifier(smooth, 30, 0.001), images, 20, 100, cpu)
    expected = [smooth.certify(x, 20, 100, 0.001, 30, idx=i) for i, x in enumerate(images)]
    assert list(zip(run["predictions"], run["radii"])) == expected and any(r > 0 for _, r in expected)


def test_demo_preset_runs_the_shipped_models_on_cpu(e2e, tmp_path, capsys):
    record = e2e.main(["--device", "cpu", "--preset", "demo", "--images", "2", "--n0", "20", "--N", "100",
                       "--dtype", "float32", "--backend", "torch", "--json", str(tmp_path / "demo.json")])
    s = record["settings"]
    assert s["setup"] == "demo" and s["weights"].startswith("trained") and s["image_size"] == 8
    assert s["labels"] == [5, 9] and (s["n0"], s["N"], s["n"]) == (20, 100, 100) and s["backend"] == "torch"
    assert record["flops"]["source"] == "FlopCounterMode" and record["flops"]["per_sample"] > 0
    assert [(r["name"], r["dtype"]) for r in record["runs"]] == [("baseline", "float32"), ("engine", "float32")]
    for run in record["runs"]:
        assert run["extrapolated"] is False and run["seconds_per_image"] > 0 and 0 <= run["correct"] <= 2
    assert record["runs"][1]["correct"] >= 1  # a trained model on real digits certifies some of them right
    assert "right" in capsys.readouterr().out


def test_backend_and_preset_mistakes_are_refused(e2e):
    assert e2e.parse_args(["--device", "cpu", "--backend", "torch"]).backend_used == "torch"
    assert e2e.parse_args(["--device", "cpu"]).dtype == ["float32", "bfloat16"]
    for argv in (["--device", "cpu", "--backend", "cuda"], ["--device", "cpu", "--tiny", "--preset", "demo"]):
        with pytest.raises(SystemExit):
            e2e.parse_args(argv)


def test_cost_table_matches_counted_flops(e2e):
    """MFU uses REFERENCE.md's GFLOPs for the presets: they must be what the models compute."""
    for name, setup in e2e.SETUPS.items():
        counted = e2e.counted_gflops(setup)
        if setup.unet_gflops is None:  # the demo's small models: counted at run time, nothing to compare
            assert setup.trained and counted["unet"] > 0 and counted["classifier"] > 0
            continue
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
    assert subprocess.run(["bash", "-n", script], check=False).returncode == 0
    done = subprocess.run(["bash", script, str(path.parent)], env={**os.environ, "DRY_RUN": "1"},
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    for name in ("build", "ext-check", "pytest-gpu", "e2e-cifar10", "e2e-imagenet", "e2e-demo", "bench-ops",
                 "pytest-rest"):
        assert f"start {name} " in done.stdout
    assert "DIFFSMOOTH_CUDA=1 python setup.py build_ext --inplace" in done.stdout
    assert "python -m diffsmooth_fast bench e2e --device cuda --quick --preset imagenet --images 2 --dtype " \
           "bfloat16 float16 float32 --variants amp graphs fused fast --controls" in done.stdout
    assert "tiny on " in done.stdout and "speedup bfloat16: " in done.stdout and "dry run" in done.stdout
    assert "speedup bfloat16: " in (path.parent / "summary.txt").read_text()
    assert not (path.parent / "results.tgz").exists()  # a dry run runs nothing, the packer included
    usage = subprocess.run(["bash", script], capture_output=True, text=True, timeout=600, check=False)
    assert usage.returncode == 2 and "OUT_DIR" in usage.stderr


def test_gpu_run_short_profile_fits_one_device_call(tmp_path):
    """PROFILE=short: GPU steps only, ImageNet on the Triton kernels while the extension builds, every limit
    within the 450 s deadline past which the rest is skipped."""
    done = subprocess.run(["bash", os.path.join(BENCHMARKS, "gpu_run.sh"), str(tmp_path / "short")],
                          env={**os.environ, "DRY_RUN": "1", "PROFILE": "short"}, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    assert "deadline 450s" in done.stdout
    starts = re.findall(r"start (\S+) \((?:background, )?limit (\d+)s\)", done.stdout)
    names = [name for name, _ in starts]
    assert names == ["build", "e2e-imagenet", "ext-check", "e2e-cifar10", "e2e-cifar10-b1000", "pytest-kernels",
                     "pytest-engine", "bench-ops", "e2e-demo", "seq-demo-0.25"]
    assert all(int(limit) <= 450 for _, limit in starts)
    lines = {name: line for line in done.stdout.splitlines() for name in names if f"start {name} " in line}
    assert "DIFFSMOOTH_BACKEND=triton" in lines["e2e-imagenet"] and "--backend triton" in lines["e2e-imagenet"]
    assert "--backend" not in lines["e2e-cifar10"] and "--controls" in lines["e2e-cifar10"]
    assert "--variants graphs fast" in lines["e2e-cifar10"] and "--baseline-batch 1000" in lines["e2e-cifar10-b1000"]
    assert "--method diffsmooth" in lines["seq-demo-0.25"] and "--n 100000" in lines["seq-demo-0.25"]


def test_gpu_run_rehearses_on_a_cpu_and_packs_what_finished(tmp_path):
    """DEV=cpu, a build that fails (BUILD_CMD=false) and a 20 s deadline (the first step starts after 2 s on an idle
    machine; 20 s leaves a busy one time to start it too): the first end-to-end step starts on the
    fallback kernels with tiny models (and may be stopped at its clipped limit), the GPU-only and late steps are
    skipped, and results.tgz holds everything written."""
    out = tmp_path / "rehearsal"
    done = subprocess.run(["bash", os.path.join(BENCHMARKS, "gpu_run.sh"), str(out)],
                          env={**os.environ, "PROFILE": "short", "DEV": "cpu", "SKIP_BUILD": "0",
                               "BUILD_CMD": "false", "DEADLINE": "20", "MIN_STEP": "3"},
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 1, done.stdout + done.stderr  # the build failed: reported as a failed step
    summary = (out / "summary.txt").read_text()
    assert re.search(r"FAILED steps: .*\bbuild\b", summary) and "run on the torch kernels" in summary
    assert "--backend torch --tiny --preset imagenet" in summary and "SKIP  e2e-demo: past the deadline" in summary
    assert "SKIP  ext-check" in summary and "(limit 20s)" not in summary  # limits clipped to the time left
    with tarfile.open(out / "results.tgz") as tar:
        names = set(tar.getnames())
    assert {"./summary.txt", "./env.txt", "./build.log", "./e2e-imagenet.log"} <= names


def test_a_failing_run_is_recorded(e2e, tmp_path, monkeypatch, capsys):
    """One run failing (out of memory, NaN in float16) leaves an error entry and the other runs' results."""

    class Broken(e2e.Smooth):
        def sample_counts(self, *args, **kwargs):
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
                       "float32", "--cuda-graphs", "--no-controls", "--json", str(tmp_path / "graphs.json")])
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
    """amp: float32 weights computing in bfloat16 (its scores are not float32's); without it the weights are
    bfloat16; the benchmark's own float32 models are left as they were."""
    setup = e2e.TINY
    denoiser, classifier = e2e.build_models(setup, torch.device("cpu"), seed=3)
    method = MethodConfig("diffsmooth", sigma=0.25, m=2)
    amp = e2e._engine_base(method, classifier, denoiser, ("amp",), torch.bfloat16, seed=0)
    held = e2e._engine_base(method, classifier, denoiser, (), torch.bfloat16, seed=0)
    plain = e2e._engine_base(method, classifier, denoiser, (), torch.float32, seed=0)
    dtypes = {name: {p.dtype for net in (b.denoiser, b.classifier) for p in net.parameters()}
              for name, b in (("amp", amp), ("held", held), ("plain", plain))}
    assert dtypes == {"amp": {torch.float32}, "held": {torch.bfloat16}, "plain": {torch.float32}}
    assert {p.dtype for p in denoiser.parameters()} == {torch.float32}
    x = torch.rand((2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(amp(x), plain(x), atol=1e-6, rtol=0)


def test_unknown_variant_is_refused(e2e):
    assert e2e.parse_variant("graphs+fused") == ("fused", "graphs")
    assert e2e.parse_variant("fast+compile") == ("fused", "norms", "cl", "graphs", "compile")
    assert e2e.parse_variant("cl+amp") == ("amp", "cl")
    with pytest.raises(SystemExit):
        e2e.main(["--device", "cpu", "--tiny", "--variants", "turbo"])
