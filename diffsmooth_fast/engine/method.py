"""The base classifiers of every method the paper compares, as settings of one pipeline (Algorithm 3).

A noisy input x + sigma*delta (pixels) is optionally purified by the diffusion model (one step, or a multi-step
reverse process), then classified, optionally after m local Gaussian copies x_hat + sigma'*delta'_j whose
softmax outputs are averaged:

=============  ==========  ================  ==========================================================
method         purify      local smoothing   paper
=============  ==========  ================  ==========================================================
diffsmooth     one step    m copies, sigma'  DiffSmooth (Algorithm 3)
dds            one step    none              DDS (Carlini et al.), "Standard" or "Smoothed" by classifier
cohen          none        none              Gaussian smoothing (Cohen et al.)
local-only     none        m copies, sigma'  ablation: local smoothing without denoiser (Table 3)
multistep      K reverse   none              DensePure-style: K multi-step reverse runs, majority vote
=============  ==========  ================  ==========================================================

Local noise modes: ``fresh`` draws new noise for every sample and copy, by position (Philox stream of the image
and phase, offset by sample and copy), so results do not depend on the batch size; ``fixed`` draws m noises once
per run from the project's Philox generator under the run's seed at a dedicated stream and adds the same m to
every sample, as the reference does ("fixed" is its default); ``reference`` is ``fixed`` with the reference's
exact draw, ``torch.manual_seed(42); torch.randn(m, C, H, W)`` on the CPU, made with a private generator so the
global torch RNG is left alone. Every mode yields a valid certificate: the base classifier may use any
randomness independent of the smoothing noise. Where each noise is drawn: :mod:`~diffsmooth_fast.smoothing.noise_address`.

This module is the mathematics only. How fast the networks run (precision, memory format, CUDA graphs,
torch.compile) is :mod:`~diffsmooth_fast.engine.options`'s business: the pipeline calls its networks through a
:class:`Networks` object, plain calls by default, and the fused counting path
(:mod:`~diffsmooth_fast.engine.counting`) reuses the stages defined here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ..checks import check_float, check_int
from ..diffusion.denoiser import Denoiser
from ..models.classifiers import NormalizedClassifier
from ..ops import gaussian_noise, resolve_backend
from ..smoothing.noise_address import FIXED_NOISE_IMAGE, KIND_FIXED, KIND_LOCAL, SamplePositions, classifier_stream

METHODS = ("diffsmooth", "dds", "cohen", "local-only", "multistep")
LOCAL_NOISE = ("fixed", "fresh", "reference")
REFERENCE_LOCAL_SEED = 42  # the reference's torch.manual_seed before drawing its fixed local noise


@dataclass(frozen=True)
class MethodConfig:
    """What the base classifier does to a noisy input (see the module docstring for the methods).

    Args:
        method: one of ``METHODS``.
        sigma: smoothing noise std (> 0, pixel units); picks the diffusion step t*.
        local_sigma: nominal local noise std sigma' (>= 0); None means sigma.
        local_sigma_shift: added to local_sigma (the paper: +0.03 on CIFAR-10, +0.01/+0.02 on ImageNet).
        m: local noise copies per sample (>= 1).
        local_noise: ``fixed``, ``fresh`` or ``reference`` (see the module docstring).
        reverse_steps: multistep only: reverse steps from t* to 0 (>= 1; 1 is the one-shot denoise).
        reverse_runs: multistep only: K reverse runs per sample, majority-voted (>= 1).
    """

    method: str = "diffsmooth"
    sigma: float = 0.25
    local_sigma: float | None = None
    local_sigma_shift: float = 0.0
    m: int = 5
    local_noise: str = "fixed"
    reverse_steps: int = 10
    reverse_runs: int = 5

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        check_float("sigma", self.sigma, above=0.0)
        if self.local_sigma is None:
            object.__setattr__(self, "local_sigma", float(self.sigma))
        check_float("local sigma", self.local_sigma, minimum=0.0)
        if check_float("local sigma shift", self.local_sigma_shift) + self.local_sigma < 0:
            raise ValueError(f"local sigma + shift must be >= 0, got {self.local_sigma} + {self.local_sigma_shift}")
        for name in ("m", "reverse_steps", "reverse_runs"):
            check_int(name.replace("_", " "), getattr(self, name), 1)
        if self.local_noise not in LOCAL_NOISE:
            raise ValueError(f"local noise must be one of {', '.join(LOCAL_NOISE)}, got {self.local_noise!r}")

    @property
    def uses_denoiser(self) -> bool:
        return self.method in ("diffsmooth", "dds", "multistep")

    @property
    def uses_local_noise(self) -> bool:
        return self.method in ("diffsmooth", "local-only")

    @property
    def effective_local_sigma(self) -> float:
        """sigma' as applied: local_sigma + local_sigma_shift (0 for methods without local smoothing)."""
        return self.local_sigma + self.local_sigma_shift if self.uses_local_noise else 0.0

    def settings(self) -> dict[str, object]:
        """The settings that change this method's results (a resumed run must match them)."""
        out: dict[str, object] = {"method": self.method, "sigma": self.sigma}
        if self.uses_local_noise:
            out.update(local_sigma=self.local_sigma, local_sigma_shift=self.local_sigma_shift, m=self.m,
                       local_noise=self.local_noise)
        if self.method == "multistep":
            out.update(reverse_steps=self.reverse_steps, reverse_runs=self.reverse_runs)
        return out


