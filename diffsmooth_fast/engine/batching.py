"""``--batch auto``: the largest batch of noisy samples whose base-classifier call fits in the GPU's free memory.

The memory of one call grows linearly with the batch: peak(b) ~ fixed + b * per_sample, where ``fixed`` holds
workspaces and anything the call makes once (the fixed local noise, say) and ``per_sample`` the activations of one
noisy sample (for DiffSmooth: one UNet input and the classifier's m copies). Two probe calls on small batches give
both numbers; the batch is then the largest whose predicted peak stays within a fraction of the free memory, and
one call at that batch checks it (halving on out-of-memory). The probes run the real base classifier on real noisy
copies of an image, so whatever it does inside (the m local copies, the K reverse runs) is measured as it is.

The batch size never changes results (noise is drawn by position), only speed and memory, so the same run may be
resumed with another batch, picked automatically or not.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Protocol

import torch

from ..checks import check_float, check_int
from ..ops import gaussian_noise, resolve_backend
from ..smoothing.noise_address import PHASE_PROBE, SamplePositions, noise_stream

log = logging.getLogger("diffsmooth_fast")

DEFAULT_BATCH = 1000  # --batch's default, and what auto picks where there is no GPU memory to size it by
MEMORY_FRACTION = 0.85  # of the free memory: the rest covers allocator fragmentation and the run's other tensors
PROBE_BATCHES = (4, 16)  # two sizes far enough apart to separate the fixed part from the per-sample part
ROUND_TO = 8  # tensor-core kernels tile the batch by 8; a power of two would waste up to half of the memory


class DeviceMemory(Protocol):
    """What :func:`auto_batch` reads of a device's memory (injectable: tests use a fake memory model)."""

    def reset_peak(self) -> None:
        """Release cached memory and start measuring a new peak from what is allocated now."""
        ...

    def peak_bytes(self) -> int:
        """The peak allocated since :meth:`reset_peak`, above what was allocated then."""
        ...

    def free_bytes(self) -> int:
        """Memory free on the device for this run (cached but unused memory released first)."""
        ...


