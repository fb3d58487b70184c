"""One-shot denoising with a pretrained diffusion model (DiffSmooth's Algorithms 1 and 2).

A noisy image x + sigma*delta in pixel units is read as the diffusion's x_t at the step t* whose noise level
matches sigma, and the model's prediction (noise, x0 or v) gives x0 in one step, with no sampling noise at all
(the reference's ``p_sample`` draws a ``randn_like`` that it then discards). OpenAI's improved-/guided-diffusion
files load into the project's UNet (flags given or read from the file); diffusers' ``UNet2DModel`` folders load
through :mod:`~diffsmooth_fast.diffusion.from_diffusers`.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from dataclasses import dataclass

import torch
from torch import nn

from ..checks import check_int
from ..models.unet import UNet
from .from_diffusers import load_diffusers
from .infer_flags import resolve_flags
from .openai_files import Checkpoint, read_state
from .openai_flags import OpenAIFlags, layout_mismatch, preset
from .parametrization import PREDICTIONS, Parametrization
from .schedule import Schedule

log = logging.getLogger("diffsmooth_fast")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class StepCoefficients:
    """The scalars of one step t, as float64 values (a kernel rounds them to float32, as OpenAI's code does)."""

    t: int  # index into the (respaced) schedule
    model_t: float  # what the network receives: the original step, times 1000/steps if rescale_timesteps
    sqrt_alpha_bar: float  # sqrt(abar_t)
    sqrt_recip_alpha_bar: float  # sqrt(1 / abar_t)
    sqrt_recipm1_alpha_bar: float  # sqrt(1 / abar_t - 1)
    sqrt_one_minus_alpha_bar: float  # sqrt(1 - abar_t)


def step_coefficients(schedule: Schedule, t: int) -> StepCoefficients:
    """The coefficients of step t of ``schedule`` (0 <= t < len(schedule))."""
    check_int("timestep", t, 0, below=len(schedule))
    abar = float(schedule.alphas_cumprod[t])
    return StepCoefficients(t, schedule.model_timestep(t), math.sqrt(abar), math.sqrt(1.0 / abar),
                            math.sqrt(1.0 / abar - 1), math.sqrt(1.0 - abar))


def noisy_to_model_input(x_noisy: torch.Tensor, sqrt_alpha_bar: float) -> torch.Tensor:
    """x_t = sqrt(abar) * (2 x_noisy - 1): pixels ([0, 1] plus noise, not clamped) to the diffusion's x_t."""
    return sqrt_alpha_bar * (2 * x_noisy - 1)


def eps_to_denoised(x_t: torch.Tensor, eps: torch.Tensor, c: StepCoefficients) -> torch.Tensor:
    """x0 = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps, clamped to [-1, 1], back to pixels [0, 1]."""
    return x0_to_pixels(predict_x0(x_t, eps, c, "epsilon"))


def predict_x0(x_t: torch.Tensor, out: torch.Tensor, c: StepCoefficients, prediction: str) -> torch.Tensor:
    """x0 (in [-1, 1] image units, not clamped) from the network's output at the step of ``c``:
    ``epsilon``: sqrt(1/abar) x_t - sqrt(1/abar - 1) eps; ``sample``: the output; ``v_prediction``:
    sqrt(abar) x_t - sqrt(1 - abar) v."""
    if prediction == "epsilon":
        return c.sqrt_recip_alpha_bar * x_t - c.sqrt_recipm1_alpha_bar * out
    if prediction == "sample":
        return out
    if prediction == "v_prediction":
        return c.sqrt_alpha_bar * x_t - c.sqrt_one_minus_alpha_bar * out
    raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")


def x0_to_pixels(x0: torch.Tensor, clip: float | None = 1.0) -> torch.Tensor:
    """Clamp a predicted x0 to [-clip, clip] (not at all if None) and map it from [-1, 1] to pixels [0, 1]."""
    return ((x0 if clip is None else x0.clamp(-clip, clip)) + 1) / 2


class Denoiser(nn.Module):
    """A pretrained diffusion UNet used as a one-shot denoiser.

    ``den(x_noisy, sigma)`` maps x_noisy [B, C, H, W] (images in [0, 1] plus N(0, sigma^2) noise) to denoised
    images [B, C, H, W] in [0, 1] (unclamped when a diffusers scheduler says ``clip_sample=False``). Build one
    with :meth:`from_openai`, :meth:`from_preset` or :meth:`from_diffusers`.

    For speed on a GPU the model may run in channels_last (``den.to(memory_format=torch.channels_last)`` and
    channels_last inputs: the same function, outputs in channels_last) and/or with float32 weights under
    ``torch.autocast`` (convolutions and attention in the autocast dtype, GroupNorm in float32, outputs in the
    input's dtype); tests/test_unet.py checks both against the reference.

    Args:
        unet: the network, its weights loaded: ``unet(x_t [B, C, H, W], steps [B], y [B] or None)`` -> [B, C or
            2C, H, W] (the project's :class:`~diffsmooth_fast.models.unet.UNet` or a diffusers adapter).
        flags: the OpenAI flags it was built with (None for other sources).
        parametrization: how steps and outputs relate to x0; derived from ``flags`` when None.
    """

    def __init__(self, unet: nn.Module, flags: OpenAIFlags | None = None, *,
                 parametrization: Parametrization | None = None) -> None:
        super().__init__()
        if (flags is None) == (parametrization is None):
            raise ValueError("give the OpenAI flags or a Parametrization (exactly one)")
        self.unet = unet
        self.flags = flags
        self.parametrization = parametrization or Parametrization.from_flags(flags)
        self.schedule = self.parametrization.schedule
        self.flag_sources: dict[str, str] = {}  # OpenAI flag -> where it came from (from_openai fills it)
        device = next(unet.parameters()).device
        # OpenAI's _WrappedModel maps a (respaced) step to its original step before the network sees it.
        self.register_buffer("timestep_map", torch.tensor(self.schedule.timestep_map, device=device), persistent=False)
        abar = torch.tensor(self.schedule.alphas_cumprod, dtype=torch.float64)
        # float64 -> float32 after the square roots, as OpenAI's _extract_into_tensor does.
        self.register_buffer("sqrt_recip_alpha_bar", (1.0 / abar).sqrt().float().to(device), persistent=False)
        self.register_buffer("sqrt_recipm1_alpha_bar", (1.0 / abar - 1).sqrt().float().to(device), persistent=False)

    @classmethod
    def from_openai(
        cls,
        checkpoint: Checkpoint,
        *,
        defaults: str | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        trust_checkpoint: bool = False,
        **flags: object,
    ) -> Denoiser:
        """Load an OpenAI improved-/guided-diffusion model or EMA file (``.pt`` or ``.safetensors``) as it is.

        Flags the tensor shapes fix (widths, blocks, attention levels, learn_sigma, resblock_updown,
        use_scale_shift_norm, class_cond) are read from the file; the others come from the flags given, else from
        the preset of a known checkpoint with the same layout (improved-diffusion's
        ``cifar10_uncond_50M_500K.pt``, guided-diffusion's ``256x256_diffusion_uncond.pt``), else from the
        ``defaults`` repository (see :mod:`~diffsmooth_fast.diffusion.infer_flags`). Where each flag came from is
        logged and kept in ``den.flag_sources``.

        Args:
            checkpoint: path of the file (``torch.save`` of the state dict, or safetensors), or the state dict.
            defaults: ``"guided"`` or ``"improved"``: whose defaults fill the flags nothing else gives; None (the
                default): the file must be a known checkpoint or ``diffusion_steps`` and ``noise_schedule`` given.
            dtype: weights and activations: float32, float16 or bfloat16 (GroupNorm and softmax run in float32).
            device: where the model lives.
            trust_checkpoint: allow a file that needs arbitrary code to unpickle.
            **flags: OpenAI's flags by OpenAI's names (``image_size=32, num_channels=128, ...``).

        Tensors are copied (and converted) one at a time from the memory-mapped file into a meta-initialised
        model, so memory holds one copy of the weights; the model never aliases the file, which a training run
        may rewrite, nor a state dict passed in. ``num_heads``, ``num_head_channels``,
        ``use_new_attention_order``, ``predict_xstart`` and the diffusion flags change no tensor shape, so a
        wrong value given there cannot be detected from the file: it loads and gives wrong outputs.

        Raises:
            ValueError: an unknown flag (with close matches), a given flag the file contradicts (both values
                named), required flags missing, an optimizer file, or a file that is no OpenAI UNet.
        """
        what, state = read_state(checkpoint, trust_checkpoint)
        resolved = resolve_flags({k: tuple(v.shape) for k, v in state.items()}, flags, defaults, what=what)
        log.info("%s", resolved.summary())
        den = cls.from_flags(resolved.flags, state, dtype=dtype, device=device, what=what)
        den.flag_sources = resolved.sources
        return den

    @classmethod
    def from_diffusers(
        cls,
        folder: str | os.PathLike[str],
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Denoiser:
        """Load a diffusers ``UNet2DModel`` and its scheduler's training schedule from ``folder`` (a pipeline
        folder with ``unet/`` and ``scheduler/``, or one folder holding both configs), offline. The scheduler's
        ``prediction_type`` (epsilon, sample, v_prediction), ``clip_sample`` and ``clip_sample_range`` are
        followed; see :mod:`~diffsmooth_fast.diffusion.from_diffusers`.

        Raises:
            ValueError: diffusers missing, a folder without the configs, or a model/scheduler this cannot use.
        """
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {dtype!r}")
        unet, parametrization = load_diffusers(folder, dtype=dtype, device=torch.device(device))
        return cls(unet, parametrization=parametrization)

    @classmethod
    def from_preset(
        cls,
        name: str,
        checkpoint: Checkpoint,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        trust_checkpoint: bool = False,
    ) -> Denoiser:
        """Load a named checkpoint: ``"cifar10"`` (improved-diffusion's ``cifar10_uncond_50M_500K.pt``) or
        ``"imagenet"`` (guided-diffusion's ``256x256_diffusion_uncond.pt``)."""
        return cls.from_flags(preset(name), checkpoint, dtype=dtype, device=device, trust_checkpoint=trust_checkpoint)

    @classmethod
    def from_flags(
        cls,
        flags: OpenAIFlags,
        checkpoint: Checkpoint,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        trust_checkpoint: bool = False,
        what: str | None = None,
    ) -> Denoiser:
        """Load ``checkpoint`` into the model that ``flags`` describe, all of them as given (nothing inferred;
        a file that does not fit is refused naming the flag that is probably wrong). See :meth:`from_openai`."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {dtype!r}")
        device = torch.device(device)
        named, state = read_state(checkpoint, trust_checkpoint)
        what = what or named
        with torch.device("meta"):  # no memory: shapes only, filled from the checkpoint below
            unet = UNet(flags.unet_config())
        expected = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
        problem = layout_mismatch({k: tuple(v.shape) for k, v in state.items()}, expected, flags)
        if problem:
            raise ValueError(f"{what} does not fit the flags: {problem}")
        # One tensor at a time from the memory-mapped file: never two full copies in memory. Always a copy: a file
        # rewritten in place while mapped (torch.save to the same path during training) would crash the process.
        for name, _ in list(unet.named_parameters()):
            owner, _, leaf = name.rpartition(".")
            value = state[name].to(device=device, dtype=dtype, copy=True)
            setattr(unet.get_submodule(owner), leaf, nn.Parameter(value, requires_grad=False))
        return cls(unet.eval(), flags)

    @property
    def dtype(self) -> torch.dtype:
        """The precision of the network's weights and activations."""
        return next(self.unet.parameters()).dtype

    @property
    def prediction(self) -> str:
        """What the network predicts: ``epsilon``, ``sample`` (x0) or ``v_prediction``."""
        return self.parametrization.prediction

    @property
    def clip(self) -> float | None:
        """x0 is clamped to [-clip, clip] before the map to pixels (None: not clamped)."""
        return self.parametrization.clip

    @property
    def class_cond(self) -> bool:
        """Whether the network takes class labels."""
        return self.parametrization.class_cond

    @property
    def fuses_denoise(self) -> bool:
        """Whether the one-shot denoise is what ``ops.denoise_replicate`` computes from the network's output:
        predicted noise, x0 clamped to [-1, 1]. Otherwise the engine takes the plain path."""
        return self.prediction == "epsilon" and self.clip == 1.0

    def timestep(self, sigma: float) -> int:
        """t* for noise std ``sigma`` (pixel units, > 0): Algorithm 1 on the model's own schedule."""
        return self.schedule.timestep(sigma)

    def coefficients(self, sigma: float) -> StepCoefficients:
        """The step t* for ``sigma`` and its scalars, for kernels that fuse the scaling around the network."""
        return step_coefficients(self.schedule, self.timestep(sigma))

    def model_output(self, x_t: torch.Tensor, t: int | torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The network's first C output channels (eps, x0 or v: ``prediction``) at steps t, in x_t's dtype.

        Args:
            x_t: [B, C, H, W] diffusion inputs (roughly in [-1, 1] scaled by sqrt(abar)).
            t: step index into the schedule, an int or a [B] integer tensor.
            y: [B] class labels, only for class-conditional models.
        """
        t = self._steps(t, x_t)
        ts = self.timestep_map[t]
        if self.schedule.rescale_timesteps:
            ts = ts.float() * (1000.0 / self.schedule.num_steps)  # in float32, as OpenAI's _WrappedModel
        if (y is None) != (not self.class_cond):
            raise ValueError("pass class labels y [B] iff the model is class-conditional (class_cond=True)")
        return self.unet(x_t, ts, y)[:, : x_t.shape[1]]

    def eps(self, x_t: torch.Tensor, t: int | torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted noise eps [B, C, H, W] at steps t (derived when the model predicts x0 or v)."""
        out = self.model_output(x_t, t, y)
        if self.prediction == "epsilon":
            return out
        t = self._steps(t, x_t)
        recip, recipm1 = (b[t].reshape(-1, 1, 1, 1) for b in (self.sqrt_recip_alpha_bar, self.sqrt_recipm1_alpha_bar))
        if self.prediction == "v_prediction":  # eps = sqrt(abar) v + sqrt(1 - abar) x_t
            return (out + recipm1 * x_t) / recip
        return (recip * x_t - out) / recipm1

    def forward(self, x_noisy: torch.Tensor, sigma: float, y: torch.Tensor | None = None) -> torch.Tensor:
        """Algorithm 2: denoise x_noisy [B, C, H, W] (pixels plus N(0, sigma^2) noise) -> [B, C, H, W] in [0, 1]."""
        if x_noisy.dim() != 4:
            raise ValueError(f"x_noisy must be a batch [B, C, H, W], got shape {list(x_noisy.shape)}")
        c = self.coefficients(sigma)
        x_t = noisy_to_model_input(x_noisy, c.sqrt_alpha_bar)
        out = self.model_output(x_t, c.t, y)
        return x0_to_pixels(predict_x0(x_t, out, c, self.prediction), self.clip)

    def _steps(self, t: int | torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        if isinstance(t, numbers.Integral) and not isinstance(t, bool):  # numpy integers too
            t = check_int("timestep", int(t), 0, below=len(self.schedule))
            return torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
        if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.shape != (x_t.shape[0],):
            raise ValueError(f"t must be an int or an integer tensor [B] with B = {x_t.shape[0]}")
        return t.to(device=x_t.device, dtype=torch.long)
