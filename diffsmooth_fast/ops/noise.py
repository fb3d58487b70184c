"""The project's reproducible Gaussian noise, indexed by position.

Element i of ``gaussian_noise(shape, seed, offset, stream=s)`` is the standard normal drawn by Philox4x32-10
under key ``seed`` at counter ``(offset + i, s)``: the low and high words of the 64-bit position go to counter
words c0 and c1, the 64-bit stream id to c2 and c3. With ``stream=0`` this is exactly Triton's
``tl.randn(seed, offset + i)``. Every backend computes the same integers; the float transforms (log, cos)
agree to a few float32 ulps.
"""

from __future__ import annotations

import math

import torch

from ..checks import check_int
from .dispatch import fake_impl, resolve_backend
from .reference import gaussian_noise_ref

_U64 = 2**64


def _as_int64(value: int) -> int:
    """Two's-complement view of an unsigned 64-bit value, as torch op schemas carry it."""
    return value - _U64 if value >= 2**63 else value


def gaussian_noise(
    shape: tuple[int, ...] | list[int] | torch.Size,
    seed: int,
    offset: int = 0,
    *,
    stream: int = 0,
    backend: str | None = "auto",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of ``shape`` drawn at counter positions offset .. offset+numel-1 of ``stream``.

    Args:
        shape: output shape; elements are numbered row-major.
        seed: Philox key, an integer in [0, 2**64).
        offset: position of the first element, >= 0; offset + numel must stay below 2**63.
        stream: noise stream id in [0, 2**64) (the project uses it for image index and sampling phase).
        backend: ``auto``, ``cuda``, ``triton``, ``cpp`` or ``torch``.
        device: where the noise is made (default: CPU).
        dtype: output dtype; noise is generated in float32 and then converted.

    Returns:
        Tensor of ``shape`` on ``device``, values N(0, 1) truncated at |z| <= 5.68 (Triton's u1 floor).
    """
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must not have negative sizes, got {shape}")
    check_int("seed", seed, 0, below=_U64)
    check_int("stream", stream, 0, below=_U64)
    check_int("offset", offset, 0)
    numel = math.prod(shape)
    if offset + numel >= 2**63:
        raise ValueError(f"offset + numel must stay below 2**63, got {offset} + {numel}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    name = resolve_backend(backend, device.type)

    if name == "torch":
        out = gaussian_noise_ref(shape, seed, offset, stream=stream, device=device)
    else:
        out = torch.empty(shape, dtype=torch.float32, device=device)
        if name == "triton":
            from .triton.noise import gaussian_noise_triton

            gaussian_noise_triton(out, seed, offset, stream)
        else:  # cpp and cuda share one op; torch dispatches on out's device.
            torch.ops.diffsmooth_fast.gaussian_noise_(out, _as_int64(seed), offset, _as_int64(stream))
    return out if dtype == torch.float32 else out.to(dtype)


@fake_impl("diffsmooth_fast::gaussian_noise_")
def _(out: torch.Tensor, seed: int, offset: int, stream: int) -> None:
    return None  # writes its output in place: nothing to allocate
