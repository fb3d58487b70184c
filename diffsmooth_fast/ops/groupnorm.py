"""GroupNorm + scale-shift + SiLU in one pass: the UNet's norm layers, where most of its half-precision memory
traffic goes (each unfused step reads and writes the whole activation).

Backends: ``triton`` runs the fused kernel; ``cuda`` (no CUDA C++ kernel exists for this op) runs the Triton kernel
when triton is installed, else the reference; ``cpp`` and ``torch`` run the plain-PyTorch reference. When autograd
needs a gradient, or for dtypes the kernel does not read (float64), the reference runs too: the kernel is
forward-only.
"""

from __future__ import annotations

import torch

from ._args import KERNEL_DTYPES, check_float, check_int
from .dispatch import resolve_backend, unavailable_reason
from .reference import group_norm_silu_ref


def _channel_vector(name: str, t: torch.Tensor | None, channels: int, x: torch.Tensor) -> torch.Tensor | None:
    if t is None:
        return None
    if not isinstance(t, torch.Tensor) or t.shape != (channels,) or not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point [{channels}] tensor, got {getattr(t, 'shape', t)}")
    if t.device != x.device:
        raise ValueError(f"{name} must be on {x.device}, got {t.device}")
    return t


def _per_sample_channel(name: str, t: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """scale/shift as a [B, C] view (no copy: a chunk of the embedding projection stays strided)."""
    if t is None:
        return None
    b, c = x.shape[:2]
    if not isinstance(t, torch.Tensor) or tuple(t.shape) not in ((b, c), (b, c, 1, 1)) or not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point [B, C] or [B, C, 1, 1] = [{b}, {c}(, 1, 1)] tensor, got "
                         f"{getattr(t, 'shape', t)}")
    if t.device != x.device:
        raise ValueError(f"{name} must be on {x.device}, got {t.device}")
    return t.reshape(b, c)


def _fast_backend(requested: str | None, device_type: str) -> bool:
    """Whether the fused kernel runs: the resolved backend is triton, or cuda with triton importable."""
    name = resolve_backend(requested, device_type)
    return name == "triton" or (name == "cuda" and unavailable_reason("triton", device_type) is None)


def group_norm_silu(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
    *,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    silu: bool = True,
    backend: str | None = "auto",
) -> torch.Tensor:
    """SiLU(GroupNorm(x) * (1 + scale) + shift), computed in float32 and rounded once to x's dtype.

    Args:
        x: [B, C, H, W], float32/float16/bfloat16, contiguous or channels_last (other strides are copied to
            contiguous first).
        num_groups: G, dividing C.
        weight, bias: the GroupNorm affine [C] (any float dtype; None: 1 and 0).
        eps: added to the variance.
        scale, shift: [B, C] or [B, C, 1, 1] (any float dtype and strides; None: absent), the UNet's
            scale-shift norm conditioning.
        silu: apply SiLU last.
        backend: ``auto``, ``cuda``, ``triton``, ``cpp`` or ``torch`` (module docstring).

    Returns:
        A tensor of x's shape, dtype and memory format (group_norm_silu_ref in ops/reference.py).
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point [B, C, H, W] tensor, got {getattr(x, 'shape', x)}")
    num_groups = check_int("num_groups", num_groups, 1)
    channels = x.shape[1]
    if channels % num_groups:
        raise ValueError(f"channels ({channels}) must be divisible by num_groups ({num_groups})")
    eps = check_float("eps", eps, minimum=0.0)
    weight = _channel_vector("weight", weight, channels, x)
    bias = _channel_vector("bias", bias, channels, x)
    scale_v = _per_sample_channel("scale", scale, x)
    shift_v = _per_sample_channel("shift", shift, x)
    fast = _fast_backend(backend, x.device.type)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias, scale, shift))
    if not fast or needs_grad or x.dtype not in KERNEL_DTYPES:
        return group_norm_silu_ref(x, num_groups, weight, bias, eps, scale, shift, silu)

    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()
    fmt = torch.contiguous_format if x.is_contiguous() else torch.channels_last
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    weight = torch.ones(channels, device=x.device) if weight is None else weight.contiguous()
    bias = torch.zeros(channels, device=x.device) if bias is None else bias.contiguous()
    from .triton.groupnorm import group_norm_silu_triton

    group_norm_silu_triton(out, x, num_groups, weight, bias, eps, scale_v, shift_v, silu)
    return out
