"""Denoisers from diffusers: a tiny random UNet2DModel and its scheduler saved with save_pretrained, loaded back
offline, against diffusers' own scheduler.step (pred_original_sample) from the same x_t; the fused path where
it applies; a certify run on the demo images; and the errors a user meets."""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest
import torch

from diffsmooth_fast.diffusion.denoiser import Denoiser, noisy_to_model_input
from diffsmooth_fast.diffusion.reverse import ReverseProcess
from diffsmooth_fast.run.cli import main
from diffsmooth_fast.smoothing.noise_address import SamplePositions

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_unet(out_channels: int = 3, seed: int = 0) -> torch.nn.Module:
    """A 180 k-parameter UNet2DModel for 8x8 images (two levels, attention at the lower one)."""
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=out_channels, block_out_channels=(16, 32),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                                 attention_head_dim=8).eval()


def save_pipeline(folder, unet, scheduler, layout: str = "pipeline") -> str:
    """As google/ddpm-cifar10-32 is laid out (unet/, scheduler/), or model and scheduler config in one folder."""
    if layout == "pipeline":
        unet.save_pretrained(os.path.join(folder, "unet"))
        scheduler.save_pretrained(os.path.join(folder, "scheduler"))
    else:
        unet.save_pretrained(folder)
        scheduler.save_pretrained(folder)
    return os.fspath(folder)


def diffusers_denoise(unet, scheduler, x_t: torch.Tensor, t: int) -> torch.Tensor:
    """What diffusers itself computes: the scheduler's pred_original_sample at step t, mapped to [0, 1]."""
    with torch.no_grad():
        out = unet(x_t, torch.full((x_t.shape[0],), t)).sample
        x0 = scheduler.step(out, t, x_t).pred_original_sample
    return (x0 + 1) / 2


SCHEDULERS = [  # (scheduler config, UNet out channels)
    (dict(prediction_type="epsilon"), 3),
    (dict(prediction_type="sample", beta_schedule="squaredcos_cap_v2"), 3),
    (dict(prediction_type="v_prediction", beta_schedule="scaled_linear", beta_end=0.012), 3),
    (dict(prediction_type="epsilon", clip_sample=False), 3),
    (dict(prediction_type="epsilon", clip_sample_range=0.5, num_train_timesteps=500), 3),
    (dict(prediction_type="epsilon", variance_type="learned_range"), 6),
]


@pytest.mark.parametrize("config,out_channels", SCHEDULERS, ids=lambda v: str(v))
@pytest.mark.parametrize("layout", ["pipeline", "single"])
def test_one_shot_denoise_equals_diffusers_step(tmp_path, config, out_channels, layout):
    unet, scheduler = tiny_unet(out_channels), diffusers.DDPMScheduler(**config)
    den = Denoiser.from_diffusers(save_pipeline(tmp_path, unet, scheduler, layout))
    abar = scheduler.alphas_cumprod.double().numpy()
    assert np.array_equal(den.schedule.alphas_cumprod, abar)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 8, 8, generator=gen)
    for sigma in (0.12, 0.25, 0.5):
        t = den.timestep(sigma)
        assert t == int(np.argmax(np.sqrt((1 - abar) / abar) >= 2 * sigma))  # Algorithm 1 on the scheduler's abar
        x_noisy = x + sigma * torch.randn(x.shape, generator=gen)
        x_t = noisy_to_model_input(x_noisy, math.sqrt(abar[t]))
        with torch.no_grad():
            ours = den(x_noisy, sigma)
        theirs = diffusers_denoise(unet, scheduler, x_t, t)
        assert (ours - theirs).abs().max() <= 1e-5
        if config.get("clip_sample", True):
            r = config.get("clip_sample_range", 1.0)
            assert ours.min() >= (1 - r) / 2 and ours.max() <= (1 + r) / 2
    assert den.fuses_denoise == (config.get("prediction_type") == "epsilon" and config.get("clip_sample", True)
                                 and config.get("clip_sample_range", 1.0) == 1.0)
    assert den.flags is None and den.prediction == config["prediction_type"]


