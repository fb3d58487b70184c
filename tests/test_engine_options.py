"""The engine's speed options on the shipped demo models: channels_last, autocast, fused norms and torch.compile
give the function of the plain pipeline (exactly up to float rounding, or within half precision's own error),
and the command line wires them. Their speed is measured by ``diffsmooth-fast bench e2e`` on a GPU, not here."""

from __future__ import annotations

import json

import pytest
import torch

from diffsmooth_fast import Denoiser, Smooth, load_classifier
from diffsmooth_fast.data import digits
from diffsmooth_fast.engine.counting import CountingPath
from diffsmooth_fast.engine.method import MethodConfig, PurifiedClassifier
from diffsmooth_fast.engine.options import EngineOptions, FastNetworks, assemble
from diffsmooth_fast.models import shipped
from diffsmooth_fast.run.cli import main
from diffsmooth_fast.run.configs import (DataConfig, ModelConfig, OutputConfig, SamplingConfig, resolve)
from diffsmooth_fast.smoothing.noise_address import SamplePositions

pytestmark = pytest.mark.usefixtures("one_thread")
POSITIONS = SamplePositions(7, 40, 1, 21, 9)  # seed, idx, phase, first, count: somewhere inside a run
CONFIG = MethodConfig("diffsmooth", 0.5, local_sigma=0.25, m=3, local_noise="fresh")


def models(dtype: torch.dtype = torch.float32, device: str = "cpu"):
    den = Denoiser.from_preset("demo", str(shipped.DIFFUSION_CHECKPOINT), dtype=dtype, device=device)
    clf = load_classifier(shipped.classifier_checkpoint(0.25)).to(device=device, dtype=dtype).eval()
    return den, clf


def noisy(count: int = 9, sigma: float = 0.5, device: str = "cpu") -> torch.Tensor:
    data = digits.test_set()
    x = torch.stack([data[i][0] for i in range(count)])
    return (x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).to(device)


def engine(device: str = "cpu", **options) -> PurifiedClassifier | CountingPath:
    """The demo's DiffSmooth base classifier with ``options``, started as a run starts it."""
    opts = EngineOptions(device=device, **options)
    den, clf = models(opts.weights_dtype, device)
    base = assemble(CONFIG, clf, den, opts, seed=7)
    base.networks.start()
    return base


def scores(device: str = "cpu", **options) -> torch.Tensor:
    return engine(device, **options)(noisy(device=device), positions=POSITIONS)


def counts(device: str = "cpu", **options) -> torch.Tensor:
    """Class counts of 40 samples of test image 3 (selection phase), in batches of 16."""
    x = digits.test_set()[3][0].to(device)
    return Smooth(engine(device, **options), 10, seed=7).sample_counts(x, 40, 16, idx=3, phase=0)


def test_options_are_checked_once_with_one_line_errors():
    with pytest.raises(ValueError, match="--autocast runs the models in --dtype float16 or bfloat16"):
        EngineOptions(autocast=True)
    with pytest.raises(ValueError, match="--dtype must be one of"):
        EngineOptions(dtype="float64")
    with pytest.raises(ValueError, match="fused must be True or False"):
        EngineOptions(fused=1)
    with pytest.raises(ValueError, match="--batch must be an integer >= 1 or auto"):
        EngineOptions(batch=0)
    assert EngineOptions(dtype="bfloat16", autocast=True).weights_dtype == torch.float32
    assert EngineOptions(dtype="float16").weights_dtype == torch.float16


def test_assemble_gives_the_plain_pipeline_or_the_counting_path():
    plain, fused = engine(), engine(fused=True)
    assert isinstance(plain, PurifiedClassifier) and isinstance(plain.networks, FastNetworks)
    assert isinstance(fused, CountingPath) and fused.folds and fused.counts_samples
    assert plain.smoothing_sigma == fused.smoothing_sigma == CONFIG.sigma


