"""Triton kernel of the project's counter-based Gaussian noise (same values as csrc/core/philox.h)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# One program per BLOCK elements. Large blocks keep the CPU interpreter (TRITON_INTERPRET=1) fast enough
# for tests; on a GPU the kernel is bound by Philox arithmetic, not by the block size.
BLOCK = 1024

# The Philox counter arguments of every kernel that draws noise. The JIT must not specialise them on their value:
# an int equal to 1 (seed 1, offset 1, stream 1 or 2**32) would become a compile-time Python int, which
# philox_normal cannot .to() (the compiler rejects it: "'int' object has no attribute 'to'"; the interpreter does
# not specialise, so only a GPU would hit it), and specialising on 1 or on divisibility by 16 would only add
# compiles, as these values change every batch. Their width (i32, i64, u64) still follows the value.
COUNTER_ARGS = ["seed", "offset", "stream_lo", "stream_hi"]


@triton.jit
def philox_normal(seed, pos, stream_lo, stream_hi):
    """Standard normals at int64 positions ``pos`` of stream (stream_hi << 32 | stream_lo): the fused kernels'
    generator, identical to csrc/core/philox.h's philox_normal."""
    c0 = pos.to(tl.uint32)
    c1 = (pos >> 32).to(tl.uint32)
    zero = c0 * 0
    c2 = zero + stream_lo.to(tl.uint32)
    c3 = zero + stream_hi.to(tl.uint32)
    w0, w1, _, _ = tl.philox(seed, c0, c1, c2, c3)
    z, _ = tl.pair_uniform_to_normal(tl.uint_to_uniform_float(w0), tl.uint_to_uniform_float(w1))
    return z


@triton.jit(do_not_specialize=COUNTER_ARGS)
def _gaussian_noise_kernel(
    out_ptr,  # *fp32, numel elements, written contiguously
    numel,  # number of elements to write
    seed,  # uint64 Philox key (low word k0, high word k1)
    offset,  # int64 counter position of element 0
    stream_lo,  # counter word c2 (uint32 as int)
    stream_hi,  # counter word c3 (uint32 as int)
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    idx = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    z = philox_normal(seed, idx + offset, stream_lo, stream_hi)
    tl.store(out_ptr + idx, z, mask=idx < numel)


def gaussian_noise_triton(out: torch.Tensor, seed: int, offset: int, stream: int) -> None:
    """Fill the contiguous float32 tensor ``out`` with the noise of positions offset .. offset+numel-1."""
    numel = out.numel()
    if numel == 0:
        return
    grid = (triton.cdiv(numel, BLOCK),)
    _gaussian_noise_kernel[grid](
        out, numel, seed, offset, stream & 0xFFFFFFFF, (stream >> 32) & 0xFFFFFFFF, BLOCK=BLOCK
    )
