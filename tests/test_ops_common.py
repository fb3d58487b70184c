"""What the fused ops share: backend parameters, the precision rule, opcheck of every op, argument errors.

The per-op files (test_ops_noisy_input.py, test_ops_denoise.py, test_ops_vote.py) import the helpers here.
"""

from __future__ import annotations

import os

import pytest
import torch

from diffsmooth_fast.ops import denoise_replicate, noisy_input, unavailable_reason, vote

from .conftest import HAS_GPU, has_triton

needs_cpp = pytest.mark.skipif(unavailable_reason("cpp", "cpu") is not None, reason="the C++ extension is not built")
needs_triton = pytest.mark.skipif(
    not has_triton() or (not HAS_GPU and os.environ.get("TRITON_INTERPRET") != "1"),
    reason="needs triton (on a GPU, or under TRITON_INTERPRET=1)",
)
# Tests that hand Triton CPU tensors: only the interpreter runs those. On a GPU machine conftest.py leaves
# TRITON_INTERPRET unset, the kernels compile for the GPU, and triton refuses CPU tensors (ops/dispatch.py).
needs_triton_interpreter = pytest.mark.skipif(
    not has_triton() or os.environ.get("TRITON_INTERPRET") != "1",
    reason="runs Triton on CPU tensors: needs TRITON_INTERPRET=1 (the GPU runs are the gpu-marked tests)",
)
# The fast backends this machine can run, and where their tensors live (Triton on CPU = the interpreter).
FAST = [pytest.param("cpp", marks=needs_cpp), pytest.param("triton", marks=needs_triton)]
GPU_FAST = [pytest.param("cuda", marks=pytest.mark.gpu), pytest.param("triton", marks=pytest.mark.gpu)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DT_IDS = ["f32", "f16", "bf16"]
FP32_ATOL = 1e-5


def device_of(backend: str) -> str:
    return "cuda" if backend == "cuda" or (backend == "triton" and HAS_GPU) else "cpu"


def interpreted(backend: str) -> bool:
    return backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1"


def check_output(got: torch.Tensor, ref32: torch.Tensor, naive: torch.Tensor | None, dtype: torch.dtype,
                 channels_last: bool, backend: str = "") -> None:
    """The project's precision rule (DESIGN.md).

    float32: within 1e-5 of the float32 reference. float16/bfloat16: the kernel's largest error against the
    float32 reference is at most twice that of ``naive``, plain PyTorch computing the same formula in dtype, and
    every value is within one unit in the last place of the reference rounded to dtype (one rounding, at the
    store). The Triton interpreter converts float32 to bfloat16 by truncation (numpy has no bfloat16; on a GPU
    the same `.to()` rounds to nearest even): there only the one-ulp bound is checked.
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert got.dtype == dtype and got.shape == ref32.shape and got.is_contiguous(memory_format=fmt)
    got, ref32 = got.cpu(), ref32.cpu()
    if dtype == torch.float32:
        torch.testing.assert_close(got, ref32, atol=FP32_ATOL, rtol=0)
        return
    err = (got.float() - ref32).abs().max()
    err_naive = (naive.cpu().float() - ref32).abs().max()
    if not (dtype == torch.bfloat16 and interpreted(backend)):
        assert err <= 2 * err_naive, f"{dtype}: kernel error {err} vs plain PyTorch {err_naive}"
    torch.testing.assert_close(got.float(), ref32.to(dtype).float(), rtol=torch.finfo(dtype).eps, atol=1e-5)


@needs_cpp
def test_opcheck_noisy_input():
    op = torch.ops.diffsmooth_fast.noisy_input_.default
    x = torch.rand(3, 5, 7)
    for out in (torch.empty(2, 3, 5, 7), torch.empty(2, 3, 5, 7, dtype=torch.float16).to(memory_format=torch.channels_last)):
        torch.library.opcheck(op, (out, x, None, 0.25, 0.7, True, 3, 11, -5))
        torch.library.opcheck(op, (out, x, torch.randn(2, 3, 5, 7), 0.5, 1.0, False, 0, 0, 0))


@needs_cpp
def test_opcheck_denoise_replicate():
    op = torch.ops.diffsmooth_fast.denoise_replicate_.default
    x_t = torch.randn(2, 3, 5, 5)
    eps = torch.randn(2, 6, 5, 5)[:, :3]
    out = torch.empty(6, 3, 5, 5, dtype=torch.bfloat16)
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.3, 0.25])
    torch.library.opcheck(op, (out, x_t, eps, torch.randn(3, 3, 5, 5), mean, std, 3, 1.2, 0.6, 0.25, 0, 0, 0))
    torch.library.opcheck(op, (out, x_t, eps, None, None, None, 3, 1.2, 0.6, 0.25, 9, 4, 2))
    torch.library.opcheck(op, (torch.empty(2, 3, 5, 5), x_t.half(), eps.half(), None, mean, None, 1, 1.2, 0.6, 0.0,
                               0, 0, 0))


@needs_cpp
def test_opcheck_vote():
    counts = torch.zeros(10, dtype=torch.int64)
    torch.library.opcheck(torch.ops.diffsmooth_fast.vote_.default, (counts, torch.randn(15, 10), 5))
    torch.library.opcheck(torch.ops.diffsmooth_fast.vote_.default, (counts, torch.randn(3, 10).half(), 1))


@needs_cpp
@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: torch.ops.diffsmooth_fast.noisy_input_(torch.empty(2, 3, 4, 4), torch.rand(3, 4, 5), None, 0.1, 1.0,
                                                        True, 0, 0, 0), "x must be"),
        (lambda: torch.ops.diffsmooth_fast.noisy_input_(torch.empty(2, 3, 4, 4).transpose(2, 3), torch.rand(3, 4, 4),
                                                        None, 0.1, 1.0, True, 0, 0, 0), "contiguous or channels_last"),
        (lambda: torch.ops.diffsmooth_fast.noisy_input_(torch.empty(2, 3, 4, 4, dtype=torch.float64),
                                                        torch.rand(3, 4, 4), None, 0.1, 1.0, True, 0, 0, 0), "float16"),
        (lambda: torch.ops.diffsmooth_fast.denoise_replicate_(torch.empty(5, 3, 4, 4), torch.rand(2, 3, 4, 4),
                                                              torch.rand(2, 3, 4, 4), None, None, None, 3, 1.0, 1.0,
                                                              0.0, 0, 0, 0), "B\\*m rows"),
        (lambda: torch.ops.diffsmooth_fast.denoise_replicate_(torch.empty(6, 3, 4, 4), torch.rand(2, 3, 4, 4),
                                                              torch.rand(2, 3, 4, 4).half(), None, None, None, 3, 1.0,
                                                              1.0, 0.0, 0, 0, 0), "one dtype"),
        (lambda: torch.ops.diffsmooth_fast.vote_(torch.zeros(4, dtype=torch.int64), torch.rand(6, 4), 4), "divide"),
        (lambda: torch.ops.diffsmooth_fast.vote_(torch.zeros(4, dtype=torch.int32), torch.rand(6, 4), 3), "int64"),
    ],
)
def test_op_checks(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: noisy_input(torch.rand(3, 4, 4), 2, 0.25, 0.5), "seed"),
        (lambda: noisy_input(torch.rand(4, 4), 2, 0.25, 0.5, seed=0), "\\[C, H, W\\]"),
        (lambda: noisy_input(torch.rand(3, 4, 4), -1, 0.25, 0.5, seed=0), "batch"),
        (lambda: noisy_input(torch.rand(3, 4, 4), 2, float("nan"), 0.5, seed=0), "sigma"),
        (lambda: noisy_input(torch.rand(3, 4, 4), 2, 0.25, 0.5, seed=0, dtype=torch.float64), "dtype"),
        (lambda: noisy_input(torch.rand(3, 4, 4), 2, 0.25, 0.5, noise=torch.randn(3, 3, 4, 4)), "noise must be"),
        (lambda: noisy_input(torch.rand(3, 4, 4), 2, 0.25, 0.5, seed=0, offset=2**63 - 5), "2\\*\\*63"),
        (lambda: noisy_input(torch.rand(3, 4, 4), 2, 0.25, 0.5, seed=0, backend="nonsense"), "unknown backend"),
        (lambda: denoise_replicate(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), 1.0, 0.5, 3, 0.25), "seed"),
        (lambda: denoise_replicate(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 5), 1.0, 0.5, 3, 0.0), "eps must"),
        (lambda: denoise_replicate(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), 1.0, 0.5, -1, 0.0), "m must"),
        (lambda: denoise_replicate(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), 1.0, 0.5, 3, -0.1), "local_sigma"),
        (lambda: denoise_replicate(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), 1.0, 0.5, 3, 0.2,
                                   local_noise=torch.randn(2, 3, 4, 4)), "local_noise must be"),
        (lambda: denoise_replicate(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), 1.0, 0.5, 3, 0.0, mean=[0.5, 0.5]),
         "one value per channel"),
        (lambda: vote(torch.randn(6, 4), 4, torch.zeros(4, dtype=torch.int64)), "multiple of m"),
        (lambda: vote(torch.randn(6, 4), 0, torch.zeros(4, dtype=torch.int64)), "m must"),
        (lambda: vote(torch.randn(6, 4), 3, torch.zeros(5, dtype=torch.int64)), "counts must"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