def test_eps_and_one_step_reverse_agree_with_the_denoise(tmp_path):
    """eps derived from a v prediction reproduces it, and a one-step reverse process is the one-shot denoise."""
    unet, scheduler = tiny_unet(), diffusers.DDPMScheduler(prediction_type="v_prediction")
    den = Denoiser.from_diffusers(save_pipeline(tmp_path, unet, scheduler))
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    c = den.coefficients(0.25)
    x_noisy = x + 0.25 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    x_t = noisy_to_model_input(x_noisy, c.sqrt_alpha_bar)
    with torch.no_grad():
        eps = den.eps(x_t, c.t)
        x0 = c.sqrt_recip_alpha_bar * x_t - c.sqrt_recipm1_alpha_bar * eps
        assert ((x0.clamp(-1, 1) + 1) / 2 - den(x_noisy, 0.25)).abs().max() <= 1e-5
        out = ReverseProcess(den, 0.25, 1)(x_noisy, SamplePositions(seed=0, idx=0, phase=0, first=0, count=2), 1, "torch")
    assert (out - den(x_noisy, 0.25)).abs().max() <= 1e-5
    with torch.no_grad():  # several steps run on the scheduler's schedule and variance
        many = ReverseProcess(den, 0.25, 4)(x_noisy, SamplePositions(seed=0, idx=0, phase=0, first=0, count=2), 1,
                                             "torch")
    assert many.shape == x.shape and 0 <= many.min() and many.max() <= 1 and not torch.equal(many, out)


def test_fused_path_only_for_clamped_eps(tmp_path):
    from diffsmooth_fast.engine.method import MethodConfig, folds_into_denoise_kernel
    from diffsmooth_fast.models.classifiers import InputNormalization, NormalizedClassifier

    classifier = NormalizedClassifier(InputNormalization("normalize", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), torch.nn.Flatten())
    method = MethodConfig("diffsmooth")
    for prediction, fused in (("epsilon", True), ("sample", False), ("v_prediction", False)):
        folder = save_pipeline(tmp_path / prediction, tiny_unet(), diffusers.DDPMScheduler(prediction_type=prediction))
        assert folds_into_denoise_kernel(method, classifier, Denoiser.from_diffusers(folder)) is fused


def test_errors_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="no such directory"):
        Denoiser.from_diffusers(tmp_path / "missing")
    with pytest.raises(ValueError, match="neither unet/config.json"):
        Denoiser.from_diffusers(tmp_path)
    tiny_unet().save_pretrained(tmp_path / "only_unet" / "unet")
    with pytest.raises(ValueError, match=r"no .*scheduler_config\.json"):
        Denoiser.from_diffusers(tmp_path / "only_unet")
    folder = save_pipeline(tmp_path / "thr", tiny_unet(), diffusers.DDPMScheduler(thresholding=True))
    with pytest.raises(ValueError, match="dynamic thresholding is not supported"):
        Denoiser.from_diffusers(folder)
    folder = save_pipeline(tmp_path / "var", tiny_unet(), diffusers.DDPMScheduler(variance_type="learned_range"))
    with pytest.raises(ValueError, match="gives 3 channels for 3"):
        Denoiser.from_diffusers(folder)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if it were not installed
    with pytest.raises(ValueError, match="needs the diffusers package: pip install diffusers"):
        Denoiser.from_diffusers(folder)


def _certify(tmp_path, folder, *extra):
    """``diffsmooth-fast certify`` (in this process: diffusers is imported once) on two demo images."""
    out = tmp_path / f"run{len(extra)}.tsv"
    args = ["certify", "--dataset", "demo", "--denoiser", f"diffusers:{folder}", "--n", "20", "--n0", "10", "--max",
            "2", "--out", str(out), "--quiet", *extra]
    assert main(args) == 0
    rows = [line.split("\t")[:5] for line in out.read_text().splitlines()]
    return rows, json.loads((tmp_path / f"{out.name}.json").read_text())


def test_certify_demo_with_a_diffusers_denoiser(tmp_path):
    folder = save_pipeline(tmp_path / "ddpm", tiny_unet(), diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2"))
    rows, record = _certify(tmp_path, folder)
    assert rows[0] == ["idx", "label", "predict", "radius", "correct"] and len(rows) == 3
    assert record["settings"]["denoiser"]["path"].startswith("diffusers:"), record["settings"].get("denoiser")
    assert len(record["settings"]["denoiser"]["sha256"]) == 64  # the folder by content: it may move, not change
    fused_rows, _ = _certify(tmp_path, folder, "--fused")
    assert fused_rows == rows  # the fused kernels count the same votes in float32


@pytest.mark.parametrize("extra,match", [
    (["--denoiser", "diffusers:nowhere"], "diffusers folder nowhere: no such directory"),
    (["--denoiser", "diffusers:{folder}", "--num_channels", "32"], "brings its own model and scheduler configs"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, extra, match):
    folder = save_pipeline(tmp_path / "ddpm", tiny_unet(), diffusers.DDPMScheduler())
    capsys.readouterr()
    assert main(["certify", "--dataset", "demo", "--out", str(tmp_path / "x.tsv"),
                 *[e.format(folder=folder) for e in extra]]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and match in err and not (tmp_path / "x.tsv").exists()
