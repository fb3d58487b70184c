"""Plain-PyTorch specifications of the project's kernels.

Every fast implementation (C++, CUDA, Triton) is tested element by element against the functions here.
They are written for clarity, not speed: integers are held in int64 tensors so that 32-bit wrap-around and
64-bit products stay exact on every device and every torch build.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
# Constants of Philox4x32-10 as used by Triton (shared with csrc/core/philox.h).
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
PHILOX_ROUNDS = 10
# Largest float32 whose product with INT32_MAX stays below 1 (Triton's uint_to_uniform_float).
UNIFORM_SCALE = 4.6566127342e-10
# Box-Muller floors u1 here, truncating the Gaussian at |z| <= sqrt(-2 ln 1e-7) ~ 5.68.
UNIFORM_FLOOR = 1.0e-7


def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of the 64-bit product of the constant a and the uint32 values in b.

    The product can reach 2**64, beyond int64, so a is split in 16-bit halves: each partial product is
    below 2**48 and exact in int64.
    """
    a_hi, a_lo = a >> 16, a & 0xFFFF
    p_hi = b * a_hi  # < 2**48
    p_lo = b * a_lo  # < 2**48
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & _MASK32
    return hi & _MASK32, lo


def philox_words_ref(
    c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32-10 of counters (c0, c1, c2, c3) (int64 tensors holding uint32 values) under a 64-bit seed.

    Returns the four output words as int64 tensors holding uint32 values.
    """
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(PHILOX_ROUNDS):
        hi_b, lo_b = _mulhilo32(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mulhilo32(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & _MASK32
        k1 = (k1 + PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def uint_to_uniform_ref(x: torch.Tensor) -> torch.Tensor:
    """uint32 values (in int64) -> float32 in [0, 1), exactly as Triton's uint_to_uniform_float."""
    signed = torch.where(x >= 2**31, x - 2**32, x)
    folded = torch.where(signed < 0, -signed - 1, signed)
    return folded.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32)


def box_muller_ref(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """Cosine branch of the Box-Muller transform, in float32, as Triton's pair_uniform_to_normal."""
    u1 = torch.clamp(u1, min=UNIFORM_FLOOR)
    theta = torch.tensor(6.283185307179586, dtype=torch.float32) * u2
    r = torch.sqrt(-2.0 * torch.log(u1))
    return r * torch.cos(theta)


def philox_counters(numel: int, offset: int, stream: int, device: torch.device | str | None = None):
    """The four counter words of positions offset .. offset+numel-1 of a stream (int64 tensors)."""
    pos = torch.arange(numel, dtype=torch.int64, device=device) + offset
    c0 = pos & _MASK32
    c1 = pos >> 32
    c2 = torch.full_like(pos, stream & _MASK32)
    c3 = torch.full_like(pos, (stream >> 32) & _MASK32)
    return c0, c1, c2, c3


def gaussian_noise_ref(
    shape: tuple[int, ...] | torch.Size,
    seed: int,
    offset: int = 0,
    *,
    stream: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Standard normal float32 tensor whose element i (row-major) is drawn at counter position offset + i.

    With stream == 0 this equals Triton's ``tl.randn(seed, offset + i)``.
    """
    numel = 1
    for s in shape:
        numel *= int(s)
    w0, w1, _, _ = philox_words_ref(*philox_counters(numel, offset, stream, device), seed)
    return box_muller_ref(uint_to_uniform_ref(w0), uint_to_uniform_ref(w1)).reshape(tuple(shape))
