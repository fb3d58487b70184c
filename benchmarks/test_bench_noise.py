"""pytest-benchmark suite of the Gaussian noise generator: reference vs C++ vs Triton vs CUDA.

Run: python -m pytest benchmarks/test_bench_noise.py --benchmark-enable
Each case draws the noise of one CIFAR-10 batch (B x 3 x 32 x 32 float32) and reports GB/s of output written.
Triton and CUDA run only on a GPU (the CPU interpreter is a correctness tool, not a speed one).
"""

from __future__ import annotations

import pytest
import torch

from diffsmooth_fast.ops import gaussian_noise, unavailable_reason

SHAPE = (250, 3, 32, 32)
CASES = [("torch", "cpu"), ("cpp", "cpu"), ("triton", "cuda"), ("cuda", "cuda"), ("torch", "cuda")]


@pytest.mark.parametrize("backend,device", CASES, ids=[f"{b}-{d}" for b, d in CASES])
def test_gaussian_noise(benchmark, backend, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    problem = unavailable_reason(backend, device)
    if problem:
        pytest.skip(problem)

    def draw():
        z = gaussian_noise(SHAPE, 1234, 0, stream=7, backend=backend, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        return z

    draw()  # warm-up: extension load, Triton compile
    z = benchmark(draw)
    assert z.shape == SHAPE
    if benchmark.stats is not None:
        seconds = benchmark.stats.stats.median
        benchmark.extra_info["GB/s"] = z.numel() * 4 / seconds / 1e9
        benchmark.extra_info["Msamples/s"] = z.numel() / seconds / 1e6
