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
randomness independent of the smoothing noise.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..diffusion.denoiser import Denoiser, noisy_to_model_input
from ..models.classifiers import NormalizedClassifier
from ..ops import denoise_replicate, gaussian_noise, resolve_backend
from ..smoothing.certify import SamplePositions, noise_stream
from .graphs import GraphedFunction, GraphPool

log = logging.getLogger("diffsmooth_fast")

METHODS = ("diffsmooth", "dds", "cohen", "local-only", "multistep")
LOCAL_NOISE = ("fixed", "fresh", "reference")
REFERENCE_LOCAL_SEED = 42  # the reference's torch.manual_seed before drawing its fixed local noise

# Philox counter word c3 of a base classifier's own noise: Smooth uses 0..3 (its phases) there, so these kinds
# (in bits 8..15) and the reverse step (bits 16..31) can never meet the smoothing noise.
KIND_LOCAL = 1
KIND_REVERSE = 2
KIND_FIXED = 3


def classifier_stream(idx: int, phase: int, kind: int, step: int = 0) -> int:
    """Philox stream of a base classifier's own noise of ``kind`` for sampling phase ``phase`` of image ``idx``."""
    if not 0 <= step < 2**16:
        raise ValueError(f"step must be in [0, 65536), got {step}")
    return noise_stream(idx, phase | (kind << 8) | (step << 16))


def _finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


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
        if _finite("sigma", self.sigma) <= 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma!r}")
        if self.local_sigma is None:
            object.__setattr__(self, "local_sigma", float(self.sigma))
        if _finite("local sigma", self.local_sigma) < 0:
            raise ValueError(f"local sigma must be >= 0, got {self.local_sigma!r}")
        if _finite("local sigma shift", self.local_sigma_shift) + self.local_sigma < 0:
            raise ValueError(f"local sigma + shift must be >= 0, got {self.local_sigma} + {self.local_sigma_shift}")
        for name in ("m", "reverse_steps", "reverse_runs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be an integer >= 1, got {value!r}")
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


