"""pytest-benchmark suite of the fused ops on a CIFAR-10 batch: reference vs C++ (CPU) vs Triton and CUDA (GPU).

Run: python -m pytest benchmarks/test_bench_ops.py --benchmark-enable --benchmark-group-by=group
Batch B = 250 images of 3 x 32 x 32, m = 5 local copies, float32. The cases (what each implementation runs, the
bytes each op moves) are those of ``diffsmooth-fast bench ops``, in :mod:`diffsmooth_fast.bench.ops`, which
also gives ratios timed interleaved (steadier on a shared machine than two pytest-benchmark groups minutes
apart). extra_info: GB/s of tensor bytes read and written, ``Melem/s`` of output elements. Triton and CUDA run
only on a GPU (the CPU interpreter is a correctness tool, not a speed one). ``group_norm_silu`` runs on a UNet activation
[B, 256, 16, 16] against the UNet's unfused modules (see the module's docstring).
"""

from __future__ import annotations

import pytest
import torch

from diffsmooth_fast.bench import ops as cases

B = 250
IMPLS = [(impl, device) for device, impls in cases.IMPLS.items() for impl in impls]
SLOW = {("ref", "cpu")}  # the PyTorch Philox reference draws ~2 s per batch on CPU: few rounds


@pytest.mark.parametrize("impl,device", IMPLS, ids=[f"{i}-{d}" for i, d in IMPLS])
@pytest.mark.parametrize("op", cases.OPS)
def test_fused_op(benchmark, op, impl, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    reason = cases.skip_reason(op, impl, device)
    if reason:
        pytest.skip(reason)
    fn = cases.call(op, impl, cases.inputs(device, B))

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
        read, written = cases.bytes_moved(op, B, device)
        benchmark.extra_info["GB/s"] = round((read + written) / seconds / 1e9, 2)
        benchmark.extra_info["Melem/s"] = round(written / 4 / seconds / 1e6, 1)
