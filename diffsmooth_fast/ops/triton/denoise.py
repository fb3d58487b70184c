"""Triton kernel of the fused one-shot denoise and local-noise replication (same values as csrc/core/denoise.cpp)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .noise import COUNTER_ARGS, philox_normal

# Input elements per program (each writes m outputs). Large blocks keep the CPU interpreter fast enough for
# tests; on a GPU the kernel is memory-bound (or Philox-bound when drawing).
BLOCK = 1024
# Where the local noise comes from (NOISE constexpr).
NOISE_NONE, NOISE_SHARED, NOISE_PER_COPY, NOISE_DRAWN = 0, 1, 2, 3


@triton.jit(do_not_specialize=COUNTER_ARGS)
def _denoise_kernel(
    out_ptr,  # *fp32/fp16/bf16 [B*m, C, H, W], NCHW or NHWC memory order; row b*m + j
    x_t_ptr,  # *fp32/fp16/bf16 logical [B, C, H, W] with strides sx_*
    eps_ptr,  # same dtype as x_t, logical [B, C, H, W] with strides se_* (may be a channel slice)
    noise_ptr,  # *fp32 contiguous [m, C, H, W] (NOISE_SHARED) or [B*m, C, H, W] (NOISE_PER_COPY)
    mean_ptr,  # *fp32 [C], read when HAS_MEAN
    std_ptr,  # *fp32 [C], read when HAS_STD
    total,  # B * C * H * W input elements
    numel,  # C * H * W
    channels,  # C
    hw,  # H * W
    width,  # W
    sx_n, sx_c, sx_h, sx_w,  # element strides of x_t
    se_n, se_c, se_h, se_w,  # element strides of eps
    c_x,  # sqrt(1/abar)
    c_eps,  # sqrt(1/abar - 1)
    local_sigma,  # sigma'
    seed,  # uint64 Philox key (NOISE_DRAWN)
    offset,  # int64 position of row 0, element 0 (NOISE_DRAWN)
    stream_lo,  # counter word c2 (uint32 as int)
    stream_hi,  # counter word c3 (uint32 as int)
    M: tl.constexpr,  # copies per sample (fixed for a run: one compile; also the interpreter needs a Python int)
    NOISE: tl.constexpr,
    HAS_MEAN: tl.constexpr,
    HAS_STD: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # Programs walk each output image in memory order (contiguous stores); x_hat is computed once per input
    # element and written to its m rows.
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
    h = s // width
    w = s - h * width
    e = c * hw + s
    xv = tl.load(x_t_ptr + b * sx_n + c * sx_c + h * sx_h + w * sx_w, mask=mask, other=0.0).to(tl.float32)
    ev = tl.load(eps_ptr + b * se_n + c * se_c + h * se_h + w * se_w, mask=mask, other=0.0).to(tl.float32)
    x0 = c_x * xv - c_eps * ev
    # tl.where, not tl.clamp/minimum: a NaN must pass through to the caller's finiteness check.
    x0 = tl.where(x0 < -1.0, -1.0, tl.where(x0 > 1.0, 1.0, x0))
    x_hat = (x0 + 1.0) * 0.5
    if HAS_MEAN:
        mu = tl.load(mean_ptr + c, mask=mask, other=0.0)
    if HAS_STD:
        sd = tl.load(std_ptr + c, mask=mask, other=1.0)
    for j in range(0, M):
        r = b * M + j
        v = x_hat
        if NOISE == 1:
            v = v + local_sigma * tl.load(noise_ptr + j * numel + e, mask=mask, other=0.0)
        elif NOISE == 2:
            v = v + local_sigma * tl.load(noise_ptr + r * numel + e, mask=mask, other=0.0)
        elif NOISE == 3:
            v = v + local_sigma * philox_normal(seed, r * numel + e + offset, stream_lo, stream_hi)
        if HAS_MEAN:
            v = v - mu
        if HAS_STD:
            v = v / sd
        tl.store(out_ptr + r * numel + p, v.to(out_ptr.dtype.element_ty), mask=mask)


def denoise_replicate_triton(
    out: torch.Tensor,
    x_t: torch.Tensor,
    eps: torch.Tensor,
    local_noise: torch.Tensor | None,
    mean: torch.Tensor | None,
    std: torch.Tensor | None,
    m: int,
    c_x: float,
    c_eps: float,
    local_sigma: float,
    seed: int,
    offset: int,
    stream: int,
) -> None:
    """Fill ``out`` [B*m, C, H, W] (contiguous or channels_last); local_noise, mean, std contiguous float32."""
    b, c, h, w = x_t.shape
    total = x_t.numel()
    if total == 0 or m == 0:
        return
    if local_sigma == 0:
        mode = NOISE_NONE
    elif local_noise is None:
        mode = NOISE_DRAWN
    else:
        mode = NOISE_SHARED if local_noise.shape[0] == m else NOISE_PER_COPY
    grid = (triton.cdiv(total, BLOCK),)
    dummy = x_t  # stands in for pointers a constexpr switch never reads
    _denoise_kernel[grid](
        out, x_t, eps, local_noise if local_noise is not None else dummy, mean if mean is not None else dummy,
        std if std is not None else dummy, total, c * h * w, c, h * w, w, *x_t.stride(), *eps.stride(),
        c_x, c_eps, local_sigma, seed, offset, stream & 0xFFFFFFFF, (stream >> 32) & 0xFFFFFFFF,
        M=m, NOISE=mode, HAS_MEAN=mean is not None, HAS_STD=std is not None, CHANNELS_LAST=not out.is_contiguous(),
        BLOCK=BLOCK,
    )
