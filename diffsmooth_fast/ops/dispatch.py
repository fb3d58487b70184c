"""Backend selection for the project's kernels, resolved once per (request, device type).

Backends: ``cuda`` (diffsmooth_fast._C_cuda), ``triton``, ``cpp`` (diffsmooth_fast._C, CPU with OpenMP) and
``torch`` (the plain-PyTorch reference). ``auto`` picks the fastest one available for the device and logs
a fallback; an explicit request that cannot be met raises. The environment variable DIFFSMOOTH_BACKEND
overrides ``auto``.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os

import torch

log = logging.getLogger("diffsmooth_fast")

BACKENDS = ("cuda", "triton", "cpp", "torch")
ENV_VAR = "DIFFSMOOTH_BACKEND"


@functools.cache
def _extension(name: str) -> str | None:
    """Import diffsmooth_fast.<name> (which registers its torch ops); the reason it failed, or None."""
    try:
        importlib.import_module(f"diffsmooth_fast.{name}")
    except ImportError as exc:
        return str(exc)
    if name == "_C":
        _register_fakes()
    return None


def _register_fakes() -> None:
    # Shape-only implementations so the ops trace under torch.compile and FakeTensor (opcheck).
    @torch.library.register_fake("diffsmooth_fast::gaussian_noise_")
    def _(out: torch.Tensor, seed: int, offset: int, stream: int) -> None:
        return None

    @torch.library.register_fake("diffsmooth_fast::noisy_input_")
    def _(out, x, noise, sigma, sqrt_abar, affine, seed, offset, stream) -> None:
        return None

    @torch.library.register_fake("diffsmooth_fast::denoise_replicate_")
    def _(out, x_t, eps, local_noise, mean, std, m, sqrt_recip_abar, sqrt_recipm1_abar, local_sigma, seed, offset,
          stream) -> None:
        return None

    @torch.library.register_fake("diffsmooth_fast::vote_")
    def _(counts, logits, m) -> None:
        return None


@functools.cache
def _triton_problem() -> str | None:
    try:
        importlib.import_module("triton")
    except ImportError as exc:
        return f"triton is not installed ({exc})"
    return None


def unavailable_reason(backend: str, device_type: str) -> str | None:
    """Why ``backend`` cannot run on ``device_type`` ('cpu', 'cuda', ...), or None when it can."""
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)} or auto"
    if backend == "torch":
        return None
    if backend == "cpp":
        if device_type != "cpu":
            return f"the cpp backend runs on CPU tensors, not {device_type}"
        problem = _extension("_C")
        return None if problem is None else f"the C++ extension is not built ({problem}); reinstall the package"
    if backend == "cuda":
        if device_type != "cuda":
            return f"the cuda backend runs on CUDA tensors, not {device_type}"
        problem = _extension("_C") or _extension("_C_cuda")
        return None if problem is None else f"the CUDA extension is not built ({problem})"
    # triton: GPU tensors, or CPU tensors under the interpreter (TRITON_INTERPRET=1, used by the tests).
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "triton runs on CPU tensors only with TRITON_INTERPRET=1 set before triton is imported"
    return _triton_problem()


@functools.cache
def resolve_backend(requested: str | None, device_type: str) -> str:
    """The backend to use for tensors on ``device_type``; ``requested`` is a name, ``auto`` or None."""
    choice = (requested or "auto").strip().lower()
    if choice == "auto":
        choice = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if choice != "auto":
        problem = unavailable_reason(choice, device_type)
        if problem is not None:
            raise ValueError(f"backend {choice!r} is not available on {device_type}: {problem}")
        return choice
    preferred = ("cuda", "triton", "torch") if device_type == "cuda" else ("cpp", "torch")
    for name in preferred:
        problem = unavailable_reason(name, device_type)
        if problem is None:
            return name
        log.info("backend %s unavailable on %s (%s); trying the next one", name, device_type, problem)
    return "torch"