class CudaMemory:
    """:class:`DeviceMemory` of a CUDA device through PyTorch's caching allocator."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._base = 0

    def reset_peak(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        self._base = torch.cuda.memory_allocated(self.device)

    def peak_bytes(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - self._base

    def free_bytes(self) -> int:
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        return torch.cuda.mem_get_info(self.device)[0]


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the device ran out of memory (cuDNN and cuBLAS report it in their own words)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "ALLOC_FAILED" in text)


def auto_batch(base_classifier: Callable[..., torch.Tensor], example_image: torch.Tensor, sigma: float, *,
               max_batch: int, device: torch.device | str, memory_budget: int | None = None,
               memory: DeviceMemory | None = None, fraction: float = MEMORY_FRACTION,
               backend: str | None = "auto") -> int:
    """The largest batch of noisy copies of ``example_image`` that ``base_classifier`` takes in one call.

    Args:
        base_classifier: the base classifier as :class:`~diffsmooth_fast.Smooth` calls it (with ``positions=``
            when its class sets ``accepts_positions``), in eval mode, on ``device``.
        example_image: one image [C, H, W] of the run.
        sigma: the smoothing noise std (the probes run on noisy copies, as certification does).
        max_batch: the cap: no call needs more samples than an image has (n).
        device: where the run happens; off CUDA the answer is ``min(DEFAULT_BATCH, max_batch)`` (logged).
        memory_budget: bytes a call may use on top of what is allocated now (None: ``fraction`` of the free memory).
        memory: how the device's memory is read (None: :class:`CudaMemory`); give one to size for any device.
        fraction: the share of free memory to fill when no ``memory_budget`` is given.
        backend: noise backend for the probes' noisy copies.

    Returns:
        The batch: at most ``max_batch``, at least 1, a multiple of 8 unless smaller than 8 or equal to
        ``max_batch`` (one call for the whole image beats a rounded batch that needs two).

    Raises:
        ValueError: bad arguments, or a single sample does not fit in memory.
    """
    check_int("max_batch", max_batch, 1)
    if memory_budget is not None:
        check_int("memory_budget (bytes)", memory_budget, 1)
    check_float("fraction", fraction, above=0.0, maximum=1.0)
    if not isinstance(example_image, torch.Tensor) or example_image.ndim != 3:
        raise ValueError("example_image must be one image [C, H, W]")
    device = torch.device(device)
    if memory is None:
        if device.type != "cuda":
            batch = min(DEFAULT_BATCH, max_batch)
            log.info("--batch auto: %d on %s (auto sizes the batch by GPU memory, on CUDA only)", batch, device.type)
            return batch
        memory = CudaMemory(device)
    x = example_image.to(device)
    noise_backend = resolve_backend(backend, device.type)

    def peak(batch: int) -> int | None:
        """Peak bytes of one call on ``batch`` noisy copies, or None if it ran out of memory."""
        memory.reset_peak()
        try:
            probe_call(base_classifier, x, sigma, batch, noise_backend)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            ran_out = True  # leave the except block first: the traceback holds the call's tensors
        else:
            ran_out = False
        if ran_out:
            memory.reset_peak()
            log.info("--batch auto: batch %d ran out of memory", batch)
            return None
        return memory.peak_bytes()

    # First probe, halved until it fits: if even the small probe does not fit, the largest that does is the answer.
    b1 = min(PROBE_BATCHES[0], max_batch)
    p1 = peak(b1)
    halved = p1 is None
    while p1 is None:
        if b1 == 1:
            raise ValueError("--batch auto: a single noisy sample does not fit in the GPU's free memory")
        b1 //= 2
        p1 = peak(b1)
    if halved or b1 == max_batch:
        return _chosen(b1, "the largest probe that fits" if halved else "max_batch")
    b2 = min(PROBE_BATCHES[1], max_batch)
    p2 = peak(b2)
    if p2 is None:  # between b1 (fits) and b2 (does not): halve down towards b1
        while p2 is None and b2 // 2 > b1:
            b2 //= 2
            p2 = peak(b2)
        return _chosen(b2 if p2 is not None else b1, "the largest probe that fits")
    if b2 == max_batch:
        return _chosen(b2, "max_batch")

    per_sample = (p2 - p1) / (b2 - b1)
    fixed = p1 - b1 * per_sample
    if per_sample <= 0:  # no measurable growth (allocator rounding): count everything as per-sample, conservatively
        per_sample, fixed = p2 / b2, 0.0
    fixed = max(fixed, 0.0)
    budget = memory_budget if memory_budget is not None else fraction * memory.free_bytes()
    batch = min(max(1, math.floor((budget - fixed) / per_sample)), max_batch)
    if ROUND_TO <= batch < max_batch:
        batch -= batch % ROUND_TO
    log.info("--batch auto: about %.1f MiB + %.2f MiB per sample, budget %.1f MiB", fixed / 2**20,
             per_sample / 2**20, budget / 2**20)
    # One call at the chosen batch: the linear model is an estimate (kernels may pick other workspaces at a
    # larger batch), so halve until the real call fits.
    while batch > b2 and peak(batch) is None:
        batch = max(b2, _round_down(batch // 2))
    return _chosen(batch, "estimated from the probes")


def _round_down(batch: int) -> int:
    return batch - batch % ROUND_TO if batch >= ROUND_TO else batch


def _chosen(batch: int, why: str) -> int:
    log.info("--batch auto: batch %d (%s)", batch, why)
    return batch


def probe_call(base_classifier: Callable[..., torch.Tensor], x: torch.Tensor, sigma: float, batch: int,
               backend: str, *, seed: int = 0, idx: int = 0) -> torch.Tensor:
    """The base classifier's scores on ``batch`` noisy copies of image ``idx``, ``x`` [C, H, W], made as ``Smooth``
    makes them (the noise and the noisy batch count towards a memory peak). The probe phase's noise never meets a
    certificate's."""
    with torch.no_grad():
        noise = gaussian_noise((batch, *x.shape), seed, 0, stream=noise_stream(idx, PHASE_PROBE), backend=backend,
                               device=x.device)
        noisy = x.unsqueeze(0) + sigma * noise.to(x.dtype)
        if getattr(base_classifier, "accepts_positions", False):
            return base_classifier(noisy, positions=SamplePositions(seed, idx, PHASE_PROBE, 0, batch))
        return base_classifier(noisy)
