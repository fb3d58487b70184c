"""The fused noisy input against its reference: exact noise via noise=, drawn noise at the right positions."""

from __future__ import annotations

import math

import pytest
import torch

from diffsmooth_fast.ops import noisy_input
from diffsmooth_fast.ops.reference import gaussian_noise_ref, noisy_input_ref

from .test_ops_common import DT_IDS, DTYPES, FAST, GPU_FAST, check_output, device_of

SHAPES = [(3, 5, 5), (3, 7, 7), (3, 5, 7), (1, 3, 1)]


def naive(x: torch.Tensor, noise: torch.Tensor, sigma: float, sqrt_abar: float, affine: bool, dtype: torch.dtype):
    """Plain PyTorch computing in dtype: the precision yardstick for float16/bfloat16."""
    y = x.to(dtype) + sigma * noise.to(dtype)
    return sqrt_abar * (2 * y - 1) if affine else y


def _case(shape, batch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen), torch.randn((batch, *shape), generator=gen)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("batch", [1, 3])
def test_given_noise(backend, dtype, channels_last, shape, batch):
    device = device_of(backend)
    x, noise = _case(shape, batch)
    for affine in (True, False):
        got = noisy_input(x.to(device), batch, 0.5, 0.6, noise=noise.to(device), affine=affine, dtype=dtype,
                          channels_last=channels_last, backend=backend)
        ref32 = noisy_input_ref(x, batch, 0.5, 0.6, noise=noise, affine=affine)
        check_output(got, ref32, naive(x, noise, 0.5, 0.6, affine, dtype), dtype, channels_last, backend)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_cifar_sized(backend, channels_last):
    x, noise = _case((3, 32, 32), 5, seed=1)
    device = device_of(backend)
    got = noisy_input(x.to(device), 5, 0.25, 0.3, noise=noise.to(device), channels_last=channels_last, dtype=torch.float16,
                      backend=backend)
    ref32 = noisy_input_ref(x, 5, 0.25, 0.3, noise=noise)
    check_output(got, ref32, naive(x, noise, 0.25, 0.3, True, torch.float16), torch.float16, channels_last, backend)


@pytest.mark.parametrize("backend", ["torch", *FAST])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_drawn_noise_positions(backend, channels_last):
    """Copy b, element e uses position offset + b*numel + e of the stream, in either memory format."""
    shape, batch, seed, offset, stream = (3, 5, 7), 3, 2**64 - 5, 2**32 - 50, (9 << 32) | 4
    x, _ = _case(shape, batch)
    eps = gaussian_noise_ref((batch, *shape), seed, offset, stream=stream)
    want = noisy_input_ref(x, batch, 0.25, 0.8, noise=eps)
    got = noisy_input(x.to(device_of(backend)), batch, 0.25, 0.8, seed=seed, offset=offset, stream=stream,
                      channels_last=channels_last, backend=backend)
    check_output(got, want, None, torch.float32, channels_last)


@pytest.mark.parametrize("backend", FAST)
def test_batches_compose(backend):
    """Noise is indexed by position: a batch of 5 equals batches of 2 and 3 drawn at the matching offsets."""
    x = torch.rand(3, 7, 5).to(device_of(backend))
    numel, offset = x.numel(), 1000
    whole = noisy_input(x, 5, 0.5, 0.9, seed=7, offset=offset, stream=3, backend=backend)
    first = noisy_input(x, 2, 0.5, 0.9, seed=7, offset=offset, stream=3, backend=backend)
    rest = noisy_input(x, 3, 0.5, 0.9, seed=7, offset=offset + 2 * numel, stream=3, backend=backend)
    assert torch.equal(torch.cat([first, rest]), whole)
    assert noisy_input(x, 0, 0.5, 0.9, seed=7, backend=backend).shape == (0, 3, 7, 5)


@pytest.mark.parametrize("backend", FAST)
def test_plain_noisy_input_is_gaussian_smoothing(backend):
    """affine=False is Cohen's x + sigma*eps with the project's noise (the sampling loop's batch)."""
    x = torch.rand(3, 5, 5)
    got = noisy_input(x.to(device_of(backend)), 4, 0.25, seed=11, offset=75, stream=2, affine=False, backend=backend)
    want = x + 0.25 * gaussian_noise_ref((4, 3, 5, 5), 11, 75, stream=2)
    torch.testing.assert_close(got.cpu(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", GPU_FAST)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_gpu(backend, dtype, channels_last):
    for shape, batch in [((3, 5, 7), 3), ((3, 32, 32), 250)]:
        x, noise = _case(shape, batch)
        got = noisy_input(x.cuda(), batch, 0.5, 0.6, noise=noise.cuda(), dtype=dtype, channels_last=channels_last,
                          backend=backend)
        check_output(got, noisy_input_ref(x, batch, 0.5, 0.6, noise=noise), naive(x, noise, 0.5, 0.6, True, dtype),
                     dtype, channels_last)
        drawn = noisy_input(x.cuda(), batch, 0.5, 0.6, seed=3, offset=5 * math.prod(shape), stream=8,
                            dtype=dtype, channels_last=channels_last, backend=backend)
        eps = gaussian_noise_ref((batch, *shape), 3, 5 * math.prod(shape), stream=8)
        ref32 = noisy_input_ref(x, batch, 0.5, 0.6, noise=eps)
        check_output(drawn, ref32, naive(x, eps, 0.5, 0.6, True, dtype), dtype, channels_last)
