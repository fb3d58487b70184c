"""Smooth.certify / Smooth.predict: soundness against closed forms, noise by position, input errors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from scipy.stats import beta, norm

from diffsmooth_fast import Smooth
from diffsmooth_fast.ops import gaussian_noise
from diffsmooth_fast.smoothing.noise_address import PHASE_ESTIMATION, PHASE_SELECTION, noise_stream

SHAPE = (1, 4, 4)


def linear_two_class(w: torch.Tensor, b: float):
    """f(x) = 0 if <w, x> + b > 0 else 1. Its Gaussian-smoothed version has p_0 = Phi((<w,x>+b)/(sigma|w|)),
    so the exact certified radius of g at x is the distance |<w,x>+b|/|w| to the hyperplane."""

    def classifier(batch: torch.Tensor) -> torch.Tensor:
        margin = (batch * w).flatten(1).sum(1) + b
        return torch.stack([margin, -margin], dim=1)

    return classifier


def point_at_distance(w: torch.Tensor, b: float, distance: float) -> torch.Tensor:
    """A point whose signed distance to the hyperplane <w,x>+b = 0 is ``distance`` (positive side: class 0)."""
    unit = w / w.norm()
    return (distance - b / w.norm()) * unit


@pytest.fixture
def plane():
    g = torch.Generator().manual_seed(0)
    return torch.randn(SHAPE, generator=g, dtype=torch.float64), 0.3


def test_certified_radius_rarely_exceeds_truth(plane):
    """Over many certifications the radius exceeds the true one in at most about an alpha fraction."""
    w, b = plane
    sigma, distance, alpha, runs = 0.5, 0.4, 0.1, 300
    smooth = Smooth(linear_two_class(w, b), 2, sigma, seed=11)
    x = point_at_distance(w, b, distance)
    results = [smooth.certify(x, 20, 200, alpha, 200, idx=i) for i in range(runs)]
    over = sum(1 for pred, r in results if pred == 0 and r > distance)
    wrong = sum(1 for pred, _ in results if pred == 1)
    # Bound: alpha*runs plus three binomial standard deviations. A certificate from the point estimate
    # instead of the lower bound exceeds the truth about half the time (~150 of 300) and fails here.
    assert over <= alpha * runs + 3 * math.sqrt(runs * alpha * (1 - alpha))
    assert wrong == 0  # g(x) = 0; returning class 1 with a radius would be an unsound certificate
    certified = [r for pred, r in results if pred == 0]
    assert len(certified) > runs * 0.9  # and it does certify: "always abstain" fails


def test_certified_radius_is_tight_with_large_n(plane):
    w, b = plane
    sigma, distance = 0.25, 0.25
    smooth = Smooth(linear_two_class(w, b), 2, sigma, seed=3)
    pred, radius = smooth.certify(point_at_distance(w, b, distance), 100, 100_000, 0.001, 10_000, idx=7)
    assert pred == 0
    assert 0.95 * distance <= radius <= distance
    # The other side of the plane certifies the other class.
    pred, radius = smooth.certify(point_at_distance(w, b, -distance), 100, 100_000, 0.001, 10_000, idx=8)
    assert pred == 1 and 0.95 * distance <= radius <= distance


def test_abstains_on_the_boundary(plane):
    w, b = plane
    smooth = Smooth(linear_two_class(w, b), 2, 0.5, seed=5)
    x = point_at_distance(w, b, 0.0)
    assert smooth.certify(x, 100, 2000, 0.001, 500) == (Smooth.ABSTAIN, 0.0)
    assert smooth.predict(x, 2000, 0.001, 500) == Smooth.ABSTAIN


def test_constant_classifier_gets_the_clopper_pearson_radius():
    def always_two(batch):
        logits = torch.zeros(batch.shape[0], 4)
        logits[:, 2] = 1.0
        return logits

    n, alpha, sigma = 1000, 0.001, 0.5
    pred, radius = Smooth(always_two, 4, sigma).certify(torch.rand(3, 5, 5), 10, n, alpha, 64)
    assert pred == 2
    assert radius == pytest.approx(sigma * norm.ppf(alpha ** (1 / n)), rel=1e-12)
    assert radius == pytest.approx(sigma * norm.ppf(beta.ppf(alpha, n, 1)), rel=1e-12)


def test_predict_returns_the_smoothed_class(plane):
    w, b = plane
    smooth = Smooth(linear_two_class(w, b), 2, 0.25, seed=1)
    assert smooth.predict(point_at_distance(w, b, 0.5), 500, 0.001, 128) == 0
    assert smooth.predict(point_at_distance(w, b, -0.5), 500, 0.001, 128) == 1


def small_mlp(num_classes: int = 3):
    g = torch.Generator().manual_seed(1)
    w1 = torch.randn(16, 8, generator=g, dtype=torch.float64)
    w2 = torch.randn(8, num_classes, generator=g, dtype=torch.float64)
    return lambda batch: torch.tanh(batch.flatten(1) @ w1) @ w2


def test_counts_do_not_depend_on_batch_size():
    smooth = Smooth(small_mlp(), 3, 0.7, seed=2024)
    x = torch.rand(SHAPE, dtype=torch.float64)
    counts = [smooth.sample_counts(x, 97, bs, idx=4).tolist() for bs in (1, 7, 32, 97, 500)]
    assert all(c == counts[0] for c in counts)
    assert sum(counts[0]) == 97 and sorted(counts[0])[-2] > 0  # the noise is large enough to mix classes
    results = {smooth.certify(x, 13, 211, 0.01, bs, idx=4) for bs in (1, 10, 64, 300)}
    assert len(results) == 1


def test_seed_and_index_change_the_noise():
    smooth = Smooth(small_mlp(), 3, 0.7, seed=2024)
    x = torch.rand(SHAPE, dtype=torch.float64)
    base = smooth.sample_counts(x, 400, 64, idx=4).tolist()
    assert smooth.sample_counts(x, 400, 64, idx=5).tolist() != base
    assert Smooth(small_mlp(), 3, 0.7, seed=2025).sample_counts(x, 400, 64, idx=4).tolist() != base


def test_selection_and_estimation_never_share_noise():
    seen: list[torch.Tensor] = []
    x = torch.rand(SHAPE)
    sigma = 0.5

    def recording(batch):
        seen.append(((batch - x) / sigma).flatten(1))
        return torch.zeros(batch.shape[0], 2)

    n0, n, idx, seed = 30, 50, 9, 77
    Smooth(recording, 2, sigma, seed=seed).certify(x, n0, n, 0.01, 16, idx=idx)
    drawn = torch.cat(seen)
    assert drawn.shape == (n0 + n, x.numel())
    selection, estimation = drawn[:n0], drawn[n0:]
    # Each phase is its own stream, sample j at positions [j*numel, (j+1)*numel).
    want_sel = gaussian_noise((n0, x.numel()), seed, 0, stream=noise_stream(idx, PHASE_SELECTION))
    want_est = gaussian_noise((n, x.numel()), seed, 0, stream=noise_stream(idx, PHASE_ESTIMATION))
    torch.testing.assert_close(selection, want_sel, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(estimation, want_est, atol=1e-5, rtol=1e-5)
    # No estimation sample reuses a selection sample, nor any of its values.
    assert torch.cdist(selection.double(), estimation.double()).min() > 1.0
    assert not torch.isin(want_est, want_sel).any()


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: Smooth(small_mlp(), 3, 0.0), "sigma"),
        (lambda: Smooth(small_mlp(), 3, -0.25), "sigma"),
        (lambda: Smooth(small_mlp(), 3, float("nan")), "sigma"),
        (lambda: Smooth(small_mlp(), 3, float("inf")), "sigma"),
        (lambda: Smooth(small_mlp(), 1, 0.25), "num_classes"),
        (lambda: Smooth("not a model", 3, 0.25), "callable"),
        (lambda: Smooth(small_mlp(), 3, 0.25, seed=-1), "seed"),
    ],
)
def test_bad_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda s, x: s.certify(x, 0, 10, 0.01, 4), "n0"),
        (lambda s, x: s.certify(x, 10, 0, 0.01, 4), "n must"),
        (lambda s, x: s.certify(x, 10, 10, 0.0, 4), "alpha"),
        (lambda s, x: s.certify(x, 10, 10, 1.0, 4), "alpha"),
        (lambda s, x: s.certify(x, 10, 10, 1.5, 4), "alpha"),
        (lambda s, x: s.certify(x, 10, 10, 0.01, 0), "batch_size"),
        (lambda s, x: s.certify(x[0], 10, 10, 0.01, 4), r"\[C, H, W\]"),
        (lambda s, x: s.certify(x[None], 10, 10, 0.01, 4), r"\[C, H, W\]"),
        (lambda s, x: s.certify(torch.full_like(x, float("nan")), 10, 10, 0.01, 4), "NaN"),
        (lambda s, x: s.certify(x, 10, 10, 0.01, 4, idx=-1), "idx"),
        (lambda s, x: s.predict(x, 0, 0.01, 4), "n must"),
        (lambda s, x: s.predict(x, 10, 2.0, 4), "alpha"),
        (lambda s, x: s.predict(x.long(), 10, 0.01, 4), "floating"),
    ],
)
def test_bad_calls(call, match):
    smooth = Smooth(small_mlp(), 3, 0.25)
    with pytest.raises(ValueError, match=match):
        call(smooth, torch.rand(SHAPE, dtype=torch.float64))


def test_bad_classifier_outputs():
    x = torch.rand(SHAPE)
    with pytest.raises(ValueError, match=r"shape \[4, 5\].*expected \[4, 3\]"):
        Smooth(lambda b: torch.zeros(b.shape[0], 5), 3, 0.25).certify(x, 4, 4, 0.01, 4)
    with pytest.raises(ValueError, match="tensor of logits"):
        Smooth(lambda b: [0.0] * b.shape[0], 3, 0.25).predict(x, 4, 0.01, 4)

    def nan_sometimes(batch):
        logits = torch.zeros(batch.shape[0], 3)
        logits[-1, 0] = float("nan")
        return logits

    with pytest.raises(ValueError, match="NaN or infinite logits"):
        Smooth(nan_sometimes, 3, 0.25).certify(x, 4, 8, 0.01, 4)


@pytest.mark.gpu
def test_one_host_sync_per_certify_on_gpu(plane):
    w, b = plane
    w = w.float().cuda()
    x = point_at_distance(w, b, 0.3)
    smooth = Smooth(linear_two_class(w, b), 2, 0.25)
    smooth.certify(x, 10, 100, 0.001, 10)  # warm-up: backend resolution, lazy CUDA init
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            smooth.certify(x, 100, 1000, 0.001, 100)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [c for c in caught if "synchroniz" in str(c.message).lower()]
    assert len(syncs) == 1


def test_certify_reads_no_scalar_from_the_counts():
    """On a GPU every scalar read (.item(), bool(), indexing by a 0-dim tensor) is a host sync; certify's only
    one is the final .tolist(). Counted here on the CPU through the dispatcher: the single scalar read allowed is
    the finiteness check of a CPU input (a CUDA input is checked on the device instead)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class ScalarReads(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += func is torch.ops.aten._local_scalar_dense.default
            return func(*args, **(kwargs or {}))

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    smooth = Smooth(net, 3, 0.25, seed=0, backend="cpp")
    with ScalarReads() as reads:
        smooth.certify(torch.rand(3, 2, 2), 10, 20, 0.01, 8)
    assert reads.count == 1
