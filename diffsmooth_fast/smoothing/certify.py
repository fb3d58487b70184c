"""Randomized smoothing of any base classifier: Cohen et al.'s PREDICT and CERTIFY, sampling by position.

The smoothed classifier is g(x) = argmax_c P(f(x + sigma * delta) = c), delta ~ N(0, I). Its noise is drawn
by position from the project's Philox generator: sample j of phase p (selection, estimation, prediction) of
image idx always gets the same noise, whatever the batch size, and the phases use disjoint counter streams,
so the n0 selection samples and the n estimation samples are independent as the certificate requires.
Counts stay on the device and each call synchronises with the host once, at the end.

Because noise is indexed by position, a run can be split by sample: with a :class:`SampleShard`, each process
draws only its range of every phase's samples and the counts are summed across processes (an all-reduce), which
gives exactly the counts, predictions and radii of a single process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from ..checks import check_float, check_int
from ..ops import gaussian_noise, resolve_backend
from . import sequential, stats
from .noise_address import (
    PHASE_ESTIMATION,
    PHASE_PREDICTION,
    PHASE_SELECTION,
    SamplePositions,
    noise_stream,
)

_X_NOT_FINITE = 1
LOGITS_NOT_FINITE = 2  # the status bit a counting base classifier sets for non-finite logits


@runtime_checkable
class CountingClassifier(Protocol):
    """A base classifier that draws the smoothing noise itself and counts its own votes (the fast engine's path).

    Instead of being called on noisy copies that :class:`Smooth` made, it is asked for the class counts of a range
    of samples: ``count(x, positions, counts, status)`` adds the votes of samples ``positions.first`` to
    ``positions.first + positions.count - 1`` of phase ``positions.phase`` of image x to ``counts`` [K] (int64, on
    x's device) and ORs ``LOGITS_NOT_FINITE`` into ``status`` (an int64 0-dim tensor) when its outputs are not
    finite, without a host sync. Its smoothing noise must be the noise :class:`Smooth` would draw: standard normals
    at the positions :mod:`~diffsmooth_fast.smoothing.noise_address` gives (stream ``positions.stream``, sample
    j at ``[j*numel, (j+1)*numel)``), times ``smoothing_sigma``. It is also callable like any base classifier
    (scores of a noisy batch), for the checks made before a run.
    """

    counts_samples: bool
    smoothing_sigma: float

    def count(self, x: torch.Tensor, positions: SamplePositions, counts: torch.Tensor,
              status: torch.Tensor) -> None: ...


def check_scores(scores: object, rows: int, num_classes: int) -> torch.Tensor:
    """The base classifier's output for ``rows`` inputs, or a one-line error if it is not [rows, num_classes]."""
    if not isinstance(scores, torch.Tensor):
        raise ValueError(f"base classifier must return a tensor of logits, got {type(scores).__name__}")
    if tuple(scores.shape) != (rows, num_classes):
        raise ValueError(
            f"base classifier returned shape {list(scores.shape)} for a batch of {rows}; "
            f"expected [{rows}, {num_classes}] (batch, num_classes)"
        )
    return scores


@dataclass(frozen=True)
class SampleShard:
    """This process's part of every image's samples when several processes certify the same image.

    Process ``rank`` of ``world_size`` draws samples ``[num*rank//world_size, num*(rank+1)//world_size)`` of each
    phase (disjoint ranges that cover ``[0, num)``; the noise of a sample depends only on its position, not on
    who draws it), and ``all_reduce`` sums an int64 tensor in place over all processes (``torch.distributed``'s
    all-reduce, or anything with the same effect). Every process must call ``certify``/``predict`` on the same
    images in the same order.
    """

    rank: int
    world_size: int
    all_reduce: Callable[[torch.Tensor], None]

    def __post_init__(self) -> None:
        check_int("world_size", self.world_size, 1)
        check_int("rank", self.rank, 0, below=self.world_size)

    def part(self, num: int) -> tuple[int, int]:
        """The ``[start, stop)`` range of ``num`` samples that this process draws."""
        return num * self.rank // self.world_size, num * (self.rank + 1) // self.world_size


def _smoothing_sigma(base_classifier: object, sigma: object) -> float:
    """The smoothing sigma: the one given, the base classifier's own (``smoothing_sigma``), and never two."""
    own = getattr(base_classifier, "smoothing_sigma", None)
    if sigma is None:
        if own is None:
            raise ValueError("sigma is required: this base classifier was not built for one sigma")
        sigma = own
    sigma = check_float("sigma", sigma, above=0.0)
    if own is not None and float(own) != float(sigma):
        raise ValueError(f"sigma {sigma} differs from the base classifier's method sigma {own}: the noise Smooth "
                         f"draws must be the noise the method purifies; leave sigma out to take the method's")
    return float(sigma)


class Smooth:
    """A smoothed classifier around ``base_classifier`` with isotropic Gaussian noise of std ``sigma``.

    Args:
        base_classifier: maps a batch [B, C, H, W] in pixel space to logits [B, num_classes]. Put it in eval
            mode first; it is called under ``torch.no_grad``. If its class sets ``accepts_positions = True`` it
            also receives ``positions=`` (a :class:`SamplePositions`) to draw its own noise by sample. A
            :class:`CountingClassifier` (``counts_samples = True``) is asked for counts instead and draws the
            smoothing noise itself.
        num_classes: number of classes K >= 2.
        sigma: noise level (> 0, finite), in the units of x (pixels in [0, 1]). A base classifier that was built
            for one sigma (``smoothing_sigma``: every method of :mod:`diffsmooth_fast.engine.method`) gives it;
            then ``sigma`` may be left out, and a different one is refused.
        seed: Philox key in [0, 2**64); with the image index and phase it fixes every noise sample.
        backend: noise backend (``auto``, ``cuda``, ``triton``, ``cpp``, ``torch``), resolved once per device.
        shard: draw only this process's part of the samples and sum the counts over processes (see
            :class:`SampleShard`); None draws them all.
    """

    ABSTAIN = stats.ABSTAIN

    def __init__(
        self,
        base_classifier: Callable[[torch.Tensor], torch.Tensor],
        num_classes: int,
        sigma: float | None = None,
        *,
        seed: int = 0,
        backend: str | None = "auto",
        shard: SampleShard | None = None,
    ) -> None:
        if not callable(base_classifier):
            raise ValueError(f"base_classifier must be callable, got {type(base_classifier).__name__}")
        check_int("num_classes", num_classes, 2)
        sigma = _smoothing_sigma(base_classifier, sigma)
        if getattr(base_classifier, "counts_samples", False) and not isinstance(base_classifier, CountingClassifier):
            raise ValueError(f"{type(base_classifier).__name__} sets counts_samples but lacks count() or "
                             f"smoothing_sigma (see CountingClassifier)")
        check_int("seed", seed, 0, below=2**64)
        self.base_classifier = base_classifier
        self.num_classes = num_classes
        self.sigma = float(sigma)
        self.seed = seed
        self.backend = backend
        if shard is not None and not isinstance(shard, SampleShard):
            raise ValueError(f"shard must be a SampleShard, got {type(shard).__name__}")
        self.shard = shard

    def with_shard(self, shard: SampleShard | None) -> Smooth:
        """The same smoothed classifier drawing only ``shard``'s part of the samples (None: all of them)."""
        return Smooth(self.base_classifier, self.num_classes, self.sigma, seed=self.seed, backend=self.backend,
                      shard=shard)

    def certify(
        self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int, *, idx: int = 0
    ) -> tuple[int, float]:
        """Cohen's CERTIFY: with probability >= 1 - alpha over the noise, g is constant within the radius.

        Args:
            x: one input [C, H, W].
            n0: selection samples (to guess the top class); n: estimation samples (to bound its probability).
            alpha: failure probability of the certificate, in (0, 1).
            batch_size: samples per base-classifier call.
            idx: the image's index in its dataset; it selects the image's noise streams.

        Returns:
            ``(prediction, radius)``; ``(Smooth.ABSTAIN, 0.0)`` when p_A's lower bound is below 1/2.
        """
        check_int("n0", n0, 1)
        check_int("n", n, 1)
        alpha = check_float("alpha", alpha, above=0.0, below=1.0)
        check_int("batch_size", batch_size, 1)
        status = self._check_x(x, idx)
        counts0 = self._counts(x, n0, batch_size, idx, PHASE_SELECTION, status)
        counts = self._counts(x, n, batch_size, idx, PHASE_ESTIMATION, status)
        if self.shard is not None:
            counts0, counts, status = self._reduce(status, counts0, counts)
        c_a = counts0.argmax()  # first maximum on ties, like numpy
        # gather, not counts[c_a]: indexing with a 0-dim tensor calls .item(), a second host sync on CUDA
        n_a = counts.gather(0, c_a.view(1)).view(())
        c_a, n_a, flags = torch.stack([c_a, n_a, status]).tolist()  # the one host sync
        self._raise_on(flags)
        return stats.certify_decision(c_a, n_a, n, alpha, self.sigma)

    def certify_sequential(
        self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int, *, radii: Sequence[float],
        idx: int = 0,
    ) -> tuple[int, float, int]:
        """CERTIFY that stops early once the image's radius on the grid ``radii`` is decided (see
        :mod:`~diffsmooth_fast.smoothing.sequential`): with probability >= 1 - alpha, g is constant within the
        radius returned, as for :meth:`certify`.

        Selection is :meth:`certify`'s (n0 samples). Estimation draws the same samples as :meth:`certify`, in order,
        up to n, and looks at the counts at checkpoints that depend on the settings alone (n, alpha, sigma and
        ``radii``; batches are cut there, so the results do not depend on ``batch_size``), with one host sync per
        look.

        Returns:
            ``(prediction, radius, samples)``: the certificate at the stop (``(Smooth.ABSTAIN, 0.0, ...)`` when the
            lower bound is below 1/2) and the number of estimation samples drawn.
        """
        check_int("n0", n0, 1)
        check_int("n", n, 1)
        alpha = check_float("alpha", alpha, above=0.0, below=1.0)
        check_int("batch_size", batch_size, 1)
        radii = [check_float("radius", r, minimum=0.0) for r in radii]
        if not radii:
            raise ValueError("radii must name at least one radius (e.g. 0, 0.25, 0.5, ...)")
        status = self._check_x(x, idx)
        counts0 = self._counts(x, n0, batch_size, idx, PHASE_SELECTION, status)
        if self.shard is not None:
            counts0, status = self._reduce(status, counts0)
        c_a = counts0.argmax()  # first maximum on ties, like numpy
        plan = sequential.schedule(n, alpha, self.sigma, radii)
        counts, used = torch.zeros_like(counts0), 0
        for checkpoint in plan.checkpoints:
            part = self._counts(x, checkpoint - used, batch_size, idx, PHASE_ESTIMATION, status, first=used)
            if self.shard is not None:
                part, status = self._reduce(status, part)
            counts += part
            used = checkpoint
            n_a = counts.gather(0, c_a.view(1)).view(())
            c_a_host, n_a_host, flags = torch.stack([c_a, n_a, status]).tolist()  # the look's one host sync
            self._raise_on(flags)
            decision = sequential.look(n_a_host, used, plan, self.sigma, radii)
            if decision.stop:
                break
        return (c_a_host if decision.prediction_certified else self.ABSTAIN), decision.radius, used

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int, *, idx: int = 0) -> int:
        """Cohen's PREDICT: the top class of n samples, or ABSTAIN unless a binomial test at level alpha
        separates it from the runner-up. The probability of returning a class other than g(x) is <= alpha."""
        check_int("n", n, 1)
        alpha = check_float("alpha", alpha, above=0.0, below=1.0)
        check_int("batch_size", batch_size, 1)
        status = self._check_x(x, idx)
        counts = self._counts(x, n, batch_size, idx, PHASE_PREDICTION, status)
        if self.shard is not None:
            counts, status = self._reduce(status, counts)
        *counts_host, flags = torch.cat([counts, status.reshape(1)]).tolist()  # the one host sync
        self._raise_on(flags)
        return stats.predict_decision(counts_host, alpha)

    def sample_counts(
        self,
        x: torch.Tensor,
        num: int,
        batch_size: int,
        *,
        idx: int = 0,
        phase: int = PHASE_ESTIMATION,
        status: torch.Tensor | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """Class counts [num_classes] (int64, on x's device) of the base classifier on ``num`` noisy copies:
        samples ``start`` to ``start + num - 1`` of the phase.

        Sample j uses noise positions [j*numel, (j+1)*numel) of stream ``noise_stream(idx, phase)``, so the
        counts do not depend on ``batch_size``, and the counts of disjoint ranges of samples add up exactly to
        the counts of their union (what :class:`SampleShard` relies on). Non-finite logits set a bit in
        ``status`` (checked by the caller at its single sync) instead of synchronising here. This ignores
        ``self.shard``: it counts the samples asked for.
        """
        check_int("start", start, 0)
        counts = torch.zeros(self.num_classes, dtype=torch.int64, device=x.device)
        if status is None:
            status = torch.zeros((), dtype=torch.int64, device=x.device)
        with torch.no_grad():
            if getattr(self.base_classifier, "counts_samples", False):
                for first in range(start, start + num, batch_size):
                    positions = SamplePositions(self.seed, idx, phase, first, min(batch_size, start + num - first))
                    self.base_classifier.count(x, positions, counts, status)
                return counts
            self._plain_counts(x, num, batch_size, idx, phase, status, start, counts)
        return counts

    def _plain_counts(self, x: torch.Tensor, num: int, batch_size: int, idx: int, phase: int, status: torch.Tensor,
                      start: int, counts: torch.Tensor) -> None:
        """The reference path: the noisy copies made here, the base classifier's scores argmaxed into counts."""
        backend = resolve_backend(self.backend, x.device.type)
        stream = noise_stream(idx, phase)
        wants_positions = bool(getattr(self.base_classifier, "accepts_positions", False))
        numel = x.numel()
        for first in range(start, start + num, batch_size):
            b = min(batch_size, start + num - first)
            noise = gaussian_noise(
                (b, *x.shape), self.seed, first * numel, stream=stream, backend=backend, device=x.device
            )
            batch = x.unsqueeze(0) + self.sigma * noise.to(x.dtype)
            if wants_positions:
                logits = self.base_classifier(batch, positions=SamplePositions(self.seed, idx, phase, first, b))
            else:
                logits = self.base_classifier(batch)
            check_scores(logits, b, self.num_classes)
            status |= (~torch.isfinite(logits).all()).to(torch.int64) * LOGITS_NOT_FINITE
            counts.scatter_add_(0, logits.argmax(dim=1), torch.ones(b, dtype=torch.int64, device=x.device))

    def _counts(self, x: torch.Tensor, num: int, batch_size: int, idx: int, phase: int,
                status: torch.Tensor, first: int = 0) -> torch.Tensor:
        """This process's counts of the ``num`` samples from ``first`` on: all of them, or its shard's range."""
        start, stop = self.shard.part(num) if self.shard is not None else (0, num)
        return self.sample_counts(x, stop - start, batch_size, idx=idx, phase=phase, status=status,
                                  start=first + start)

    def _reduce(self, status: torch.Tensor, *counts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Sum ``counts`` over the shard's processes in one all-reduce, and OR their ``status`` bits (summed as
        one 0/1 entry per bit, since a sum of bit masks is not their OR). Returns (*counts, status)."""
        bits = (_X_NOT_FINITE, LOGITS_NOT_FINITE)
        flags = torch.stack([((status & bit) != 0).to(torch.int64) for bit in bits])
        packed = torch.cat([*counts, flags])
        self.shard.all_reduce(packed)
        *summed, flags = packed.split([c.numel() for c in counts] + [len(bits)])
        status = sum((flags[i] > 0).to(torch.int64) * bit for i, bit in enumerate(bits))
        return (*summed, status)

    def _check_x(self, x: torch.Tensor, idx: int) -> torch.Tensor:
        """Validate x's type and shape now; its values on the device at the caller's sync (status bit)."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor [C, H, W], got {type(x).__name__}")
        if x.ndim != 3:
            raise ValueError(f"x must have shape [C, H, W], got {list(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
        check_int("idx", idx, 0, below=2**32)
        if x.device.type == "cpu" and not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN or infinite values")  # cheap on CPU: fail before sampling
        return (~torch.isfinite(x).all()).to(torch.int64) * _X_NOT_FINITE

    @staticmethod
    def _raise_on(flags: int) -> None:
        if flags & _X_NOT_FINITE:
            raise ValueError("x contains NaN or infinite values")
        if flags & LOGITS_NOT_FINITE:
            raise ValueError("base classifier returned NaN or infinite logits")
