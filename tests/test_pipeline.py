"""The base classifiers of every method (pipeline.PurifiedClassifier, Algorithm 3) against their definitions,
local noise by position, and the multi-step reverse process against OpenAI's posterior, written out here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from diffsmooth_fast import Smooth
from diffsmooth_fast.diffusion.denoiser import Denoiser
from diffsmooth_fast.diffusion.reverse import ReverseProcess, reverse_timesteps
from diffsmooth_fast.diffusion.schedule import space_timesteps
from diffsmooth_fast.engine.method import MethodConfig, PurifiedClassifier
from diffsmooth_fast.smoothing.noise_address import KIND_LOCAL, classifier_stream
from diffsmooth_fast.ops import gaussian_noise
from diffsmooth_fast.smoothing.noise_address import PHASE_ESTIMATION, SamplePositions

from .tiny_models import UNET_FLAGS, fill_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (3, 8, 8)


class Linear(nn.Module):
    """A random linear classifier on [B, 3, 8, 8]; counts its calls and their batch sizes."""

    def __init__(self, classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(classes, math.prod(SHAPE), generator=g), requires_grad=False)
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return (x.flatten(1) - 0.5) @ self.weight.T


@pytest.fixture(scope="module")
def denoiser() -> Denoiser:
    flags = dict(UNET_FLAGS, image_size=16)
    from diffsmooth_fast.diffusion.openai_flags import openai_flags
    from diffsmooth_fast.models.unet import UNet

    with torch.device("meta"):
        unet = UNet(openai_flags(**flags).unet_config())
    state = fill_state_dict({k: tuple(v.shape) for k, v in unet.state_dict().items()}, 3)
    return Denoiser.from_openai(state, **flags)


def positions(first: int, count: int, idx: int = 5, phase: int = PHASE_ESTIMATION) -> SamplePositions:
    return SamplePositions(seed=7, idx=idx, phase=phase, first=first, count=count)


def batch(b: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((b, *SHAPE), generator=g) + 0.25 * torch.randn((b, *SHAPE), generator=g)


# --- the methods against their definitions ------------------------------------------------------------------

def test_cohen_is_the_classifier():
    clf, x = Linear(), batch()
    base = PurifiedClassifier(MethodConfig("cohen"), clf)
    assert torch.equal(base(x), clf(x))


def test_dds_is_classifier_of_one_shot_denoise(denoiser):
    clf, x = Linear(), batch()
    base = PurifiedClassifier(MethodConfig("dds", sigma=0.25), clf, denoiser)
    assert torch.equal(base(x), clf(denoiser(x, 0.25)))


@pytest.mark.parametrize("method", ["diffsmooth", "local-only"])
def test_local_smoothing_is_mean_softmax_of_m_copies_in_one_call(method, denoiser):
    clf, x = Linear(), batch(b=5)
    cfg = MethodConfig(method, sigma=0.25, local_sigma=0.2, local_sigma_shift=0.03, m=3, local_noise="fresh")
    base = PurifiedClassifier(cfg, clf, denoiser if method == "diffsmooth" else None, backend="torch")
    scores = base(x, positions=positions(10, 5))
    assert clf.calls == [15]  # the m copies of the B samples go through the classifier as one batch
    # Algorithm 3 written out: x_hat, then m copies with sigma' = 0.2 + 0.03, softmax averaged
    x_hat = denoiser(x, 0.25) if method == "diffsmooth" else x
    noise = gaussian_noise((5, 3, *SHAPE), 7, 10 * 3 * x[0].numel(), stream=classifier_stream(5, PHASE_ESTIMATION,
                           KIND_LOCAL), backend="torch")
    expected = torch.stack([torch.softmax(clf(x_hat + 0.23 * noise[:, j]), -1) for j in range(3)]).mean(0)
    assert torch.allclose(scores, expected, atol=1e-6)
    assert torch.allclose(scores.sum(-1), torch.ones(5))


def test_fixed_local_noise_is_the_same_m_noises_for_every_sample():
    clf = Linear()
    cfg = MethodConfig("local-only", sigma=0.25, local_sigma=0.5, m=2, local_noise="fixed")
    base = PurifiedClassifier(cfg, clf, seed=3)
    x = batch(b=1).expand(4, *SHAPE)  # the same input four times, at four sample positions
    scores = base(x, positions=positions(0, 4))
    assert torch.equal(scores[0], scores[3])  # same noise for every sample...
    fresh = PurifiedClassifier(MethodConfig("local-only", sigma=0.25, local_sigma=0.5, m=2, local_noise="fresh"),
                               clf, seed=3)(x, positions=positions(0, 4))
    assert not torch.equal(fresh[0], fresh[3])  # ...unlike fresh noise
    other_seed = PurifiedClassifier(cfg, clf, seed=4)(x, positions=positions(0, 4))
    assert not torch.equal(other_seed, scores)  # the fixed draw follows the run's seed


def test_reference_local_noise_is_torch_seed_42_and_leaves_global_rng_alone():
    clf = Linear()
    cfg = MethodConfig("local-only", sigma=0.25, local_sigma=0.25, m=4, local_noise="reference")
    base = PurifiedClassifier(cfg, clf)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    x = batch(b=2)
    scores = base(x)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(42)  # the reference: torch.manual_seed(42); torch.randn(m, C, H, W) * sd
    noise = torch.randn(4, *SHAPE) * 0.25
    expected = torch.stack([torch.softmax(clf(x + noise[j]), -1) for j in range(4)]).mean(0)
    assert torch.allclose(scores, expected, atol=1e-6)


@pytest.mark.parametrize("method", ["local-only", "multistep"])
def test_own_noise_is_batch_size_independent(method, denoiser):
    """Smooth's counts with fresh local noise (or reverse noise) do not depend on the batch size."""
    cfg = MethodConfig(method, sigma=0.5, local_sigma=0.5, m=3, local_noise="fresh", reverse_steps=3, reverse_runs=2)
    base = PurifiedClassifier(cfg, Linear(classes=3), denoiser if method == "multistep" else None)
    smooth = Smooth(base, 3, 0.5, seed=11)
    x = batch(b=1)[0].clamp(0, 1)
    counts = [smooth.sample_counts(x, 23, b, idx=4).tolist() for b in (23, 5, 1)]
    assert counts[0] == counts[1] == counts[2]
    assert max(counts[0]) < 23  # the noise really changes predictions, so the equality means something
    whole = base(x.expand(6, *SHAPE), positions=positions(0, 6))
    parts = torch.cat([base(x.expand(4, *SHAPE), positions=positions(0, 4)),
                       base(x.expand(2, *SHAPE), positions=positions(4, 2))])
    assert torch.allclose(whole, parts, atol=1e-5)  # same noise; matmuls of other shapes may round differently


