"""The local-smoothing vote against its reference: counts, ties, NaN, every logits dtype, no host sync on GPU."""

from __future__ import annotations

import pytest
import torch

from diffsmooth_fast.ops import vote
from diffsmooth_fast.ops.reference import vote_ref

from .test_ops_common import DT_IDS, DTYPES, FAST, GPU_FAST, device_of


def _counts(logits: torch.Tensor, m: int, backend: str, start: torch.Tensor) -> torch.Tensor:
    counts = start.clone().to(logits.device)
    vote(logits, m, counts, backend=backend)
    return counts.cpu()


@pytest.mark.parametrize("backend", ["torch", *FAST])
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("m", [1, 3, 5])
@pytest.mark.parametrize("batch,classes", [(1, 10), (7, 10), (3, 3), (5, 1000)])
def test_matches_reference(backend, dtype, m, batch, classes):
    gen = torch.Generator().manual_seed(batch * 100 + m)
    # Scale 3: the copies of a sample often disagree, so the mean over m (not one row) decides.
    logits = (3 * torch.randn((batch * m, classes), generator=gen)).to(dtype)
    start = torch.randint(0, 50, (classes,), generator=gen)
    want = start.clone()
    vote_ref(logits, m, want)
    got = _counts(logits.to(device_of(backend)), m, backend, start)
    assert torch.equal(got, want) and got.dtype == torch.int64
    assert int((got - start).sum()) == batch


@pytest.mark.parametrize("backend", [FAST[0]])  # C++ only: the Triton interpreter takes a minute at these sizes
@pytest.mark.parametrize("batch,m,classes", [(250, 5, 10), (1500, 5, 10), (3, 7, 400)],
                         ids=["cifar-blocks", "threaded", "sample-per-block"])
def test_block_sizes(backend, batch, m, classes):
    """The C++ kernel's blocks of samples: a partial last block, the OpenMP path, samples larger than a block."""
    gen = torch.Generator().manual_seed(batch + m)
    logits = 4 * torch.randn((batch * m, classes), generator=gen)
    want = torch.zeros(classes, dtype=torch.int64)
    vote_ref(logits, m, want)
    assert torch.equal(_counts(logits.to(device_of(backend)), m, backend, torch.zeros(classes, dtype=torch.int64)),
                       want)


@pytest.mark.parametrize("backend", ["torch", *FAST])
def test_extreme_logits(backend):
    """-inf logits, spreads far beyond exp's range (probabilities that underflow to 0) and huge magnitudes."""
    inf = float("inf")
    logits = torch.tensor([[-inf, 0.0, -inf, -1.0], [-inf, -inf, -inf, 5.0],    # sample 0: class 3
                           [1e30, -1e30, 0.0, 1e30], [0.0, 0.0, 0.0, 0.0],     # sample 1: tie 0/3 -> 0
                           [-300.0, -200.0, -90.0, -100.0], [0.0, -120.0, -0.5, -0.6]])  # sample 2: class 2
    got = _counts(logits.to(device_of(backend)), 2, backend, torch.zeros(4, dtype=torch.int64))
    want = torch.zeros(4, dtype=torch.int64)
    vote_ref(logits, 2, want)
    assert got.tolist() == want.tolist() == [1, 0, 1, 1]


@pytest.mark.parametrize("backend", ["torch", *FAST])
def test_mean_of_softmax_not_majority(backend):
    """Two copies pick class 0 narrowly, one picks class 2 overwhelmingly: the mean softmax picks class 2."""
    logits = torch.tensor([[1.0, 0.0, 0.9], [1.0, 0.0, 0.9], [-5.0, -5.0, 5.0]])
    got = _counts(logits.to(device_of(backend)), 3, backend, torch.zeros(3, dtype=torch.int64))
    assert got.tolist() == [0, 0, 1]


@pytest.mark.parametrize("backend", ["torch", *FAST])
def test_ties_go_to_the_first_class(backend):
    logits = torch.tensor([[0.0, 2.0, 2.0, 1.0], [0.0, 2.0, 2.0, 1.0],  # sample 0: exact tie 1/2 -> 1
                           [5.0, 5.0, 5.0, 5.0], [5.0, 5.0, 5.0, 5.0],  # sample 1: all equal -> 0
                           [1.0, 3.0, 1.0, 3.0], [1.0, 1.0, 1.0, 1.0]])  # sample 2: tie 1/3 in the mean -> 1
    got = _counts(logits.to(device_of(backend)), 2, backend, torch.zeros(4, dtype=torch.int64))
    assert got.tolist() == [1, 2, 0, 0]


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpp", marks=FAST[0].marks)])
def test_nan_like_torch_argmax(backend):
    """A NaN logit makes its sample's mean softmax NaN; torch.argmax (and the C++ kernel) then pick class 0."""
    logits = torch.tensor([[1.0, float("nan"), 3.0], [0.0, 0.0, 9.0]])
    got = _counts(logits, 1, backend, torch.zeros(3, dtype=torch.int64))
    assert got.tolist() == [1, 0, 1]


@pytest.mark.parametrize("backend", FAST)
def test_float64_and_strided_logits(backend):
    gen = torch.Generator().manual_seed(0)
    wide = torch.randn((6, 20), generator=gen, dtype=torch.float64)
    logits = wide[:, ::2]  # [6, 10], not contiguous
    want = torch.zeros(10, dtype=torch.int64)
    vote_ref(logits, 3, want)
    assert torch.equal(_counts(logits.to(device_of(backend)), 3, backend, torch.zeros(10, dtype=torch.int64)), want)
    empty = _counts(torch.zeros((0, 10), device=device_of(backend)), 5, backend, torch.zeros(10, dtype=torch.int64))
    assert empty.sum() == 0


@pytest.mark.parametrize("backend", GPU_FAST)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_gpu_without_host_sync(backend, dtype):
    """Matches the reference on CUDA and captures into a CUDA graph (capture fails on any host sync)."""
    gen = torch.Generator().manual_seed(1)
    for batch, m, classes in [(7, 3, 10), (250, 5, 10), (50, 5, 1000)]:
        logits = (3 * torch.randn((batch * m, classes), generator=gen)).to(dtype)
        want = torch.zeros(classes, dtype=torch.int64)
        vote_ref(logits, m, want)
        assert torch.equal(_counts(logits.cuda(), m, backend, torch.zeros(classes, dtype=torch.int64)), want)
    logits = torch.randn((15, 10), device="cuda", dtype=dtype)
    counts = torch.zeros(10, dtype=torch.int64, device="cuda")
    vote(logits, 5, counts, backend=backend)  # warm-up (Triton compiles outside the capture)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        vote(logits, 5, counts, backend=backend)
    counts.zero_()
    graph.replay()
    graph.replay()
    assert int(counts.sum()) == 6
