"""pytest-benchmark suite of the fused ops on a CIFAR-10 batch: reference vs C++ (CPU) vs Triton and CUDA (GPU).

Run: python -m pytest benchmarks/test_bench_ops.py --benchmark-enable --benchmark-group-by=group
Batch B = 250 images of 3 x 32 x 32, m = 5 local copies, float32. Each group times one op four ways where they
apply: ``ref`` (ops/reference.py as written, drawing its noise with the PyTorch Philox reference), ``torch+noise``
(the same PyTorch ops on noise drawn by the fast generator of that device: what the engine would run without
the fused op), ``given`` groups (everyone gets the noise tensor: the ops themselves), and the fused kernels.
extra_info: GB/s of tensor bytes read and written, ``Melem/s`` of output elements. Triton and CUDA run only on a
GPU (the CPU interpreter is a correctness tool, not a speed one).

``group_norm_silu`` is timed apart, on a CIFAR-10 UNet activation (GN_SHAPE, with scale-shift and SiLU as in a
ResBlock's out_layers): ``unfused`` is the UNet's own modules in the benchmark dtype, ``ref`` the float32 reference,
``triton`` the fused kernel (GPU only).
"""

from __future__ import annotations

import pytest
import torch

from diffsmooth_fast.ops import (
    denoise_replicate,
    gaussian_noise,
    group_norm_silu,
    noisy_input,
    unavailable_reason,
    vote,
)
from diffsmooth_fast.ops.reference import denoise_replicate_ref, group_norm_silu_ref, noisy_input_ref, vote_ref

B, M, SHAPE, K = 250, 5, (3, 32, 32), 10
NUMEL = 3 * 32 * 32
SIGMA, SQRT_ABAR, C_X, C_EPS, LOCAL_SIGMA = 0.25, 0.6, 1.6, 1.2, 0.28
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
SEED, STREAM = 1234, 7
# (implementation, device): "ref" and "torch+noise" are PyTorch; the others are backends of the fused op.
IMPLS = [("ref", "cpu"), ("torch+noise", "cpu"), ("cpp", "cpu"), ("ref", "cuda"), ("torch+noise", "cuda"),
         ("triton", "cuda"), ("cuda", "cuda")]
SLOW = {("ref", "cpu")}  # the PyTorch Philox reference draws ~2 s per batch on CPU: few rounds


def _inputs(device: str) -> dict:
    gen = torch.Generator().manual_seed(0)
    t = {
        "x": torch.rand(SHAPE, generator=gen),
        "noise": torch.randn((B, *SHAPE), generator=gen),
        "x_t": torch.randn((B, *SHAPE), generator=gen),
        "unet": torch.randn((B, 6, *SHAPE[1:]), generator=gen),
        "fixed": torch.randn((M, *SHAPE), generator=gen),
        "local": torch.randn((B * M, *SHAPE), generator=gen),
        "logits": 3 * torch.randn((B * M, K), generator=gen),
        "mean": torch.tensor(MEAN),
        "std": torch.tensor(STD),
    }
    return {k: v.to(device) for k, v in t.items()}


def _noise(shape, device):
    return gaussian_noise(shape, SEED, 0, stream=STREAM, device=device)  # the device's fast generator


def _call(op: str, impl: str, device: str, t: dict):
    eps = t["unet"][:, :3]  # the learn_sigma UNet's eps channels: a strided view
    norm = dict(mean=t["mean"], std=t["std"])
    if op == "noisy_input-drawn":
        if impl == "ref":
            return lambda: noisy_input_ref(t["x"], B, SIGMA, SQRT_ABAR, seed=SEED, stream=STREAM)
        if impl == "torch+noise":
            return lambda: noisy_input_ref(t["x"], B, SIGMA, SQRT_ABAR, noise=_noise((B, *SHAPE), device))
        return lambda: noisy_input(t["x"], B, SIGMA, SQRT_ABAR, seed=SEED, stream=STREAM, backend=impl)
    if op == "noisy_input-given":
        if impl == "ref":
            return lambda: noisy_input_ref(t["x"], B, SIGMA, SQRT_ABAR, noise=t["noise"])
        return lambda: noisy_input(t["x"], B, SIGMA, SQRT_ABAR, noise=t["noise"], backend=impl)
    if op == "denoise-fresh":
        if impl == "ref":
            return None  # the PyTorch Philox reference takes ~10 s for B*m*numel normals: torch+noise instead
        if impl == "torch+noise":
            return lambda: denoise_replicate_ref(t["x_t"], eps, C_X, C_EPS, M, LOCAL_SIGMA,
                                                 local_noise=_noise((B * M, *SHAPE), device), **norm)
        return lambda: denoise_replicate(t["x_t"], eps, C_X, C_EPS, M, LOCAL_SIGMA, seed=SEED, stream=STREAM,
                                         backend=impl, **norm)
    if op == "denoise-fixed":  # the reference's mode: the same m noises for every sample
        if impl == "ref":
            return lambda: denoise_replicate_ref(t["x_t"], eps, C_X, C_EPS, M, LOCAL_SIGMA, local_noise=t["fixed"],
                                                 **norm)
        return lambda: denoise_replicate(t["x_t"], eps, C_X, C_EPS, M, LOCAL_SIGMA, local_noise=t["fixed"],
                                         backend=impl, **norm)
    if op == "denoise-given":  # fresh mode with the noise handed in: the op without the generator
        if impl == "ref":
            return lambda: denoise_replicate_ref(t["x_t"], eps, C_X, C_EPS, M, LOCAL_SIGMA, local_noise=t["local"],
                                                 **norm)
        return lambda: denoise_replicate(t["x_t"], eps, C_X, C_EPS, M, LOCAL_SIGMA, local_noise=t["local"],
                                         backend=impl, **norm)
    counts = torch.zeros(K, dtype=torch.int64, device=device)
    if impl == "ref":
        return lambda: vote_ref(t["logits"], M, counts)
    return lambda: vote(t["logits"], M, counts, backend=impl)