def test_nan_reaches_smooth_check(denoiser):
    class Nan(Linear):
        def forward(self, x):
            out = super().forward(x)
            out[0, 0] = float("nan")
            return out

    for cfg in (MethodConfig("diffsmooth", m=2), MethodConfig("multistep", reverse_steps=2, reverse_runs=2)):
        smooth = Smooth(PurifiedClassifier(cfg, Nan(), denoiser), 4, 0.25)
        with pytest.raises(ValueError, match="NaN"):
            smooth.certify(batch(b=1)[0], 4, 4, 0.01, 4)


# --- the multi-step reverse process -------------------------------------------------------------------------

def test_one_reverse_step_is_the_one_shot_denoise(denoiser):
    clf, x = Linear(), batch()
    multi = PurifiedClassifier(MethodConfig("multistep", sigma=0.25, reverse_steps=1, reverse_runs=1), clf, denoiser)
    votes = multi(x, positions=positions(0, 6))
    dds = clf(denoiser(x, 0.25)).argmax(-1)
    assert torch.equal(votes.argmax(-1), dds) and torch.equal(votes.sum(-1), torch.ones(6))


def test_reverse_timesteps():
    assert reverse_timesteps(145, 1) == [145]
    assert reverse_timesteps(145, 4) == space_timesteps(146, "4") == [0, 48, 97, 145]
    with pytest.raises(ValueError, match="at most t"):
        reverse_timesteps(3, 5)


