"""The engine's speed options on the shipped demo models: channels_last, autocast, fused norms and torch.compile
give the function of the plain pipeline (exactly up to float rounding, or within half precision's own error),
and the command line wires them. Their speed is measured by ``diffsmooth-fast bench e2e`` on a GPU, not here."""

from __future__ import annotations

import json

import pytest
import torch

from diffsmooth_fast import Denoiser, load_classifier
from diffsmooth_fast.data import digits
from diffsmooth_fast.engine.method import MethodConfig, PurifiedClassifier
from diffsmooth_fast.models import shipped
from diffsmooth_fast.run.cli import main
from diffsmooth_fast.run.configs import DataConfig, ModelConfig, SamplingConfig, result_settings
from diffsmooth_fast.smoothing.certify import SamplePositions

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


def scores(device: str = "cpu", fused: bool = False, dtype: torch.dtype = torch.float32, fuse_norms: bool = False,
           **options) -> torch.Tensor:
    den, clf = models(dtype, device)
    if fuse_norms:
        den.unet.fuse_group_norms("auto")
    base = PurifiedClassifier(CONFIG, clf, den, seed=7, fused=fused, dtype=dtype, **options)
    return base(noisy(device=device), positions=POSITIONS)


@pytest.mark.parametrize("fused", [False, True])
def test_channels_last_computes_the_same_scores(fused):
    den, clf = models()
    base = PurifiedClassifier(CONFIG, clf, den, seed=7,
                              fused=fused, channels_last=True)
    conv = den.unet.input_blocks[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    seen = []
    hook = clf.net.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    out = base(noisy(), positions=POSITIONS)
    hook.remove()
    assert seen[0].is_contiguous(memory_format=torch.channels_last)  # the classifier is fed NHWC
    torch.testing.assert_close(out, scores(fused=fused), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_keeps_float32_weights_and_stays_close(dtype):
    den, clf = models()
    base = PurifiedClassifier(CONFIG, clf, den, seed=7,
                              autocast=dtype)
    out = base(noisy(), positions=POSITIONS)
    assert next(den.parameters()).dtype == torch.float32 and out.dtype == torch.float32
    reference = scores()
    # Scores are mean softmax probabilities: half precision moves them by about its epsilon (bf16: 2**-8),
    # while a wrong path (no denoiser, no normalisation) moves them by tenths.
    assert (out - reference).abs().max() < (0.02 if dtype == torch.bfloat16 else 0.005)
    assert (out.argmax(1) == reference.argmax(1)).float().mean() >= 8 / 9
    held = scores(dtype=dtype)  # the other way to run in half precision: weights held in it
    assert (held - reference).abs().max() < 0.02


def test_autocast_refuses_other_dtypes():
    den, clf = models()
    with pytest.raises(ValueError, match="autocast must be torch.float16 or torch.bfloat16"):
        PurifiedClassifier(MethodConfig("dds", 0.5), clf, den, autocast=torch.float32)


def test_fused_norms_compute_the_same_scores():
    torch.testing.assert_close(scores(fuse_norms=True), scores(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_compiled_networks_compute_the_same_scores(fused):
    """torch.compile wiring, with dynamo's eager backend (no code generation, seconds on a CPU); inductor itself
    is exercised by the GPU test and the benchmark."""
    torch._dynamo.reset()
    den, clf = models()
    base = PurifiedClassifier(CONFIG, clf, den,
                              seed=7, fused=fused)
    assert base.compile_networks(backend="eager") is base
    assert type(den.unet).forward is not den.unet.forward  # the instance now runs the compiled forward
    torch.testing.assert_close(base(noisy(), positions=POSITIONS), scores(fused=fused), rtol=0, atol=1e-6)
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
    settings = {"data": DataConfig("demo"), "method": MethodConfig(), "sampling": SamplingConfig()}
    plain = result_settings("certify", models=ModelConfig(dtype="bfloat16"), **settings)
    amp = result_settings("certify", models=ModelConfig(dtype="bfloat16", autocast=True), **settings)
    assert "autocast" not in plain and amp["autocast"] is True


def test_autocast_without_a_half_dtype_is_a_one_line_error(capsys):
    assert main(["certify", "--autocast", "--max", "1"]) == 2
    err = capsys.readouterr().err
    assert "--autocast runs the models in --dtype float16 or bfloat16" in err and err.count("\n") == 1


# --- on a GPU --------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_fast_options_agree_with_float32(dtype):
    """Everything on at once on CUDA (half weights, channels_last, fused kernels, fused norms) against float32."""
    reference = scores("cuda")
    fast = scores("cuda", fused=True, dtype=dtype, fuse_norms=True, channels_last=True)
    assert (fast - reference).abs().max() < 0.05
    assert (fast.argmax(1) == reference.argmax(1)).float().mean() >= 8 / 9


@pytest.mark.gpu
@pytest.mark.gpu_full  # inductor compiles both networks from a cold cache: too slow for the short GPU profile
def test_gpu_inductor_compiled_networks_agree():
    torch._dynamo.reset()
    den, clf = models(torch.float32, "cuda")
    base = PurifiedClassifier(CONFIG, clf, den,
                              seed=7).compile_networks()
    torch.testing.assert_close(base(noisy(device="cuda"), positions=POSITIONS), scores("cuda"), rtol=0, atol=1e-4)
    torch._dynamo.reset()


def test_compiling_switches_the_fused_norms_off(caplog):
    torch._dynamo.reset()
    den, clf = models()
    den.unet.fuse_group_norms("auto")
    base = PurifiedClassifier(CONFIG, clf, den, seed=7)
    with caplog.at_level("INFO", logger="diffsmooth_fast"):
        base.compile_networks(backend="eager")
    assert all(getattr(m, "fused_backend", None) is None for m in den.unet.modules())
    assert "fused norms are switched off" in caplog.text
    torch._dynamo.reset()
