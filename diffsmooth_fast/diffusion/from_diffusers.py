"""Denoisers from diffusers: a ``UNet2DModel`` saved with ``save_pretrained`` and its scheduler's config.

Two layouts are read, both offline (nothing is downloaded):

* a pipeline folder, as ``DDPMPipeline.save_pretrained`` writes it and as ``google/ddpm-cifar10-32`` is laid out:
  ``unet/config.json`` (+ weights) and ``scheduler/scheduler_config.json``;
* one folder holding the model's ``config.json`` (+ weights) and a ``scheduler_config.json``.

The training schedule is the scheduler's own ``alphas_cumprod`` (built by diffusers from the config, so every
beta schedule it knows is read as it computes it), t* is chosen on it by the rule of OpenAI models (Algorithm 1),
and the one-shot denoise is the scheduler's ``pred_original_sample`` at t*: its ``prediction_type`` (epsilon,
sample, v_prediction) and ``clip_sample`` / ``clip_sample_range`` are followed. Dynamic thresholding is refused.
Spec on the command line: ``--denoiser diffusers:FOLDER``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.loading import first_line
from .parametrization import Parametrization
from .schedule import TabulatedSchedule

log = logging.getLogger("diffsmooth_fast")

PREFIX = "diffusers:"
_PREDICTIONS = ("epsilon", "sample", "v_prediction")
# diffusers' variance_type -> the reverse process's variance (only multi-step sampling reads it)
_VARIANCES = {None: "fixed_small", "fixed_small": "fixed_small", "fixed_small_log": "fixed_small",
              "fixed_large": "fixed_large", "fixed_large_log": "fixed_large", "learned_range": "learned_range",
              "learned": "learned"}


def diffusers_folder(spec: str | os.PathLike[str] | None) -> str | None:
    """FOLDER of a ``diffusers:FOLDER`` spec, else None."""
    if isinstance(spec, str) and spec.startswith(PREFIX):
        return spec[len(PREFIX):]
    return None


def find_configs(folder: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(the UNet's folder, the scheduler's config file) in a pipeline folder or a single folder.

    Raises:
        ValueError: the folder is missing or holds neither layout (saying what it looked for).
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"diffusers folder {root}: no such directory")
    for unet_dir, scheduler in ((root / "unet", root / "scheduler" / "scheduler_config.json"),
                                (root, root / "scheduler_config.json")):
        if (unet_dir / "config.json").is_file():
            if not scheduler.is_file():
                raise ValueError(f"diffusers folder {root}: found the model's {unet_dir / 'config.json'} but no "
                                 f"{scheduler} (the scheduler's config: save it with scheduler.save_pretrained)")
            return unet_dir, scheduler
    raise ValueError(f"diffusers folder {root}: neither unet/config.json (a pipeline folder) nor config.json (a "
                     f"model folder); save the UNet2DModel with save_pretrained")


class DiffusersUNet(nn.Module):
    """A diffusers ``UNet2DModel`` called as the project's UNet: ``(x_t [B, C, H, W], steps [B], y [B] or None)``
    -> [B, out_channels, H, W] in x_t's dtype (the network runs in its own dtype)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        return self.model(x.to(dtype), timesteps, class_labels=y).sample.to(x.dtype)

    def fuse_group_norms(self, backend: str | None = "auto") -> DiffusersUNet:
        """No fused norms for diffusers' own modules: they run as diffusers writes them. Returns self."""
        return self


def load_diffusers(folder: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32,
                   device: torch.device = torch.device("cpu")) -> tuple[DiffusersUNet, Parametrization]:
    """The network (in eval mode, on ``device`` in ``dtype``) and how its steps and outputs relate to x0, read
    from ``folder`` offline.

    Raises:
        ValueError: diffusers is not installed, the folder holds no model or scheduler config, the model is not a
            pixel-space ``UNet2DModel``, or the scheduler has no DDPM schedule or thresholds dynamically.
    """
    try:
        import diffusers
    except ImportError:
        raise ValueError("a diffusers denoiser needs the diffusers package: pip install diffusers "
                         "(or pip install \".[diffusers]\")") from None
    unet_dir, scheduler_file = find_configs(folder)
    model_config = _read_json(unet_dir / "config.json")
    kind = model_config.get("_class_name", "UNet2DModel")
    if kind != "UNet2DModel":
        raise ValueError(f"diffusers model {unet_dir} is a {kind}; a denoiser must be a pixel-space UNet2DModel "
                         f"(latent or text-conditioned UNets do not denoise images)")
    if model_config.get("time_embedding_type", "positional") == "fourier":
        raise ValueError(f"diffusers model {unet_dir} embeds noise levels (fourier, score-SDE), not DDPM steps")
    scheduler_config = _read_json(scheduler_file)
    scheduler = _scheduler(diffusers, scheduler_config, scheduler_file)
    config = scheduler.config
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in _PREDICTIONS:
        raise ValueError(f"diffusers scheduler {scheduler_file}: prediction_type {prediction!r}, expected one of "
                         f"{', '.join(_PREDICTIONS)}")
    if config.get("thresholding", False):
        raise ValueError(f"diffusers scheduler {scheduler_file}: dynamic thresholding is not supported (set "
                         f"thresholding false, or clip_sample)")
    variance = config.get("variance_type")
    if variance not in _VARIANCES:
        raise ValueError(f"diffusers scheduler {scheduler_file}: unknown variance_type {variance!r}")
    clip = float(config.get("clip_sample_range", 1.0)) if config.get("clip_sample", False) else None
    abar = np.asarray(scheduler.alphas_cumprod.detach().cpu().double().numpy())
    name = f"{type(scheduler).__name__} {config.get('beta_schedule', 'trained_betas')}"
    schedule = TabulatedSchedule(abar, name)
    try:
        # Loaded straight in the run's dtype (diffusers warns about a cast after loading); no accelerate needed.
        model = diffusers.UNet2DModel.from_pretrained(os.fspath(unet_dir), local_files_only=True, torch_dtype=dtype,
                                                      low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as exc:
        first = first_line(exc)
        raise ValueError(f"diffusers model {unet_dir}: cannot load ({first})") from None
    in_ch, out_ch = model.config.in_channels, model.config.out_channels
    if out_ch not in (in_ch, 2 * in_ch) or (out_ch == 2 * in_ch) != (variance in ("learned", "learned_range")):
        raise ValueError(f"diffusers model {unet_dir} gives {out_ch} channels for {in_ch}, which the scheduler's "
                         f"variance_type {variance!r} does not explain")
    class_cond = model.config.get("num_class_embeds") is not None or model.config.get("class_embed_type") is not None
    model = model.to(device).eval().requires_grad_(False)
    param = Parametrization(schedule, prediction, clip, class_cond, _VARIANCES[variance])
    log.info("denoiser %s: diffusers UNet2DModel, %s", folder, param.describe())
    return DiffusersUNet(model), param


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON config ({exc})") from None


def _scheduler(diffusers: object, config: dict, path: Path) -> object:
    """The scheduler the config names, built by diffusers (its alphas_cumprod is the training schedule)."""
    name = config.get("_class_name", "DDPMScheduler")
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(f"diffusers scheduler {path}: unknown class {name!r} in this diffusers")
    scheduler = cls.from_config(config)
    if not torch.is_tensor(getattr(scheduler, "alphas_cumprod", None)):
        raise ValueError(f"diffusers scheduler {path}: {name} describes no DDPM schedule (alphas_cumprod); "
                         f"use the DDPM/DDIM scheduler the model was trained with")
    return scheduler