def test_reverse_process_matches_openai_posterior(denoiser):
    """Three respaced steps written out with OpenAI's GaussianDiffusion formulas (learned-range variance)."""
    sigma, x_noisy = 0.25, batch(b=2)
    proc = ReverseProcess(denoiser, sigma, 3)
    pos = positions(3, 1)
    got = proc(x_noisy, pos, 2, "torch")

    t_star = denoiser.timestep(sigma)
    kept = space_timesteps(t_star + 1, "3")
    abar_all = denoiser.schedule.alphas_cumprod
    abar = np.array([abar_all[k] for k in kept])
    abar_prev = np.append(1.0, abar[:-1])
    betas = 1 - abar / abar_prev
    post_var = betas * (1 - abar_prev) / (1 - abar)
    post_log = np.log(np.append(post_var[1], post_var[1:]))
    x = math.sqrt(abar[-1]) * (2 * x_noisy - 1)
    for i in reversed(range(len(kept))):
        ts = torch.full((2,), float(kept[i]))
        out = denoiser.unet(x, ts)
        eps, v = out[:, :3], out[:, 3:]
        x0 = (math.sqrt(1 / abar[i]) * x - math.sqrt(1 / abar[i] - 1) * eps).clamp(-1, 1)
        mean = (betas[i] * math.sqrt(abar_prev[i]) / (1 - abar[i])) * x0 + \
            ((1 - abar_prev[i]) * math.sqrt(1 - betas[i]) / (1 - abar[i])) * x
        if i == 0:
            x = mean
            break
        frac = (v + 1) / 2
        log_var = frac * math.log(betas[i]) + (1 - frac) * post_log[i]
        noise = gaussian_noise((2, *SHAPE), 7, 3 * 2 * x[0].numel(), stream=(PHASE_ESTIMATION | (2 << 8) | (i << 16))
                               << 32 | 5, backend="torch")
        x = mean + torch.exp(0.5 * log_var) * noise
    expected = (x.clamp(-1, 1) + 1) / 2
    assert torch.allclose(got, expected, atol=1e-5)


# --- settings ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(method="denoise"), "unknown method"),
    (dict(sigma=0.0), "sigma must be > 0"),
    (dict(sigma=float("nan")), "sigma must be a finite"),
    (dict(local_sigma=-0.1), "local sigma must be >= 0"),
    (dict(local_sigma=0.01, local_sigma_shift=-0.02), "local sigma \\+ shift"),
    (dict(m=0), "m must be an integer >= 1"),
    (dict(reverse_runs=0), "reverse runs"),
    (dict(local_noise="random"), "local noise must be"),
])
def test_method_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MethodConfig(**kwargs)


def test_method_settings_name_only_what_matters():
    assert MethodConfig("cohen", m=3).settings() == {"method": "cohen", "sigma": 0.25}
    cfg = MethodConfig("diffsmooth", sigma=0.5, local_sigma_shift=0.03)
    assert cfg.settings()["local_sigma"] == 0.5 and cfg.effective_local_sigma == pytest.approx(0.53)
    assert MethodConfig("multistep").settings()["reverse_runs"] == 5


def test_pipeline_refuses_missing_or_extra_denoiser(denoiser):
    with pytest.raises(ValueError, match="needs a diffusion model"):
        PurifiedClassifier(MethodConfig("dds"), Linear())
    with pytest.raises(ValueError, match="uses no diffusion model"):
        PurifiedClassifier(MethodConfig("cohen"), Linear(), denoiser)
    with pytest.raises(ValueError, match="positions"):
        PurifiedClassifier(MethodConfig("local-only", local_noise="fresh"), Linear())(batch())


def test_smooth_takes_sigma_from_the_method_and_refuses_another():
    base = PurifiedClassifier(MethodConfig("cohen", sigma=0.25), Linear())
    assert Smooth(base, 4).sigma == 0.25 == Smooth(base, 4, sigma=0.25).sigma
    with pytest.raises(ValueError, match="differs from the base classifier's method sigma 0.25"):
        Smooth(base, 4, sigma=0.5)
    with pytest.raises(ValueError, match="sigma is required"):
        Smooth(Linear(), 4)  # a plain model was built for no sigma
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        Smooth(Linear(), 4, sigma=float("nan"))