@pytest.mark.parametrize("fused", [False, True])
def test_channels_last_computes_the_same_function(fused):
    base = engine(channels_last=True, fused=fused)
    den, clf = base.networks.denoiser, base.networks.classifier
    conv = den.unet.input_blocks[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    seen = []
    hook = clf.net.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    out = base(noisy(), positions=POSITIONS)
    hook.remove()
    assert seen[0].is_contiguous(memory_format=torch.channels_last)  # the classifier is fed NHWC
    torch.testing.assert_close(out, scores(), rtol=0, atol=1e-5)
    assert torch.equal(counts(channels_last=True, fused=fused), counts())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_autocast_keeps_float32_weights_and_stays_close(dtype):
    base = engine(dtype=dtype, autocast=True)
    out = base(noisy(), positions=POSITIONS)
    assert next(base.networks.denoiser.parameters()).dtype == torch.float32 and out.dtype == torch.float32
    reference = scores()
    # Scores are mean softmax probabilities: half precision moves them by about its epsilon (bf16: 2**-8),
    # while a wrong path (no denoiser, no normalisation) moves them by tenths.
    assert (out - reference).abs().max() < (0.02 if dtype == "bfloat16" else 0.005)
    assert (out.argmax(1) == reference.argmax(1)).float().mean() >= 8 / 9
    held = scores(dtype=dtype)  # the other way to run in half precision: weights held in it
    assert (held - reference).abs().max() < 0.02


def test_fused_norms_compute_the_same_function():
    torch.testing.assert_close(scores(fuse_norms=True), scores(), rtol=0, atol=1e-5)
    assert torch.equal(counts(fuse_norms=True, fused=True), counts())


@pytest.mark.parametrize("fused", [False, True])
def test_compiled_networks_compute_the_same_function(fused, monkeypatch):
    """torch.compile wiring, with dynamo's eager backend (no code generation, seconds on a CPU); inductor itself
    is exercised by the GPU test and the benchmark."""
    torch._dynamo.reset()
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **opts: real(fn, backend="eager", **opts))
    base = engine(compile=True, fused=fused)
    unet = base.networks.denoiser.unet
    assert type(unet).forward is not unet.forward  # the instance now runs the compiled forward
    torch.testing.assert_close(base(noisy(), positions=POSITIONS), scores(), rtol=0, atol=1e-6)
    assert torch.equal(counts(compile=True, fused=fused), counts())
    torch._dynamo.reset()


# --- the command line ------------------------------------------------------------------------------------------

def test_engine_options_certify_the_demo(tmp_path, monkeypatch):
    compiled = []

    def fake_compile(fn, **options):  # record the wiring; inductor on a CPU would take minutes
        compiled.append(options)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    args = ["certify", "--max", "2", "--n0", "20", "--n", "60", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "plain.tsv")]) == 0
    assert main([*args, "--channels-last", "--fuse-norms", "--fused", "--compile",
                 "--out", str(tmp_path / "fast.tsv")]) == 0
    assert len(compiled) == 2 and all(o == {"dynamic": False} for o in compiled)  # the UNet and the classifier
    rows = lambda path: [line.split("\t")[:4] for line in open(path).read().splitlines()]  # noqa: E731
    assert rows(tmp_path / "fast.tsv") == rows(tmp_path / "plain.tsv")
    session = json.loads((tmp_path / "fast.tsv.json").read_text())
    assert "channels_last" in json.dumps(session) and "fuse_norms" in json.dumps(session)


def test_autocast_runs_and_is_part_of_the_results_settings(tmp_path):
    out = tmp_path / "amp.tsv"
    args = ["certify", "--max", "1", "--n0", "20", "--n", "60", "--quiet", "--dtype", "bfloat16", "--out", str(out)]
    assert main([*args, "--autocast"]) == 0
    assert len(out.read_text().splitlines()) == 2
    # A resume must use the same precision: with autocast off the settings differ and the resume is refused.
    assert main([*args, "--resume"]) == 2
    def settings(**options) -> dict:
        return resolve("certify", DataConfig("demo"), ModelConfig(), MethodConfig(), SamplingConfig(),
                       EngineOptions(**options), OutputConfig()).result_settings()

    plain, amp = settings(dtype="bfloat16"), settings(dtype="bfloat16", autocast=True)
    assert "autocast" not in plain and amp["autocast"] is True and plain["dtype"] == amp["dtype"] == "bfloat16"
    assert settings(fused=True, channels_last=True, batch=7) == settings()  # speed options decide no result


def test_autocast_without_a_half_dtype_is_a_one_line_error(capsys):
    assert main(["certify", "--autocast", "--max", "1"]) == 2
    err = capsys.readouterr().err
    assert "--autocast runs the models in --dtype float16 or bfloat16" in err and err.count("\n") == 1


# --- on a GPU --------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_gpu_fast_options_agree_with_float32(dtype):
    """Everything on at once on CUDA (half weights, channels_last, fused kernels, fused norms) against float32."""
    reference = scores("cuda")
    fast = scores("cuda", dtype=dtype, fuse_norms=True, channels_last=True)
    assert (fast - reference).abs().max() < 0.05
    assert (fast.argmax(1) == reference.argmax(1)).float().mean() >= 8 / 9
    votes = counts("cuda", dtype=dtype, fused=True, fuse_norms=True, channels_last=True)
    assert int(votes.sum()) == 40 and int((votes - counts("cuda")).abs().sum()) <= 8


@pytest.mark.gpu
@pytest.mark.gpu_full  # inductor compiles both networks from a cold cache: too slow for the short GPU profile
def test_gpu_inductor_compiled_networks_agree():
    torch._dynamo.reset()
    torch.testing.assert_close(scores("cuda", compile=True), scores("cuda"), rtol=0, atol=1e-4)
    torch._dynamo.reset()


def test_compiling_switches_the_fused_norms_off(caplog, monkeypatch):
    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", lambda fn, **opts: fn)
    with caplog.at_level("INFO", logger="diffsmooth_fast"):
        base = engine(compile=True, fuse_norms=True)
    assert all(getattr(m, "fused_backend", None) is None for m in base.networks.denoiser.unet.modules())
    assert "fused norms are switched off" in caplog.text
    torch._dynamo.reset()
