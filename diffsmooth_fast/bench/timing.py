"""How the end-to-end benchmark times a run: a certifier (the engine's or the paper-style baseline's) split into
selection, estimation and decision, warmed up on every batch shape before the clock, timed between device
synchronisations (see :mod:`diffsmooth_fast.bench.end_to_end` for what is reported)."""

from __future__ import annotations

import time

import numpy as np
import torch

from diffsmooth_fast.bench.paper_baseline import PaperBaseline
from diffsmooth_fast.smoothing import stats
from diffsmooth_fast.smoothing.certify import Smooth
from diffsmooth_fast.smoothing.noise_address import PHASE_ESTIMATION, PHASE_SELECTION

PEAK_FLOPS = 989e12  # H100 SXM dense bf16 tensor-core peak (REFERENCE.md): the MFU denominator
WARMUP_ROUNDS = 2  # the second call of a shape is the first steady one (allocator, cuDNN heuristics, graph replay)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch_sizes(num: int, batch: int) -> list[int]:
    """The distinct batch sizes in which ``num`` samples are drawn ``batch`` at a time (full batches, then the
    rest), largest first: the shapes a phase of ``num`` samples shows the networks."""
    full, rest = divmod(num, batch)
    return ([batch] if full else []) + ([rest] if rest else [])


class EngineCertifier:
    """Cohen's CERTIFY with :class:`Smooth`, split into the parts the clock times: the same calls and the same
    single host read per image as ``Smooth.certify`` (so the same certificates)."""

    def __init__(self, smooth: Smooth, batch: int, alpha: float) -> None:
        self.smooth, self.batch, self.alpha = smooth, batch, alpha
        self.status: torch.Tensor | None = None

    def select(self, x: torch.Tensor, idx: int, num: int) -> torch.Tensor:
        # Non-finite logits set bits here on the device; they are read with the counts, at the image's one sync.
        self.status = torch.zeros((), dtype=torch.int64, device=x.device)
        return self.smooth.sample_counts(x, num, self.batch, idx=idx, phase=PHASE_SELECTION, status=self.status)

    def estimate(self, x: torch.Tensor, idx: int, num: int) -> torch.Tensor:
        return self.smooth.sample_counts(x, num, self.batch, idx=idx, phase=PHASE_ESTIMATION, status=self.status)

    def decide(self, counts0: torch.Tensor, counts: torch.Tensor, n: int) -> tuple[int, float]:
        c_a = counts0.argmax()  # first maximum on ties, as Smooth.certify
        n_a = counts.gather(0, c_a.view(1)).view(())  # not counts[c_a]: that would be a second host sync
        c_a, n_a, flags = torch.stack([c_a, n_a, self.status]).tolist()  # the one host read of the image
        if flags:
            raise ValueError("base classifier returned NaN or infinite logits")
        return stats.certify_decision(c_a, n_a, n, self.alpha, self.smooth.sigma)


class BaselineCertifier:
    """The paper-style baseline's CERTIFY in the same three parts (its counts are on the host already)."""

    def __init__(self, baseline: PaperBaseline, alpha: float) -> None:
        self.baseline, self.batch, self.alpha = baseline, baseline.batch, alpha

    def select(self, x: torch.Tensor, idx: int, num: int) -> np.ndarray:
        return self.baseline.sample_counts(x, num)

    def estimate(self, x: torch.Tensor, idx: int, num: int) -> np.ndarray:
        return self.baseline.sample_counts(x, num)

    def decide(self, counts0: np.ndarray, counts: np.ndarray, n: int) -> tuple[int, float]:
        return self.baseline.decide(counts0, counts, n, self.alpha)


def warm_up(certifier, x: torch.Tensor, idx: int, n0: int, n: int, rounds: int = WARMUP_ROUNDS) -> dict:
    """Draw one batch of every size the timed phases will draw, ``rounds`` times, then decide once (untimed)."""
    selection, estimation = batch_sizes(n0, certifier.batch), batch_sizes(n, certifier.batch)
    for _ in range(rounds):
        counts0 = [certifier.select(x, idx, b) for b in selection]
        counts = [certifier.estimate(x, idx, b) for b in estimation]
    certifier.decide(counts0[0], counts[0], estimation[0])  # one batch's counts are a valid input to the decision
    return {"rounds": rounds, "selection_batches": selection, "estimation_batches": estimation}


def time_run(certifier, images: torch.Tensor, n0: int, n: int, device: torch.device) -> dict:
    """Warm ``certifier`` up on every batch shape, then certify every image, timing selection, estimation and the
    decision separately (a device synchronisation before each clock reading)."""
    warmup = warm_up(certifier, images[0], len(images), n0, n)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    parts = {"selection": 0.0, "estimation": 0.0, "decision": 0.0}
    results = []
    start = time.perf_counter()
    for idx, x in enumerate(images):
        t0 = time.perf_counter()
        counts0 = certifier.select(x, idx, n0)
        _sync(device)
        t1 = time.perf_counter()
        counts = certifier.estimate(x, idx, n)
        _sync(device)
        t2 = time.perf_counter()
        results.append(certifier.decide(counts0, counts, n))
        t3 = time.perf_counter()
        parts["selection"] += t1 - t0
        parts["estimation"] += t2 - t1
        parts["decision"] += t3 - t2
    elapsed = time.perf_counter() - start
    return {
        "warmup": warmup,
        "measured_seconds": elapsed,
        **{f"{part}_seconds": seconds for part, seconds in parts.items()},
        "predictions": [int(p) for p, _ in results],
        "radii": [float(r) for _, r in results],
        "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }


def summarise(run: dict, images: int, n0: int, n: int, N: int, flops_per_sample: float) -> dict:
    """Per image: selection (n0 samples, as measured), estimation (extrapolated to N when n < N), decision; their
    sum; samples per second at n0 + N samples, and MFU."""
    selection = run["selection_seconds"] / images
    estimation = run["estimation_seconds"] / images * N / n
    decision = run["decision_seconds"] / images
    seconds = selection + estimation + decision
    rate = (n0 + N) / seconds
    run.update(
        measured_samples_per_image=n0 + n,
        target_samples_per_image=n0 + N,
        extrapolated=n != N,
        selection_seconds_per_image=selection,
        estimation_seconds_per_image=estimation,
        decision_seconds_per_image=decision,
        seconds_per_image=seconds,
        selection_samples_per_second=images * n0 / run["selection_seconds"],
        estimation_samples_per_second=images * n / run["estimation_seconds"],
        samples_per_second=rate,
        mfu=flops_per_sample * rate / PEAK_FLOPS,
    )
    return run
