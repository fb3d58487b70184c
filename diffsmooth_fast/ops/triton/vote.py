"""Triton kernel of the local-smoothing vote (same winners as csrc/core/vote.cpp on finite logits)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _vote_kernel(
    counts_ptr,  # *int64 [K], incremented in place (one atomic per sample)
    logits_ptr,  # *fp32/fp16/bf16 [B*m, K] contiguous; rows b*m .. b*m+m-1 belong to sample b
    classes,  # K
    M: tl.constexpr,  # copies per sample (fixed for a run: one compile; also the interpreter needs a Python int)
    BLOCK_K: tl.constexpr,  # power of two >= K: one program holds a whole row
):
    b = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, BLOCK_K)
    valid = k < classes
    acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    for j in range(0, M):
        row = logits_ptr + (b * M + j) * classes
        logit = tl.load(row + k, mask=valid, other=-float("inf")).to(tl.float32)
        p = tl.exp(logit - tl.max(logit, axis=0))
        p = tl.where(valid, p, 0.0)
        acc += p / tl.sum(p, axis=0)
    mean = tl.where(valid, acc / M, -float("inf"))  # padding lanes never win
    winner = tl.argmax(mean, axis=0, tie_break_left=True)  # first maximum, as torch.argmax
    tl.atomic_add(counts_ptr + winner, 1)


def vote_triton(counts: torch.Tensor, logits: torch.Tensor, m: int) -> None:
    """counts [K] int64 += the votes of logits [B*m, K] (contiguous float32/float16/bfloat16)."""
    rows, classes = logits.shape
    if rows == 0:
        return
    _vote_kernel[(rows // m,)](counts, logits, classes, M=m, BLOCK_K=triton.next_power_of_2(classes))
