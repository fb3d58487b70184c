"""Triton kernel of the fused noisy input (same values as csrc/core/noisy_input.cpp)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .noise import COUNTER_ARGS, philox_normal

# Elements per program. Large blocks keep the CPU interpreter (TRITON_INTERPRET=1) fast enough for tests; on a
# GPU the kernel is bound by Philox arithmetic, not by the block size.
BLOCK = 1024


@triton.jit(do_not_specialize=COUNTER_ARGS)
def _noisy_input_kernel(
    out_ptr,  # *fp32/fp16/bf16 [B, C, H, W], NCHW or NHWC memory order; element i is written at out_ptr + i
    x_ptr,  # *fp32 [C, H, W] contiguous: the clean image
    noise_ptr,  # *fp32 [B, C, H, W] contiguous standard normals; read only when HAS_NOISE
    total,  # B * C * H * W
    numel,  # C * H * W
    channels,  # C
    hw,  # H * W
    sigma,  # noise std, pixel units
    sqrt_abar,  # sqrt(alpha_bar_t*), used when AFFINE
    seed,  # uint64 Philox key
    offset,  # int64 position of copy 0, element 0
    stream_lo,  # counter word c2 (uint32 as int)
    stream_hi,  # counter word c3 (uint32 as int)
    HAS_NOISE: tl.constexpr,
    AFFINE: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # Programs walk the output in memory order (contiguous stores) and map each element to its logical
    # NCHW index, which names its noise position.
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = i < total
    b = i // numel
    p = i - b * numel
    if CHANNELS_LAST:
        c = p % channels
        s = p // channels
    else:
        c = p // hw
        s = p - c * hw
    e = c * hw + s
    if HAS_NOISE:
        z = tl.load(noise_ptr + b * numel + e, mask=mask, other=0.0)
    else:
        z = philox_normal(seed, b * numel + e + offset, stream_lo, stream_hi)
    v = tl.load(x_ptr + e, mask=mask, other=0.0) + sigma * z
    if AFFINE:
        v = sqrt_abar * (2.0 * v - 1.0)
    tl.store(out_ptr + i, v.to(out_ptr.dtype.element_ty), mask=mask)


def noisy_input_triton(
    out: torch.Tensor,
    x: torch.Tensor,
    noise: torch.Tensor | None,
    sigma: float,
    sqrt_abar: float,
    affine: bool,
    seed: int,
    offset: int,
    stream: int,
) -> None:
    """Fill ``out`` [B, C, H, W] (contiguous or channels_last) from x [C, H, W] (contiguous float32)."""
    total = out.numel()
    if total == 0:
        return
    channels_last = not out.is_contiguous()
    c, h, w = x.shape
    grid = (triton.cdiv(total, BLOCK),)
    _noisy_input_kernel[grid](
        out, x, noise if noise is not None else x, total, c * h * w, c, h * w, sigma, sqrt_abar, seed, offset,
        stream & 0xFFFFFFFF, (stream >> 32) & 0xFFFFFFFF,
        HAS_NOISE=noise is not None, AFFINE=affine, CHANNELS_LAST=channels_last, BLOCK=BLOCK,
    )
