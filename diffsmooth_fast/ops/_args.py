"""Argument checks shared by the fused ops' Python entries: one-line messages that say what to fix.

``check_float`` and ``check_int`` are the package's own (``diffsmooth_fast.checks``), so the ops word their
errors as the rest of the package does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..checks import check_float, check_int
from .noise import _as_int64

# The dtypes every backend writes (and reads) directly; the kernels compute in float32 in between.
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

__all__ = ["KERNEL_DTYPES", "as_channel_vector", "as_int64", "check_counter", "check_dtype", "check_float",
           "check_int"]

as_int64 = _as_int64


def check_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype not in KERNEL_DTYPES:
        raise ValueError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {dtype}")
    return dtype


def check_counter(seed: int | None, offset: int, stream: int, count: int, what: str) -> None:
    """Checks the Philox key and the positions offset .. offset+count-1 that ``what`` will draw from."""
    if seed is None:
        raise ValueError(f"{what}: pass seed= (and offset=, stream=) to draw the noise, or the noise itself")
    check_int("seed", seed, 0, below=2**64)
    check_int("stream", stream, 0, below=2**64)
    check_int("offset", offset, 0)
    if offset + count >= 2**63:
        raise ValueError(f"offset + noise count must stay below 2**63, got {offset} + {count}")


def as_channel_vector(
    name: str, value: torch.Tensor | Sequence[float] | None, channels: int, device: torch.device
) -> torch.Tensor | None:
    """A per-channel mean or std as a contiguous float32 [C] tensor on ``device`` (None stays None)."""
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=torch.float32, device=device).flatten().contiguous()
    if t.numel() != channels:
        raise ValueError(f"{name} must have one value per channel ({channels}), got {t.numel()}")
    return t
