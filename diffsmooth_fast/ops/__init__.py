"""Kernels of diffsmooth_fast: each has a plain-PyTorch reference (reference.py) and fast backends."""

from .denoise import denoise_replicate
from .dispatch import BACKENDS, resolve_backend, unavailable_reason
from .groupnorm import group_norm_silu
from .noise import gaussian_noise
from .noisy_input import noisy_input
from .vote import vote

__all__ = ["BACKENDS", "denoise_replicate", "gaussian_noise", "group_norm_silu", "noisy_input", "resolve_backend",
           "unavailable_reason", "vote"]
