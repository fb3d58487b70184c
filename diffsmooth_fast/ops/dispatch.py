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
from collections.abc import Callable

import torch

log = logging.getLogger("diffsmooth_fast")

BACKENDS = ("cuda", "triton", "cpp", "torch")
ENV_VAR = "DIFFSMOOTH_BACKEND"


# Shape-only implementations of the C++ ops, so that they trace under torch.compile and FakeTensor (opcheck). Each
# op's front module declares its own with @fake_impl; they are registered when the extension defines the ops.
_FAKES: dict[str, Callable[..., None]] = {}
_LOADED: set[str] = set()


def fake_impl(qualname: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Declare the fake (meta) implementation of the op ``qualname`` (``diffsmooth_fast::<op>_``)."""
    def register(fn: Callable[..., None]) -> Callable[..., None]:
        _FAKES[qualname] = fn
        if "_C" in _LOADED:
            torch.library.register_fake(qualname)(fn)
        return fn
    return register


@functools.cache
def _extension(name: str) -> str | None:
    """Import diffsmooth_fast.<name> (which registers its torch ops); the reason it failed, or None."""
    try:
        importlib.import_module(f"diffsmooth_fast.{name}")
    except ImportError as exc:
        return str(exc)
    _LOADED.add(name)
    if name == "_C":
        for qualname, fn in _FAKES.items():
            torch.library.register_fake(qualname)(fn)
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
