"""The fused noisy input: B noisy copies of one image, scaled for the diffusion model, in one pass.

Copy b, element e (row-major NCHW index within the image) uses the standard normal at position
offset + b*numel + e of ``stream`` under ``seed``: the noise ``gaussian_noise((batch, C, H, W), seed, offset,
stream=stream)`` would give, whatever the output's dtype or memory format, so a sample's noise never depends on
how the batch is stored.
"""

from __future__ import annotations

import math

import torch

from ._args import as_int64, check_counter, check_dtype, check_float, check_int
from .dispatch import fake_impl, resolve_backend
from .reference import noisy_input_ref


def noisy_input(
    x: torch.Tensor,
    batch: int,
    sigma: float,
    sqrt_abar: float = 1.0,
    *,
    seed: int | None = None,
    offset: int = 0,
    stream: int = 0,
    noise: torch.Tensor | None = None,
    affine: bool = True,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    backend: str | None = "auto",
) -> torch.Tensor:
    """``batch`` noisy copies of x: ``sqrt_abar*(2*(x + sigma*eps_b) - 1)``, or ``x + sigma*eps_b`` if not affine.

    Args:
        x: [C, H, W] in [0, 1], the clean image (read as float32).
        batch: number of copies B (>= 0).
        sigma: smoothing noise std in pixel units.
        sqrt_abar: sqrt(alpha_bar) of the diffusion step t* (unused when ``affine`` is False).
        seed, offset, stream: where the noise is drawn (see the module docstring); seed is required unless
            ``noise`` is given.
        noise: [B, C, H, W] standard normals to use instead of drawing (tests compare backends exactly).
        affine: False gives Cohen's plain noisy input x + sigma*eps.
        dtype: float32, float16 or bfloat16; the values are computed in float32 and rounded once.
        channels_last: write the result in channels_last memory format.
        backend: ``auto``, ``cuda``, ``triton``, ``cpp`` or ``torch``.

    Returns:
        [B, C, H, W] tensor of ``dtype`` on x's device.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 3 or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point [C, H, W] tensor, got {getattr(x, 'shape', type(x))}")
    batch = check_int("batch", batch, 0)
    sigma = check_float("sigma", sigma, minimum=0.0)
    sqrt_abar = check_float("sqrt_abar", sqrt_abar)
    check_dtype(dtype)
    shape = (batch, *x.shape)
    if noise is not None:
        if tuple(noise.shape) != shape or noise.device != x.device:
            raise ValueError(f"noise must be {list(shape)} on {x.device}, got {list(noise.shape)} on {noise.device}")
    else:
        check_counter(seed, offset, stream, math.prod(shape), "noisy_input")
    name = resolve_backend(backend, x.device.type)
    if name == "torch":
        return noisy_input_ref(x, batch, sigma, sqrt_abar, seed=seed or 0, offset=offset, stream=stream, noise=noise,
                               affine=affine, dtype=dtype, channels_last=channels_last)

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(shape, dtype=dtype, device=x.device, memory_format=fmt)
    x32 = x.to(torch.float32).contiguous()  # one image: a copy costs nothing next to the batch
    noise32 = None if noise is None else noise.to(torch.float32).contiguous()
    seed = seed or 0
    if name == "triton":
        from .triton.noisy_input import noisy_input_triton

        noisy_input_triton(out, x32, noise32, sigma, sqrt_abar, affine, seed, offset, stream)
    else:  # cpp and cuda share one op; torch dispatches on out's device.
        torch.ops.diffsmooth_fast.noisy_input_(out, x32, noise32, sigma, sqrt_abar, affine, as_int64(seed), offset,
                                               as_int64(stream))
    return out


@fake_impl("diffsmooth_fast::noisy_input_")
def _(out, x, noise, sigma, sqrt_abar, affine, seed, offset, stream) -> None:
    return None  # writes its output in place: nothing to allocate
