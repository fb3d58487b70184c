"""The paper's way of certifying with DiffSmooth, as a timing baseline for the end-to-end benchmark.

DiffSmooth's published runs (Zhang et al., USENIX Security 2023: 125 s per CIFAR-10 image and 608 s per ImageNet
image on one RTX A6000) use Cohen et al.'s certify loop around the reference one-shot denoiser, in float32 eager
PyTorch. Per batch of 50 noisy copies of one image it:

1. draws the smoothing noise with ``torch.randn_like`` (the global RNG, on the device),
2. runs the diffusion UNet once at t* and forms x0 = clamp(sqrt(1/abar) x_t - sqrt(1/abar - 1) eps, -1, 1),
3. runs the classifier m times, one local copy ``x_hat + sigma' * noise_j`` after another (the m noises drawn once,
   ``torch.manual_seed(42)``), summing the softmax outputs,
4. copies the argmax to the host (``.cpu().numpy()``) and counts with numpy: one host sync per batch.

This module does the same with PyTorch's defaults (TF32 convolutions as PyTorch allows them by default, no
cudnn.benchmark, no autocast, no channels_last) and nothing slowed on purpose: it skips the reference's unused
``randn_like`` inside ``p_sample`` and reads eps straight from the UNet's output. The decision (Clopper-Pearson
bound, radius) is the project's ``stats.certify_decision``, the same as Cohen's.

``autocast=torch.bfloat16`` is not the paper's way: it runs the UNet and the classifier under ``torch.autocast``
(float32 weights, the softmax sum in float32), a control that shows how much of the engine's speedup a reduced
precision alone would give the paper's loop.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from diffsmooth_fast.diffusion.denoiser import Denoiser
from diffsmooth_fast.smoothing import stats

REFERENCE_LOCAL_SEED = 42  # the reference seeds the global RNG with 42 before drawing its m local noises
PAPER_BATCH = 50


class PaperBaseline:
    """Cohen's CERTIFY around DiffSmooth's base classifier, batch by batch with a host sync each.

    Args:
        denoiser: the diffusion model in float32 (its UNet and schedule are used directly).
        classifier: images [N, C, H, W] in [0, 1] -> logits [N, K] (normalisation included), float32, eval mode.
        num_classes: K.
        sigma: smoothing noise std (pixels); picks t*.
        local_sigma: sigma' of the m local copies (shift included).
        m: local copies per noisy sample.
        image_shape: (C, H, W), for the fixed local noise.
        batch: noisy samples per UNet call (the paper: 50).
        seed: seed of the global RNG (the reference seeds it per run).
        autocast: None (the paper: float32), or float16 / bfloat16 to run both networks under ``torch.autocast``.
    """

    def __init__(self, denoiser: Denoiser, classifier: nn.Module, *, num_classes: int, sigma: float,
                 local_sigma: float, m: int, image_shape: tuple[int, int, int], batch: int = PAPER_BATCH,
                 seed: int = 0, autocast: torch.dtype | None = None) -> None:
        if autocast not in (None, torch.float16, torch.bfloat16):
            raise ValueError(f"autocast must be None, torch.float16 or torch.bfloat16, got {autocast!r}")
        self.denoiser, self.classifier, self.autocast = denoiser, classifier, autocast
        self.num_classes, self.sigma, self.local_sigma, self.m, self.batch = num_classes, sigma, local_sigma, m, batch
        self.coef = denoiser.coefficients(sigma)
        device = next(denoiser.unet.parameters()).device
        gen = torch.Generator().manual_seed(REFERENCE_LOCAL_SEED)
        self.local_noise = torch.randn((m, *image_shape), generator=gen).to(device)
        torch.manual_seed(seed)

    def _precision(self, x: torch.Tensor) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(x.device.type, dtype=self.autocast)

    @torch.no_grad()
    def purify(self, noisy: torch.Tensor) -> torch.Tensor:
        """One-shot denoise of noisy [B, C, H, W] (pixels plus noise) -> x_hat in [0, 1]."""
        c = self.coef
        x_t = c.sqrt_alpha_bar * (2 * noisy - 1)
        t = torch.full((noisy.shape[0],), c.model_t, dtype=torch.float32, device=noisy.device)
        with self._precision(x_t):
            eps = self.denoiser.unet(x_t, t)[:, : noisy.shape[1]].float()
        x0 = (c.sqrt_recip_alpha_bar * x_t - c.sqrt_recipm1_alpha_bar * eps).clamp(-1, 1)
        return (x0 + 1) / 2

    @torch.no_grad()
    def softmax_sum(self, noisy: torch.Tensor) -> torch.Tensor:
        """Sum over the m local copies of the classifier's softmax [B, K]: one classifier call per copy."""
        x_hat = self.purify(noisy)
        probs = torch.zeros((noisy.shape[0], self.num_classes), device=noisy.device)
        for j in range(self.m):
            with self._precision(x_hat):
                logits = self.classifier(x_hat + self.local_sigma * self.local_noise[j])
            probs += torch.softmax(logits.float(), dim=1)  # summed in float32 under autocast too
        return probs

    @torch.no_grad()
    def sample_counts(self, x: torch.Tensor, num: int) -> np.ndarray:
        """Class counts [K] (numpy int64) of the base classifier on ``num`` noisy copies of x [C, H, W]."""
        counts = np.zeros(self.num_classes, dtype=np.int64)
        remaining = num
        while remaining > 0:
            b = min(self.batch, remaining)
            remaining -= b
            batch = x.unsqueeze(0).repeat(b, 1, 1, 1)
            noisy = batch + torch.randn_like(batch) * self.sigma
            predictions = self.softmax_sum(noisy).argmax(1).cpu().numpy()  # the per-batch host sync
            counts += np.bincount(predictions, minlength=self.num_classes)
        return counts

    def decide(self, counts0: np.ndarray, counts: np.ndarray, n: int, alpha: float) -> tuple[int, float]:
        """(prediction, radius) from the selection counts and the n estimation samples' counts."""
        c_a = int(counts0.argmax())
        return stats.certify_decision(c_a, int(counts[c_a]), n, alpha, self.sigma)

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float) -> tuple[int, float]:
        """(prediction, radius) of x [C, H, W] from n0 selection and n estimation samples."""
        counts0 = self.sample_counts(x, n0)
        return self.decide(counts0, self.sample_counts(x, n), n, alpha)
