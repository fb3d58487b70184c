"""The fused one-shot denoise and replication against its reference: fixed, per-copy, fresh and no local noise,
strided eps (the UNet's 6-channel output), channels_last inputs and outputs, every dtype."""

from __future__ import annotations

import pytest
import torch

from diffsmooth_fast.ops import denoise_replicate
from diffsmooth_fast.ops.reference import denoise_replicate_ref, gaussian_noise_ref

from .test_ops_common import DT_IDS, DTYPES, FAST, GPU_FAST, check_output, device_of

MEAN, STD = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2023, 0.1994, 0.2010])  # CIFAR-10
C_X, C_EPS = 1.4142135623730951, 1.0  # abar = 0.5: sqrt(1/abar), sqrt(1/abar - 1)


def naive(x_t, eps, m, local_sigma, noise, mean, std, dtype):
    """Plain PyTorch computing in dtype (noise [B*m, C, H, W] or None): the float16/bfloat16 yardstick."""
    x0 = (C_X * x_t.to(dtype) - C_EPS * eps.to(dtype)).clamp(-1, 1)
    y = ((x0 + 1) / 2).repeat_interleave(m, dim=0)
    if noise is not None:
        y = y + local_sigma * noise.to(dtype)
    if mean is not None:
        y = y - mean.to(dtype).view(-1, 1, 1)
    if std is not None:
        y = y / std.to(dtype).view(-1, 1, 1)
    return y


def _unet_output(batch, shape, dtype, channels_last, seed=0):
    """x_t and eps as the engine has them: eps the first C channels of a [B, 2C, H, W] learn_sigma output."""
    gen = torch.Generator().manual_seed(seed)
    c, h, w = shape
    x_t = (1.5 * torch.randn((batch, c, h, w), generator=gen)).to(dtype)
    out6 = torch.randn((batch, 2 * c, h, w), generator=gen).to(dtype)
    if channels_last:
        x_t, out6 = x_t.contiguous(memory_format=torch.channels_last), out6.contiguous(memory_format=torch.channels_last)
    return x_t, out6[:, :c]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", [(3, 5, 5), (3, 7, 7), (3, 5, 7)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("batch,m", [(1, 1), (3, 3), (1, 5), (3, 5)])
def test_fixed_noise(backend, dtype, channels_last, shape, batch, m):
    """Fixed mode: the same m noises for every sample; inputs and output in dtype and the same memory format."""
    device = device_of(backend)
    x_t, eps = _unet_output(batch, shape, dtype, channels_last)
    noise = torch.randn((m, *shape), generator=torch.Generator().manual_seed(1))
    got = denoise_replicate(x_t.to(device), eps.to(device), C_X, C_EPS, m, 0.28, local_noise=noise.to(device),
                            mean=MEAN, std=STD, dtype=dtype, channels_last=channels_last, backend=backend)
    ref32 = denoise_replicate_ref(x_t, eps, C_X, C_EPS, m, 0.28, local_noise=noise, mean=MEAN, std=STD)
    lowp = naive(x_t, eps, m, 0.28, noise.repeat(batch, 1, 1, 1), MEAN, STD, dtype)
    check_output(got, ref32, lowp, dtype, channels_last, backend)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("mode", ["per-copy", "none", "centering", "no-norm", "mean-only"])
def test_other_modes(backend, channels_last, mode):
    """Explicit per-copy noise, sigma' = 0 (DDS), input centering (std all ones) and no normalisation."""
    batch, m, shape = 3, 3, (3, 7, 5)
    x_t, eps = _unet_output(batch, shape, torch.float32, not channels_last, seed=2)  # other format than out
    noise = torch.randn((batch * m, *shape))
    kw = {"per-copy": dict(local_noise=noise, mean=MEAN, std=STD), "none": dict(mean=MEAN, std=STD),
          "centering": dict(local_noise=noise, mean=MEAN, std=torch.ones(3)), "no-norm": dict(local_noise=noise),
          "mean-only": dict(local_noise=noise[:m], mean=MEAN)}[mode]
    local_sigma = 0.0 if mode == "none" else 0.5
    device = device_of(backend)
    moved = {k: v.to(device) if k == "local_noise" else v for k, v in kw.items()}
    got = denoise_replicate(x_t.to(device), eps.to(device), C_X, C_EPS, m, local_sigma, channels_last=channels_last,
                            backend=backend, **moved)
    check_output(got, denoise_replicate_ref(x_t, eps, C_X, C_EPS, m, local_sigma, **kw), None, torch.float32,
                 channels_last)


@pytest.mark.parametrize("backend", ["torch", *FAST])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("batch,m", [(1, 1), (3, 5)])
def test_fresh_noise_positions(backend, channels_last, batch, m):
    """Copy j of sample b, element e uses position offset + (b*m + j)*numel + e, in either memory format."""
    shape, seed, offset, stream = (3, 5, 7), 2**63 + 9, 2**32 - 200, (1 << 40) | 3
    x_t, eps = _unet_output(batch, shape, torch.float32, False, seed=3)
    noise = gaussian_noise_ref((batch * m, *shape), seed, offset, stream=stream)
    want = denoise_replicate_ref(x_t, eps, C_X, C_EPS, m, 0.25, local_noise=noise, mean=MEAN, std=STD)
    device = device_of(backend)
    got = denoise_replicate(x_t.to(device), eps.to(device), C_X, C_EPS, m, 0.25, seed=seed, offset=offset,
                            stream=stream, mean=MEAN, std=STD, channels_last=channels_last, backend=backend)
    check_output(got, want, None, torch.float32, channels_last)