class PurifiedClassifier(nn.Module):
    """The base classifier f of a method: noisy images [B, C, H, W] (pixels plus N(0, sigma^2)) -> scores [B, K].

    Scores are logits (cohen, dds), the mean softmax over the m local copies (diffsmooth, local-only) or the
    votes of the K reverse runs (multistep); the predicted class is their argmax in every case. Called by
    :class:`~diffsmooth_fast.Smooth` with ``positions`` (fresh local noise and the reverse process need them).

    Args:
        config: the method.
        classifier: images [N, C, H, W] in [0, 1] -> logits [N, K] (normalisation included), in eval mode.
        denoiser: the diffusion model, for the methods that purify (None otherwise).
        seed: Philox key of the fixed local noise (use the run's seed).
        backend: noise backend for this pipeline's own noise.
        dtype: the classifier's precision; its inputs are cast to it and its logits back to float32.
        fused: for ``diffsmooth`` and ``dds`` with a ``NormalizedClassifier`` and an epsilon-predicting
            denoiser, go from the UNet's output to the classifier network's B*m inputs in one kernel
            (:func:`~diffsmooth_fast.ops.denoise_replicate`: denoise, clamp, local noise, normalisation) instead of
            four tensor passes. Same numbers up to float32 rounding (tested); other cases ignore it.
        cuda_graphs: run the networks through CUDA graphs captured per batch shape (:mod:`~diffsmooth_fast.engine.graphs`):
            the denoiser (its UNet, with the scalings around it) and the classifier, each a pure function of its
            input tensor, are graphed separately, while the noise this pipeline draws itself (fresh local noise,
            the reverse process, at Philox offsets that change with every batch) stays outside the graphs, so
            the results are those of the eager path. Multistep graphs its classifier only (its UNet calls change
            step by step). A no-op for CPU tensors. May be switched on or off between calls.
        channels_last: hold both networks and feed them their inputs in channels_last (NHWC) memory format, which
            cuDNN's half-precision convolutions prefer. Converts the networks' parameters in place. Same function.
        autocast: run both networks under ``torch.autocast`` in this dtype (float16 or bfloat16) with their weights
            left in float32 (``dtype`` should then be float32): the alternative to holding the models in half
            precision, for parity checks; GroupNorm and the attention softmax stay in float32 either way.
    """

    accepts_positions = True

    def __init__(self, config: MethodConfig, classifier: nn.Module, denoiser: Denoiser | None = None, *,
                 seed: int = 0, backend: str | None = "auto", dtype: torch.dtype = torch.float32,
                 fused: bool = False, cuda_graphs: bool = False, channels_last: bool = False,
                 autocast: torch.dtype | None = None) -> None:
        super().__init__()
        if autocast not in (None, torch.float16, torch.bfloat16):
            raise ValueError(f"autocast must be torch.float16 or torch.bfloat16, got {autocast!r}")
        if config.uses_denoiser and denoiser is None:
            raise ValueError(f"method {config.method} needs a diffusion model (--denoiser)")
        if not config.uses_denoiser and denoiser is not None:
            raise ValueError(f"method {config.method} uses no diffusion model; drop --denoiser")
        if denoiser is not None and denoiser.flags.class_cond:
            raise ValueError("the diffusion model is class-conditional; DiffSmooth purifies with an unconditional one")
        self.config, self.classifier, self.denoiser = config, classifier, denoiser
        self.seed, self.backend, self.dtype = seed, backend, dtype
        self.fused = fused and config.method in ("diffsmooth", "dds") and isinstance(classifier, NormalizedClassifier) \
            and not denoiser.flags.predict_xstart
        self.reverse = None
        if config.method == "multistep":
            from ..diffusion.reverse import ReverseProcess  # only multistep needs it

            self.reverse = ReverseProcess(denoiser, config.sigma, config.reverse_steps)
        self._fixed: dict[tuple, torch.Tensor] = {}
        self.cuda_graphs = cuda_graphs
        self.channels_last, self.autocast = channels_last, autocast
        if channels_last:
            for net in (classifier, denoiser):
                if net is not None:
                    net.to(memory_format=torch.channels_last)
        pool = GraphPool()  # the two networks run one after the other on one stream: one pool (graphs.py)
        self._graphed_denoise = GraphedFunction(self._unet_eps if self.fused else self._denoise, name="denoiser",
                                                pool=pool)
        self._graphed_classify = GraphedFunction(self._net_logits if self.fused else self._classify_eager,
                                                 name="classifier", pool=pool)

    def forward(self, x_noisy: torch.Tensor, positions: SamplePositions | None = None) -> torch.Tensor:
        """Scores [B, K] (float32) of x_noisy [B, C, H, W]; ``positions`` says where the batch sits in the run."""
        cfg = self.config
        if positions is None and (cfg.method == "multistep" or (cfg.uses_local_noise and cfg.local_noise == "fresh")):
            raise ValueError(f"method {cfg.method} with its own per-sample noise must be called with positions=")
        with torch.no_grad():
            if cfg.method == "multistep":
                return self._multistep(x_noisy, positions)
            if self.fused:
                return self._fused(x_noisy, positions)
            x = self._run(self._graphed_denoise, x_noisy) if cfg.uses_denoiser else x_noisy
            if not cfg.uses_local_noise:
                return self._classify(x)
            b, m = x.shape[0], cfg.m
            copies = x.unsqueeze(1) + cfg.effective_local_sigma * self._local_noise(x, positions)  # [B, m, C, H, W]
            logits = self._classify(copies.flatten(0, 1))  # one classifier call on B*m inputs
            return torch.softmax(logits, dim=-1).view(b, m, -1).mean(dim=1)

    def _fused(self, x_noisy: torch.Tensor, positions: SamplePositions | None) -> torch.Tensor:
        """diffsmooth / dds with the denoise, local noise and input normalisation in one kernel."""
        cfg, den = self.config, self.denoiser
        c = den.coefficients(cfg.sigma)
        x_t = noisy_to_model_input(x_noisy, c.sqrt_alpha_bar)  # as Denoiser.forward
        eps = self._run(self._graphed_denoise, x_t)
        m = cfg.m if cfg.uses_local_noise else 1
        sigma = cfg.effective_local_sigma
        noise: dict[str, object] = {}
        if sigma > 0 and cfg.local_noise == "fresh":
            numel = math.prod(x_noisy.shape[1:])  # the positions _local_noise draws
            noise = {"seed": positions.seed, "offset": positions.first * m * numel,
                     "stream": classifier_stream(positions.idx, positions.phase, KIND_LOCAL)}
        elif sigma > 0:
            noise = {"local_noise": self._local_noise(x_noisy, positions).float()}
        norm = self.classifier.normalization
        inputs = denoise_replicate(x_t, eps, c.sqrt_recip_alpha_bar, c.sqrt_recipm1_alpha_bar, m, sigma,
                                   mean=norm.mean, std=norm.std, dtype=self.dtype, channels_last=self.channels_last,
                                   backend=self._backend(x_noisy), **noise)
        logits = self._run(self._graphed_classify, inputs)
        if not cfg.uses_local_noise:
            return logits
        return torch.softmax(logits, dim=-1).view(x_noisy.shape[0], m, -1).mean(dim=1)

    def _run(self, graphed: GraphedFunction, x: torch.Tensor) -> torch.Tensor:
        return graphed(x) if self.cuda_graphs else graphed.fn(x)

    # The graphed functions: each a pure function of its input tensor (sigma, t* and the weights are fixed).
    def _denoise(self, x_noisy: torch.Tensor) -> torch.Tensor:
        with self._precision(x_noisy):
            return self.denoiser(self._layout(x_noisy), self.config.sigma)

    def _unet_eps(self, x_t: torch.Tensor) -> torch.Tensor:
        with self._precision(x_t):
            return self.denoiser.model_output(self._layout(x_t), self.denoiser.coefficients(self.config.sigma).t)

    def _classify_eager(self, x: torch.Tensor) -> torch.Tensor:
        with self._precision(x):
            return self.classifier(self._layout(x.to(self.dtype))).float()

    def _net_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        with self._precision(inputs):
            return self.classifier.net(self._layout(inputs)).float()

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """x in the networks' memory format (a no-op when it already is, e.g. denoise_replicate's output)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def _precision(self, x: torch.Tensor) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        # No weight-cast cache: it lives for one autocast context anyway, and CUDA graph capture requires it off.
        return torch.autocast(x.device.type, dtype=self.autocast, cache_enabled=False)

    def compile_networks(self, **options: object) -> PurifiedClassifier:
        """Compile the UNet and the classifier network with ``torch.compile(**options)`` (e.g. ``mode=``,
        ``backend=``); the first call of each batch shape then compiles (minutes for a full-size UNet). Compatible
        with ``cuda_graphs`` as long as ``options`` do not ask torch.compile for CUDA graphs of its own
        (``mode="reduce-overhead"``). Returns self."""
        options.setdefault("dynamic", False)  # certification sees two or three batch shapes: specialise on each
        if self.denoiser is not None:
            # Inductor writes its own fused norm kernels, and tracing through the Triton op's Python dispatch
            # would only add graph breaks: compiled UNets run the unfused modules.
            if any(getattr(m, "fused_backend", None) is not None for m in self.denoiser.unet.modules()):
                log.info("torch.compile: the UNet's fused norms are switched off (inductor fuses them itself)")
                self.denoiser.unet.fuse_group_norms(None)
            self.denoiser.unet.forward = torch.compile(self.denoiser.unet.forward, **options)
        net = self.classifier.net if isinstance(self.classifier, NormalizedClassifier) else self.classifier
        net.forward = torch.compile(net.forward, **options)
        return self

    def _classify(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self._graphed_classify, x)

    def _local_noise(self, x: torch.Tensor, positions: SamplePositions | None) -> torch.Tensor:
        """[m, C, H, W] (fixed, broadcast over the batch) or [B, m, C, H, W] (fresh) standard normal noise."""
        cfg, shape = self.config, tuple(x.shape[1:])
        if cfg.local_noise != "fresh":
            key = (shape, x.device, cfg.local_noise)
            if key not in self._fixed:  # drawn once per run (per shape and device), then reused for every sample
                if cfg.local_noise == "reference":
                    gen = torch.Generator().manual_seed(REFERENCE_LOCAL_SEED)
                    noise = torch.randn((cfg.m, *shape), generator=gen)
                else:
                    stream = classifier_stream(2**32 - 1, 0, KIND_FIXED)  # no image's: shared by all
                    noise = gaussian_noise((cfg.m, *shape), self.seed, 0, stream=stream, backend=self._backend(x),
                                           device=x.device)
                self._fixed[key] = noise.to(device=x.device, dtype=x.dtype)
            return self._fixed[key]
        numel = math.prod(shape)
        return gaussian_noise((x.shape[0], cfg.m, *shape), positions.seed, positions.first * cfg.m * numel,
                              stream=classifier_stream(positions.idx, positions.phase, KIND_LOCAL),
                              backend=self._backend(x), device=x.device).to(x.dtype)

    def _multistep(self, x_noisy: torch.Tensor, positions: SamplePositions) -> torch.Tensor:
        b, k = x_noisy.shape[0], self.config.reverse_runs
        runs = x_noisy.repeat_interleave(k, dim=0)  # [B*K, C, H, W], run r of sample j at row j*K + r
        x = self.reverse(runs, positions, k, self._backend(x_noisy))
        logits = self._classify(x).view(b, k, -1)
        votes = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).sum(1).float()  # [B, K classes]
        # argmax hides NaN; carry it into the scores so Smooth's check sees it (on the device: no sync here).
        return votes.masked_fill(~torch.isfinite(logits).all(-1).all(-1, keepdim=True), float("nan"))

    def _backend(self, x: torch.Tensor) -> str:
        return resolve_backend(self.backend, x.device.type)
