"""Kernels of diffsmooth_fast: each has a plain-PyTorch reference (reference.py) and fast backends."""

from .dispatch import BACKENDS, resolve_backend, unavailable_reason
from .noise import gaussian_noise

__all__ = ["BACKENDS", "gaussian_noise", "resolve_backend", "unavailable_reason"]
