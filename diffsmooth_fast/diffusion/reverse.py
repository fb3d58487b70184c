"""A multi-step DDPM reverse process from t* down to 0 (the DensePure-style baseline, ``--method multistep``).

The noisy input is read as x_t* exactly as in the one-shot denoise; the reverse process then runs ancestral
sampling over ``steps`` evenly respaced steps of the model's schedule (OpenAI's ``space_timesteps`` over the
t* + 1 steps 0..t*, betas recomputed between kept steps as ``SpacedDiffusion`` does), with the posterior mean and
variance of OpenAI's ``GaussianDiffusion``: learned-range variance when the model has ``learn_sigma``, otherwise
"fixed large" (or "fixed small" with ``sigma_small``); a diffusers model uses its scheduler's variance_type and
prediction_type the same way. Its sampling noise is drawn by position, from its own
Philox streams (one per step), so results do not depend on the batch size. Slow by nature: steps x K UNet passes
per noisy sample.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..checks import check_int
from ..ops import gaussian_noise
from ..smoothing.noise_address import KIND_REVERSE, SamplePositions, classifier_stream
from .denoiser import Denoiser, StepCoefficients, noisy_to_model_input, predict_x0, x0_to_pixels
from .schedule import space_timesteps


def reverse_timesteps(t_star: int, steps: int) -> list[int]:
    """The kept steps, ascending, from 0 to t* (just [t*] for one step: the one-shot denoise)."""
    check_int("reverse steps", steps, 1)
    if steps > t_star + 1:
        raise ValueError(f"reverse steps must be at most t* + 1 = {t_star + 1} for this sigma, got {steps}")
    return [t_star] if steps == 1 else space_timesteps(t_star + 1, str(steps))


class ReverseProcess:
    """Ancestral sampling x_t* -> x_0 with a :class:`Denoiser`'s network over ``steps`` respaced steps.

    Args:
        denoiser: the diffusion model (unconditional).
        sigma: smoothing noise std in pixels (> 0); picks t* by Algorithm 1.
        steps: number of reverse steps (>= 1, <= t* + 1).
    """

    def __init__(self, denoiser: Denoiser, sigma: float, steps: int) -> None:
        if denoiser.parametrization.variance == "learned":
            raise ValueError("multistep: a model whose variance_type is 'learned' (not learned_range) is not "
                             "supported; use the one-shot methods")
        self.denoiser = denoiser
        self.t_star = denoiser.timestep(sigma)
        self.kept = reverse_timesteps(self.t_star, steps)
        abar = np.asarray(denoiser.schedule.alphas_cumprod, dtype=np.float64)[self.kept]
        abar_prev = np.append(1.0, abar[:-1])
        betas = 1.0 - abar / abar_prev  # SpacedDiffusion's betas between kept steps
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        # OpenAI clips the log of the first posterior variance (0) to the second one's.
        post_log_var = np.log(np.append(post_var[1], post_var[1:])) if len(post_var) > 1 else np.log(betas)
        variance = denoiser.parametrization.variance
        if variance == "learned_range":
            self.min_log, self.max_log = post_log_var, np.log(betas)
        elif variance == "fixed_small":
            self.fixed_log = post_log_var
        else:
            self.fixed_log = np.log(np.append(post_var[1], betas[1:])) if len(post_var) > 1 else np.log(betas)
        # the coefficients of each kept step (t is unused here: only the x0 prediction reads them)
        self.steps = [StepCoefficients(int(t), 0.0, math.sqrt(a), math.sqrt(1.0 / a), math.sqrt(1.0 / a - 1.0),
                                       math.sqrt(1.0 - a)) for t, a in zip(self.kept, abar)]
        self.coef1 = betas * np.sqrt(abar_prev) / (1.0 - abar)
        self.coef2 = (1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar)
        self.sqrt_abar_start = math.sqrt(abar[-1])

    def __call__(self, x_noisy: torch.Tensor, positions: SamplePositions, runs: int, backend: str) -> torch.Tensor:
        """Reverse-process outputs [B*K, C, H, W] in [0, 1] of x_noisy [B*K, C, H, W] (row j*K + r: run r of sample j).

        Row i's noise at kept step k is Philox stream ``classifier_stream(idx, phase, KIND_REVERSE, k)`` at the
        offset of (positions.first * K + i) whole images, so each sample and run always gets the same noise.
        """
        den, c = self.denoiser, x_noisy.shape[1]
        x = noisy_to_model_input(x_noisy, self.sqrt_abar_start)
        offset = positions.first * runs * x[0].numel()
        for k in range(len(self.kept) - 1, -1, -1):
            out = self._network(x, self.kept[k])
            x0 = predict_x0(x, out[:, :c], self.steps[k], den.prediction)
            x0 = x0 if den.clip is None else x0.clamp(-den.clip, den.clip)
            mean = float(self.coef1[k]) * x0 + float(self.coef2[k]) * x
            if k == 0:  # OpenAI's p_sample adds no noise at the last step
                x = mean
                break
            if den.parametrization.variance == "learned_range":
                frac = (out[:, c:].float() + 1) / 2
                log_var = frac * float(self.max_log[k]) + (1 - frac) * float(self.min_log[k])
            else:
                log_var = torch.full_like(x, float(self.fixed_log[k]))
            noise = gaussian_noise(tuple(x.shape), positions.seed, offset,
                                   stream=classifier_stream(positions.idx, positions.phase, KIND_REVERSE, k),
                                   backend=backend, device=x.device)
            x = mean + torch.exp(0.5 * log_var) * noise.to(x.dtype)
        return x0_to_pixels(x)  # the final sample clamped to [0, 1], as samplers return images

    def _network(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """All output channels of the UNet at step t of the schedule, timestep mapped as ``Denoiser.model_output``."""
        den = self.denoiser
        ts = den.timestep_map[torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)]
        if den.schedule.rescale_timesteps:
            ts = ts.float() * (1000.0 / den.schedule.num_steps)
        return den.unet(x, ts, None)