class Networks(Protocol):
    """How a pipeline calls its two networks. Every call is a pure function of its input tensor (sigma, t* and
    the weights are fixed for a run), which is what lets an implementation replay it from a CUDA graph."""

    classifier_dtype: torch.dtype | None  # what the classifier's inputs are cast to (None: as they come)

    def denoise(self, x_noisy: torch.Tensor) -> torch.Tensor:
        """One-shot denoise at the method's sigma: [B, C, H, W] pixels plus noise -> [B, C, H, W] in [0, 1]."""
        ...

    def model_output(self, x_t: torch.Tensor) -> torch.Tensor:
        """The UNet's first C output channels at t* for diffusion inputs x_t [B, C, H, W] (eps or x0)."""
        ...

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, K] in float32 of images [N, C, H, W] in [0, 1] (the classifier's normalisation included)."""
        ...

    def classify_normalized(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits [N, K] in float32 of inputs already normalised as the classifier's first layer would."""
        ...


class DirectNetworks:
    """:class:`Networks` as plain module calls: the reference the faster ways of calling are tested against.

    Inputs are cast to the classifier's parameter dtype (a model held in half precision takes half inputs) and
    logits returned in float32; the denoiser casts its own input.
    """

    def __init__(self, classifier: nn.Module, denoiser: Denoiser | None, sigma: float) -> None:
        self.classifier, self.denoiser, self.sigma = classifier, denoiser, sigma
        param = next(classifier.parameters(), None)
        self.classifier_dtype = param.dtype if param is not None and param.is_floating_point() else None
        self.t_star = denoiser.coefficients(sigma).t if denoiser is not None else None

    def denoise(self, x_noisy: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x_noisy, self.sigma)

    def model_output(self, x_t: torch.Tensor) -> torch.Tensor:
        return self.denoiser.model_output(x_t, self.t_star)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self._cast(x)).float()

    def classify_normalized(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.classifier.net(self._cast(inputs)).float()

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.classifier_dtype is None else x.to(self.classifier_dtype)


class PurifiedClassifier(nn.Module):
    """The base classifier f of a method: noisy images [B, C, H, W] (pixels plus N(0, sigma^2)) -> scores [B, K].

    Scores are logits (cohen, dds), the mean softmax over the m local copies (diffsmooth, local-only) or the
    votes of the K reverse runs (multistep); the predicted class is their argmax in every case. Called by
    :class:`~diffsmooth_fast.Smooth` with ``positions`` (fresh local noise and the reverse process need them);
    ``smoothing_sigma`` tells Smooth the sigma the method was built for.

    Args:
        config: the method.
        classifier: images [N, C, H, W] in [0, 1] -> logits [N, K] (normalisation included), in eval mode.
        denoiser: the diffusion model, for the methods that purify (None otherwise).
        seed: Philox key of the fixed local noise (use the run's seed).
        backend: noise backend for this pipeline's own noise.
        networks: how the two networks are called (None: :class:`DirectNetworks`); the engine passes one with
            its speed options applied (:func:`diffsmooth_fast.engine.options.assemble`).
    """

    accepts_positions = True

    def __init__(self, config: MethodConfig, classifier: nn.Module, denoiser: Denoiser | None = None, *,
                 seed: int = 0, backend: str | None = "auto", networks: Networks | None = None) -> None:
        super().__init__()
        if config.uses_denoiser and denoiser is None:
            raise ValueError(f"method {config.method} needs a diffusion model (--denoiser)")
        if not config.uses_denoiser and denoiser is not None:
            raise ValueError(f"method {config.method} uses no diffusion model; drop --denoiser")
        if denoiser is not None and denoiser.class_cond:
            raise ValueError("the diffusion model is class-conditional; DiffSmooth purifies with an unconditional one")
        self.config, self.classifier, self.denoiser = config, classifier, denoiser
        self.seed, self.backend = seed, backend
        self.networks = networks if networks is not None else DirectNetworks(classifier, denoiser, config.sigma)
        self.reverse = None
        if config.method == "multistep":
            from ..diffusion.reverse import ReverseProcess  # only multistep needs it

            self.reverse = ReverseProcess(denoiser, config.sigma, config.reverse_steps)
        self._fixed: dict[tuple, torch.Tensor] = {}

    @property
    def smoothing_sigma(self) -> float:
        """The sigma of the smoothing noise this method expects (it picks the diffusion step t*)."""
        return self.config.sigma

    @property
    def copies(self) -> int:
        """Classifier inputs per noisy sample: m with local smoothing, K reverse runs for multistep, else 1."""
        cfg = self.config
        return cfg.m if cfg.uses_local_noise else cfg.reverse_runs if cfg.method == "multistep" else 1

    def forward(self, x_noisy: torch.Tensor, positions: SamplePositions | None = None) -> torch.Tensor:
        """Scores [B, K] (float32) of x_noisy [B, C, H, W]; ``positions`` says where the batch sits in the run."""
        cfg = self.config
        if positions is None and (cfg.method == "multistep" or (cfg.uses_local_noise and cfg.local_noise == "fresh")):
            raise ValueError(f"method {cfg.method} with its own per-sample noise must be called with positions=")
        with torch.no_grad():
            if cfg.method == "multistep":
                return self._multistep(x_noisy, positions)
            logits = self.networks.classify(self.classifier_inputs(x_noisy, positions))
            return self.scores(logits, x_noisy.shape[0])

    def classifier_inputs(self, x_noisy: torch.Tensor, positions: SamplePositions | None) -> torch.Tensor:
        """The classifier's inputs [B * copies, C, H, W] in pixels: purified (or not), then locally noised (or
        not); row b*m + j is copy j of sample b. Not for multistep (its runs are voted, not averaged)."""
        cfg = self.config
        x = self.networks.denoise(x_noisy) if cfg.uses_denoiser else x_noisy
        if not cfg.uses_local_noise:
            return x
        copies = x.unsqueeze(1) + cfg.effective_local_sigma * self.local_noise(x, positions)  # [B, m, C, H, W]
        return copies.flatten(0, 1)  # one classifier call on B*m inputs

    def scores(self, logits: torch.Tensor, b: int) -> torch.Tensor:
        """Scores [B, K] from the logits [B * copies, K] of :meth:`classifier_inputs`: the mean softmax over the m
        local copies, or the logits themselves."""
        if not self.config.uses_local_noise:
            return logits
        return torch.softmax(logits, dim=-1).view(b, self.config.m, -1).mean(dim=1)

    def local_noise(self, x: torch.Tensor, positions: SamplePositions | None) -> torch.Tensor:
        """[m, C, H, W] (fixed, broadcast over the batch) or [B, m, C, H, W] (fresh) standard normal noise."""
        cfg, shape = self.config, tuple(x.shape[1:])
        if cfg.local_noise != "fresh":
            key = (shape, x.device, cfg.local_noise)
            if key not in self._fixed:  # drawn once per run (per shape and device), then reused for every sample
                if cfg.local_noise == "reference":
                    gen = torch.Generator().manual_seed(REFERENCE_LOCAL_SEED)
                    noise = torch.randn((cfg.m, *shape), generator=gen)
                else:
                    stream = classifier_stream(FIXED_NOISE_IMAGE, 0, KIND_FIXED)  # no image's: shared by all
                    noise = gaussian_noise((cfg.m, *shape), self.seed, 0, stream=stream, backend=self.backend_for(x),
                                           device=x.device)
                self._fixed[key] = noise.to(device=x.device, dtype=x.dtype)
            return self._fixed[key]
        return gaussian_noise((x.shape[0], cfg.m, *shape), positions.seed, positions.offset(math.prod(shape), cfg.m),
                              stream=self.local_stream(positions), backend=self.backend_for(x),
                              device=x.device).to(x.dtype)

    @staticmethod
    def local_stream(positions: SamplePositions) -> int:
        """The stream of the fresh local noise of these samples."""
        return classifier_stream(positions.idx, positions.phase, KIND_LOCAL)

    def _multistep(self, x_noisy: torch.Tensor, positions: SamplePositions) -> torch.Tensor:
        b, k = x_noisy.shape[0], self.config.reverse_runs
        runs = x_noisy.repeat_interleave(k, dim=0)  # [B*K, C, H, W], run r of sample j at row j*K + r
        x = self.reverse(runs, positions, k, self.backend_for(x_noisy))
        logits = self.networks.classify(x).view(b, k, -1)
        votes = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).sum(1).float()  # [B, K classes]
        # argmax hides NaN; carry it into the scores so Smooth's check sees it (on the device: no sync here).
        return votes.masked_fill(~torch.isfinite(logits).all(-1).all(-1, keepdim=True), float("nan"))

    def backend_for(self, x: torch.Tensor) -> str:
        """The noise backend for tensors on x's device."""
        return resolve_backend(self.backend, x.device.type)


def folds_into_denoise_kernel(config: MethodConfig, classifier: nn.Module, denoiser: Denoiser | None) -> bool:
    """Whether ``denoise_replicate`` can go from the UNet's output to the classifier network's inputs in one pass:
    a one-shot denoise from predicted noise clamped to [-1, 1], and a classifier whose normalisation is a known
    first layer."""
    return (config.method in ("diffsmooth", "dds") and isinstance(classifier, NormalizedClassifier)
            and denoiser is not None and denoiser.fuses_denoise)