# Tensor bytes each op reads and writes (float32), for GB/s; noise counts when it is read from memory.
_IN_OUT = {
    "noisy_input-drawn": (NUMEL * 4, B * NUMEL * 4),
    "noisy_input-given": (NUMEL * 4 + B * NUMEL * 4, B * NUMEL * 4),
    "denoise-fresh": (2 * B * NUMEL * 4, B * M * NUMEL * 4),
    "denoise-fixed": (2 * B * NUMEL * 4 + M * NUMEL * 4, B * M * NUMEL * 4),
    "denoise-given": (2 * B * NUMEL * 4 + B * M * NUMEL * 4, B * M * NUMEL * 4),
    "vote": (B * M * K * 4, K * 8),
}
OPS = list(_IN_OUT)


@pytest.mark.parametrize("impl,device", IMPLS, ids=[f"{i}-{d}" for i, d in IMPLS])
@pytest.mark.parametrize("op", OPS)
def test_fused_op(benchmark, op, impl, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if impl == "torch+noise" and not op.endswith(("drawn", "fresh")):
        pytest.skip("only the drawing ops have a separate noise step")
    if impl not in ("ref", "torch+noise") and unavailable_reason(impl, device):
        pytest.skip(unavailable_reason(impl, device))
    fn = _call(op, impl, device, _inputs(device))
    if fn is None:
        pytest.skip("the pure reference would take ~10 s per call; see torch+noise")

    def run():
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    run()  # warm-up: extension load, Triton compile, allocator
    benchmark.group = op
    if (impl, device) in SLOW:
        benchmark.pedantic(run, rounds=3, iterations=1)
    else:
        benchmark(run)
    if benchmark.stats is not None:
        seconds = benchmark.stats.stats.median
        read, written = _IN_OUT[op]
        benchmark.extra_info["GB/s"] = round((read + written) / seconds / 1e9, 2)
        benchmark.extra_info["Melem/s"] = round(written / 4 / seconds / 1e6, 1)


# GroupNorm + scale-shift + SiLU on a CIFAR-10 UNet activation; float16 on the GPU (the UNet's dtype there).
GN_SHAPE, GN_GROUPS = (128, 256, 16, 16), 32
GN_IMPLS = [("unfused", "cpu"), ("ref", "cpu"), ("unfused", "cuda"), ("ref", "cuda"), ("triton", "cuda")]


def _group_norm_call(impl: str, device: str):
    dtype = torch.float16 if device == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    b, c = GN_SHAPE[:2]
    x = torch.randn(GN_SHAPE, generator=gen).to(device, dtype)
    weight = (1 + 0.2 * torch.randn(c, generator=gen)).to(device, dtype)
    bias = torch.zeros(c, device=device, dtype=dtype)
    scale, shift = (0.3 * torch.randn((b, 2 * c, 1, 1), generator=gen)).to(device, dtype).chunk(2, dim=1)
    if impl == "unfused":  # models/unet.py: GroupNorm32 (float32 inside), then scale-shift and SiLU in dtype
        def unfused():
            y = torch.nn.functional.group_norm(x.float(), GN_GROUPS, weight.float(), bias.float()).to(dtype)
            return torch.nn.functional.silu(y * (1 + scale) + shift)

        return unfused
    if impl == "ref":
        return lambda: group_norm_silu_ref(x, GN_GROUPS, weight, bias, 1e-5, scale, shift)
    return lambda: group_norm_silu(x, GN_GROUPS, weight, bias, 1e-5, scale=scale, shift=shift, backend=impl)


@pytest.mark.parametrize("impl,device", GN_IMPLS, ids=[f"{i}-{d}" for i, d in GN_IMPLS])
def test_group_norm_silu(benchmark, impl, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if impl == "triton" and unavailable_reason(impl, device):
        pytest.skip(unavailable_reason(impl, device))
    fn = _group_norm_call(impl, device)

    def run():
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    run()  # warm-up: Triton compile, allocator
    benchmark.group = "group_norm_silu"
    benchmark(run)
    if benchmark.stats is not None:
        seconds = benchmark.stats.stats.median
        elem_bytes = 2 if device == "cuda" else 4
        # The activation read once and written once: the traffic of a fused pass (the unfused chain moves more).
        moved = 2 * elem_bytes * torch.Size(GN_SHAPE).numel()
        benchmark.extra_info["GB/s"] = round(moved / seconds / 1e9, 2)
        benchmark.extra_info["Melem/s"] = round(torch.Size(GN_SHAPE).numel() / seconds / 1e6, 1)
