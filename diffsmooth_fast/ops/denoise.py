"""The fused one-shot denoise and local-noise replication: UNet output -> the classifier's B*m inputs, in one pass.

Fixed mode passes ``local_noise`` [m, C, H, W] (the reference's m noises, shared by every sample); fresh mode
passes ``seed`` (with ``offset``, ``stream``) and copy j of sample b draws the standard normals at positions
offset + (b*m + j)*numel + e. With local_sigma = 0 (DDS) nothing is drawn and m may be 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._args import KERNEL_DTYPES, as_channel_vector, as_int64, check_counter, check_dtype, check_float, check_int
from .dispatch import fake_impl, resolve_backend
from .reference import denoise_replicate_ref


def _inputs(x_t: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t and eps in one kernel dtype. Views stay views: the kernels read any strides, so eps may be the first
    C channels of the UNet's learn_sigma output (``out[:, :3]``) without a copy."""
    common = torch.promote_types(x_t.dtype, eps.dtype)
    if common not in KERNEL_DTYPES:
        common = torch.float32
    return x_t.to(common), eps.to(common)


def denoise_replicate(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    sqrt_recip_abar: float,
    sqrt_recipm1_abar: float,
    m: int,
    local_sigma: float,
    *,
    local_noise: torch.Tensor | None = None,
    seed: int | None = None,
    offset: int = 0,
    stream: int = 0,
    mean: torch.Tensor | Sequence[float] | None = None,
    std: torch.Tensor | Sequence[float] | None = None,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    backend: str | None = "auto",
) -> torch.Tensor:
    """m normalised, locally noised copies of each one-shot denoised sample.

    Args:
        x_t: [B, C, H, W] the UNet's input (float32, float16 or bfloat16; any strides).
        eps: [B, C, H, W] its predicted noise (any strides: a channel slice of a 6-channel output is fine).
        sqrt_recip_abar, sqrt_recipm1_abar: sqrt(1/abar) and sqrt(1/abar - 1) of t*, computed in float64.
        m: local copies per sample (>= 0).
        local_sigma: local noise std sigma' (>= 0).
        local_noise: [m, C, H, W] fixed noise for every sample, or [B*m, C, H, W] one per copy.
        seed, offset, stream: fresh-mode noise positions (module docstring); needed when local_sigma > 0 and
            no local_noise is given.
        mean, std: per-channel [C] normalisation of the classifier (None: none); std may be all ones
            (input centering).
        dtype: float32, float16 or bfloat16; values are computed in float32 and rounded once.
        channels_last: write the result in channels_last memory format.
        backend: ``auto``, ``cuda``, ``triton``, ``cpp`` or ``torch``.

    Returns:
        [B*m, C, H, W] of ``dtype``: row b*m + j is (x_hat_b + local_sigma*noise_j - mean)/std, with
        x_hat = (clamp(sqrt_recip_abar*x_t - sqrt_recipm1_abar*eps, -1, 1) + 1)/2.
    """
    for name, t in (("x_t", x_t), ("eps", eps)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4 or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point [B, C, H, W] tensor, got {getattr(t, 'shape', t)}")
    if eps.shape != x_t.shape or eps.device != x_t.device:
        raise ValueError(f"eps must match x_t {list(x_t.shape)} on {x_t.device}, got {list(eps.shape)} on {eps.device}")
    c_x, c_eps = check_float("sqrt_recip_abar", sqrt_recip_abar), check_float("sqrt_recipm1_abar", sqrt_recipm1_abar)
    m = check_int("m", m, 0)
    local_sigma = check_float("local_sigma", local_sigma, minimum=0.0)
    check_dtype(dtype)
    b, shape, device = x_t.shape[0], tuple(x_t.shape[1:]), x_t.device
    if local_noise is not None:
        if tuple(local_noise.shape[1:]) != shape or local_noise.shape[0] not in (m, b * m) or local_noise.ndim != 4:
            raise ValueError(f"local_noise must be [m, C, H, W] or [B*m, C, H, W] = [{m} or {b * m}, "
                             f"{', '.join(map(str, shape))}], got {list(local_noise.shape)}")
        if local_noise.device != device:
            raise ValueError(f"local_noise must be on {device}, got {local_noise.device}")
    elif local_sigma != 0 and b * m > 0:
        check_counter(seed, offset, stream, b * m * math.prod(shape), "denoise_replicate (fresh local noise)")
    mean_t = as_channel_vector("mean", mean, shape[0], device)
    std_t = as_channel_vector("std", std, shape[0], device)
    name = resolve_backend(backend, device.type)
    if name == "torch":
        return denoise_replicate_ref(x_t, eps, c_x, c_eps, m, local_sigma, local_noise=local_noise, seed=seed or 0,
                                     offset=offset, stream=stream, mean=mean_t, std=std_t, dtype=dtype,
                                     channels_last=channels_last)

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((b * m, *shape), dtype=dtype, device=device, memory_format=fmt)
    x_t, eps = _inputs(x_t, eps)
    noise32 = None if local_noise is None else local_noise.to(torch.float32).contiguous()
    seed = seed or 0
    if name == "triton":
        from .triton.denoise import denoise_replicate_triton

        denoise_replicate_triton(out, x_t, eps, noise32, mean_t, std_t, m, c_x, c_eps, local_sigma, seed, offset,
                                 stream)
    else:  # cpp and cuda share one op; torch dispatches on out's device.
        torch.ops.diffsmooth_fast.denoise_replicate_(out, x_t, eps, noise32, mean_t, std_t, m, c_x, c_eps,
                                                     local_sigma, as_int64(seed), offset, as_int64(stream))
    return out


@fake_impl("diffsmooth_fast::denoise_replicate_")
def _(out, x_t, eps, local_noise, mean, std, m, sqrt_recip_abar, sqrt_recipm1_abar, local_sigma, seed,
      offset, stream) -> None:
    return None  # writes its output in place: nothing to allocate
