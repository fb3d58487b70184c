"""The local-smoothing vote: mean softmax over each sample's m copies, argmax, one count, on the device."""

from __future__ import annotations

import torch

from ._args import KERNEL_DTYPES, check_int
from .dispatch import fake_impl, resolve_backend
from .reference import vote_ref


def vote(logits: torch.Tensor, m: int, counts: torch.Tensor, *, backend: str | None = "auto") -> None:
    """counts[K] (int64, in place) += one vote per sample, without a host sync.

    Args:
        logits: [B*m, K] (any float dtype); rows b*m .. b*m+m-1 are the m copies of sample b.
        m: copies per sample (>= 1).
        counts: [K] int64 on logits' device.
        backend: ``auto``, ``cuda``, ``triton``, ``cpp`` or ``torch``.

    Sample b votes for argmax_k of the mean over its rows of softmax(logits) (float32), the first class on ties
    as torch.argmax. A NaN logit makes its row's softmax NaN: the reference, C++ and CUDA kernels then vote for
    the first NaN class as torch.argmax does, Triton for an unspecified one; callers check finiteness anyway.
    """
    m = check_int("m", m, 1)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point [B*m, K] tensor, got {getattr(logits, 'shape', logits)}")
    if logits.shape[0] % m:
        raise ValueError(f"logits has {logits.shape[0]} rows, not a multiple of m = {m}")
    if counts.dtype != torch.int64 or counts.shape != (logits.shape[1],) or counts.device != logits.device:
        raise ValueError(f"counts must be an int64 [{logits.shape[1]}] tensor on {logits.device}, got "
                         f"{counts.dtype} {list(counts.shape)} on {counts.device}")
    name = resolve_backend(backend, logits.device.type)
    if name == "torch":
        vote_ref(logits, m, counts)
        return
    if logits.dtype not in KERNEL_DTYPES:
        logits = logits.float()  # softmax runs in float32 anyway
    logits = logits.contiguous()  # [B*m, K] is small: a copy of a strided view costs little
    if not counts.is_contiguous():
        raise ValueError("counts must be contiguous (it is updated in place)")
    if name == "triton":
        from .triton.vote import vote_triton

        vote_triton(counts, logits, m)
    else:  # cpp and cuda share one op; torch dispatches on counts' device.
        torch.ops.diffsmooth_fast.vote_(counts, logits, m)


@fake_impl("diffsmooth_fast::vote_")
def _(counts, logits, m) -> None:
    return None  # writes its output in place: nothing to allocate
