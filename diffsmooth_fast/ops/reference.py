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


def _in_format(y: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """float32 result -> ``dtype`` (one rounding) in the requested memory format."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return y.to(dtype).contiguous(memory_format=fmt)


def noisy_input_ref(
    x: torch.Tensor,
    batch: int,
    sigma: float,
    sqrt_abar: float = 1.0,
    *,
    seed: int = 0,
    offset: int = 0,
    stream: int = 0,
    noise: torch.Tensor | None = None,
    affine: bool = True,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """``batch`` noisy copies of one image, as the diffusion model takes them (Algorithm 3, line 1).

    x: [C, H, W] in [0, 1]. Copy b uses eps_b = ``noise[b]`` or the standard normals at positions
    offset + b*numel + e (e the row-major index within the image) of ``stream``. Returns [batch, C, H, W]:
    ``sqrt_abar * (2*(x + sigma*eps_b) - 1)`` when ``affine``, else ``x + sigma*eps_b`` (Cohen's noisy input),
    computed in float32 and rounded once to ``dtype``.
    """
    shape = (batch, *x.shape)
    eps = noise.float() if noise is not None else gaussian_noise_ref(shape, seed, offset, stream=stream, device=x.device)
    y = x.float().unsqueeze(0) + sigma * eps.reshape(shape)
    if affine:
        y = sqrt_abar * (2 * y - 1)
    return _in_format(y, dtype, channels_last)


def denoise_replicate_ref(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    sqrt_recip_abar: float,
    sqrt_recipm1_abar: float,
    m: int,
    local_sigma: float,
    *,
    local_noise: torch.Tensor | None = None,
    seed: int = 0,
    offset: int = 0,
    stream: int = 0,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """One-shot denoise (Algorithm 2, OpenAI's form) and m locally noised copies (Algorithm 3), normalised.

    x_t, eps: [B, C, H, W] (any float dtype, read as float32). x0 = clamp(sqrt_recip_abar*x_t -
    sqrt_recipm1_abar*eps, -1, 1), x_hat = (x0 + 1)/2 in [0, 1]. Row b*m + j of the result [B*m, C, H, W] is
    ``(x_hat[b] + local_sigma*noise_j - mean)/std`` with mean, std: [C] (None: 0 and 1). The noise is
    ``local_noise[j]`` for local_noise [m, C, H, W] (the same m for every sample), ``local_noise[b*m + j]``
    for [B*m, C, H, W], or else the standard normals at positions offset + (b*m + j)*numel + e of ``stream``;
    none at all when local_sigma == 0.
    """
    b, shape = x_t.shape[0], tuple(x_t.shape[1:])
    x0 = torch.clamp(sqrt_recip_abar * x_t.float() - sqrt_recipm1_abar * eps.float(), -1, 1)
    copies = ((x0 + 1) / 2).unsqueeze(1).expand(b, m, *shape)
    if local_sigma != 0:
        if local_noise is None:
            noise = gaussian_noise_ref((b, m, *shape), seed, offset, stream=stream, device=x_t.device)
        elif local_noise.shape[0] == m:
            noise = local_noise.float()  # [m, C, H, W], broadcast over the samples
        else:
            noise = local_noise.float().reshape(b, m, *shape)
        copies = copies + local_sigma * noise
    y = copies.reshape(b * m, *shape)
    if mean is not None:
        y = y - mean.float().view(-1, 1, 1)
    if std is not None:
        y = y / std.float().view(-1, 1, 1)
    return _in_format(y, dtype, channels_last)


def vote_ref(logits: torch.Tensor, m: int, counts: torch.Tensor) -> None:
    """counts[K] (int64) += one vote per sample: argmax over K of the mean softmax (float32) of its m rows.

    logits: [B*m, K], rows b*m .. b*m+m-1 belong to sample b. Ties go to the first class (torch.argmax).
    """
    k = logits.shape[-1]
    probs = torch.softmax(logits.float(), dim=-1).view(-1, m, k).mean(dim=1)
    winners = probs.argmax(dim=-1)
    counts.scatter_add_(0, winners, torch.ones_like(winners))


def group_norm_silu_ref(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    silu: bool = True,
) -> torch.Tensor:
    """GroupNorm, then the optional scale-shift ``y*(1 + scale) + shift``, then the optional SiLU: the UNet's
    ``norm -> (scale-shift) -> SiLU`` with every step in float32 and one rounding to x's dtype at the end.

    x: [B, C, H, W]; weight, bias: [C] (None: 1 and 0); scale, shift: [B, C] or [B, C, 1, 1] (None: 1 + 0 and
    0). The result keeps x's memory format (contiguous or channels_last). In float32 this is exactly what the
    UNet composes unfused; with a float16/bfloat16 model the unfused UNet rounds after the norm and runs the
    scale-shift and SiLU in that dtype, which this spec deliberately does not: it is the more accurate function
    that the fused kernels compute.
    """
    b, c = x.shape[:2]
    w = None if weight is None else weight.float()
    bb = None if bias is None else bias.float()
    y = torch.nn.functional.group_norm(x.float(), num_groups, w, bb, eps)
    if scale is not None:
        y = y * (1 + scale.float().reshape(b, c, 1, 1))
    if shift is not None:
        y = y + shift.float().reshape(b, c, 1, 1)
    if silu:
        y = torch.nn.functional.silu(y)
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return _in_format(y, x.dtype, channels_last)