@pytest.mark.parametrize("backend", FAST)
def test_edge_cases(backend):
    """m = 0 gives no rows; DDS (m = 1, sigma' = 0) needs no seed; clamps hold; NaN passes through."""
    device = device_of(backend)
    x_t = torch.tensor([[[[0.5, 4.0, -4.0, float("nan")]]]], device=device)
    eps = torch.zeros_like(x_t)
    assert denoise_replicate(x_t, eps, 2.0, 2.0, 0, 0.5, seed=1, backend=backend).shape == (0, 1, 1, 4)
    got = denoise_replicate(x_t, eps, 2.0, 2.0, 1, 0.0, backend=backend).cpu()
    assert got[0, 0, 0, :3].tolist() == [1.0, 1.0, 0.0] and got[0, 0, 0, 3].isnan()
    wide = denoise_replicate(x_t.half(), eps.float(), 2.0, 2.0, 2, 0.0, dtype=torch.bfloat16, backend=backend)
    assert wide.dtype == torch.bfloat16 and wide.shape == (2, 1, 1, 4)  # mixed input dtypes are promoted


@pytest.mark.parametrize("backend", [FAST[0]])  # C++: runs of 32 take the vector loops, not only their tails
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_cifar_sized_fixed(backend, dtype, channels_last):
    """The benchmark's shape in fixed mode, with clamped values, NaN and -0.0 in the inputs."""
    x_t, eps = _unet_output(6, (3, 32, 32), dtype, channels_last, seed=6)
    x_t[0, 0, 0, :4] = torch.tensor([float("nan"), 9.0, -9.0, -0.0], dtype=dtype)
    noise = torch.randn((5, 3, 32, 32), generator=torch.Generator().manual_seed(7))
    got = denoise_replicate(x_t, eps, C_X, C_EPS, 5, 0.28, local_noise=noise, mean=MEAN, std=STD, dtype=dtype,
                            channels_last=channels_last, backend=backend)
    ref32 = denoise_replicate_ref(x_t, eps, C_X, C_EPS, 5, 0.28, local_noise=noise, mean=MEAN, std=STD)
    assert got[:5, 0, 0, 0].isnan().all() and not got[5:].isnan().any()
    lowp = naive(x_t, eps, 5, 0.28, noise.repeat(6, 1, 1, 1), MEAN, STD, dtype)
    got[:5, 0, 0, 0] = ref32[:5, 0, 0, 0] = lowp[:5, 0, 0, 0] = 0.0
    check_output(got, ref32, lowp, dtype, channels_last, backend)


@pytest.mark.parametrize("backend", FAST)
def test_cifar_sized(backend):
    x_t, eps = _unet_output(4, (3, 32, 32), torch.float16, True, seed=4)
    device = device_of(backend)
    got = denoise_replicate(x_t.to(device), eps.to(device), C_X, C_EPS, 5, 0.28, seed=5, offset=0, stream=1,
                            mean=MEAN, std=STD, dtype=torch.float16, channels_last=True, backend=backend)
    noise = gaussian_noise_ref((20, 3, 32, 32), 5, 0, stream=1)
    ref32 = denoise_replicate_ref(x_t, eps, C_X, C_EPS, 5, 0.28, local_noise=noise, mean=MEAN, std=STD)
    check_output(got, ref32, naive(x_t, eps, 5, 0.28, noise, MEAN, STD, torch.float16), torch.float16, True, backend)


@pytest.mark.parametrize("backend", GPU_FAST)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_gpu(backend, dtype, channels_last):
    for shape, batch, m in [((3, 5, 7), 3, 3), ((3, 32, 32), 50, 5)]:
        x_t, eps = _unet_output(batch, shape, dtype, channels_last)
        fixed = torch.randn((m, *shape))
        got = denoise_replicate(x_t.cuda(), eps.cuda(), C_X, C_EPS, m, 0.28, local_noise=fixed.cuda(), mean=MEAN,
                                std=STD, dtype=dtype, channels_last=channels_last, backend=backend)
        ref32 = denoise_replicate_ref(x_t, eps, C_X, C_EPS, m, 0.28, local_noise=fixed, mean=MEAN, std=STD)
        lowp = naive(x_t, eps, m, 0.28, fixed.repeat(batch, 1, 1, 1), MEAN, STD, dtype)
        check_output(got, ref32, lowp, dtype, channels_last, backend)
        fresh = denoise_replicate(x_t.cuda(), eps.cuda(), C_X, C_EPS, m, 0.28, seed=7, offset=3, stream=2,
                                  mean=MEAN, std=STD, dtype=dtype, channels_last=channels_last, backend=backend)
        noise = gaussian_noise_ref((batch * m, *shape), 7, 3, stream=2)
        ref32 = denoise_replicate_ref(x_t, eps, C_X, C_EPS, m, 0.28, local_noise=noise, mean=MEAN, std=STD)
        check_output(fresh, ref32, naive(x_t, eps, m, 0.28, noise, MEAN, STD, dtype), dtype, channels_last, backend)
