"""Reading an OpenAI diffusion checkpoint: a ``torch.save`` file (memory-mapped, ``weights_only``), a
``.safetensors`` file or a state dict passed in, as a state dict of tensors; and the flags it is loaded with."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from ..models.loading import load_weights
from .infer_flags import ResolvedFlags, resolve_flags

Checkpoint = str | os.PathLike[str] | Mapping[str, torch.Tensor]


def read_openai_flags(checkpoint: Checkpoint, flags: Mapping[str, object] | None = None, defaults: str | None = None,
                      *, trust_checkpoint: bool = False) -> ResolvedFlags:
    """The flags :meth:`Denoiser.from_openai` would load ``checkpoint`` with, and where each came from (the file is
    memory-mapped: only its tensor shapes are read)."""
    what, state = read_state(checkpoint, trust_checkpoint)
    return resolve_flags({k: tuple(v.shape) for k, v in state.items()}, dict(flags or {}), defaults, what=what)


def read_state(checkpoint: Checkpoint, trust_checkpoint: bool) -> tuple[str, Mapping[str, torch.Tensor]]:
    """(how errors name it, the state dict) of a file (torch or ``.safetensors``) or a state dict passed in.

    Raises:
        ValueError: a missing or unreadable file, an optimizer state, or anything but a state dict of tensors.
    """
    if not isinstance(checkpoint, (str, os.PathLike)):
        return "diffusion checkpoint", _state_dict(checkpoint, "diffusion checkpoint")
    what = f"diffusion checkpoint {os.fspath(checkpoint)}"
    return what, _state_dict(load_weights(checkpoint, what="diffusion checkpoint", trust_checkpoint=trust_checkpoint),
                             what)


def _state_dict(obj: object, what: str) -> Mapping[str, torch.Tensor]:
    """The checkpoint as a state dict of tensors, or a ValueError saying what the file is instead."""
    if isinstance(obj, Mapping) and "state" in obj and "param_groups" in obj:
        raise ValueError(
            f"{what} is an optimizer state (OpenAI's opt*.pt), not model weights: load the model*.pt or "
            f"ema_*.pt file saved at the same step"
        )
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        keys = ", ".join(map(str, list(obj)[:4])) if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{what} is not a state dict of tensors (OpenAI's model or EMA file); found {keys}")
    return obj
