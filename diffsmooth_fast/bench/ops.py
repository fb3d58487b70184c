"""The fused ops timed against their plain-PyTorch compositions, on a CIFAR-10-sized batch.

Each op is timed every way that applies on the device:

* ``ref``: ``ops/reference.py`` as written (the spec), drawing its noise with the PyTorch Philox reference;
* ``torch+noise``: the same PyTorch ops on noise from the device's fast generator, i.e. what the engine would run
  without the fused op (only for the ops that draw noise);
* ``cpp`` (CPU), ``triton`` and ``cuda`` (GPU): the fused kernels.

``group_norm_silu`` (GroupNorm + scale-shift + SiLU, as in a ResBlock's out_layers) runs on a CIFAR-10 UNet
activation [batch, 256, 16, 16], in float16 on a GPU (the UNet's dtype there) and float32 on a CPU; its baseline
is ``unfused``, the UNet's own modules (GroupNorm32 in float32, then scale-shift and SiLU in the dtype); ``ref``
is the float32 spec and ``triton`` the fused kernel (GPU only: there is no C++ or CUDA C++ kernel for it).

The ``*-given`` cases hand everyone the same noise tensor (the op without its generator). Timing is interleaved:
every round times each implementation once, one after the other, so a slow spell of a shared machine hits them
all; the ratio over the baseline is given on the minimum (least disturbed round) and on the median. GB/s counts
the tensor bytes each op must read and write (float32), whatever the implementation actually moves.

The same cases drive ``benchmarks/test_bench_ops.py`` (pytest-benchmark) and ``diffsmooth-fast bench ops``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..ops import denoise_replicate, gaussian_noise, group_norm_silu, noisy_input, unavailable_reason, vote
from ..ops.reference import denoise_replicate_ref, group_norm_silu_ref, noisy_input_ref, vote_ref

SHAPE, K, M = (3, 32, 32), 10, 5  # a CIFAR-10 image, 10 classes, the paper's m
SIGMA, SQRT_ABAR, C_X, C_EPS, LOCAL_SIGMA = 0.25, 0.6, 1.6, 1.2, 0.28
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
SEED, STREAM = 1234, 7
OPS = ("noisy_input-drawn", "noisy_input-given", "denoise-fresh", "denoise-fixed", "denoise-given", "vote",
       "group_norm_silu")
IMPLS = {"cpu": ("ref", "torch+noise", "unfused", "cpp"), "cuda": ("ref", "torch+noise", "unfused", "triton", "cuda")}
GN_CHANNELS, GN_SIZE, GN_GROUPS = 256, 16, 32  # a CIFAR-10 UNet activation at 16x16
DRAWING = ("noisy_input-drawn", "denoise-fresh")  # the ops with a separate noise step in plain PyTorch


def inputs(device: str | torch.device, batch: int = 250) -> dict[str, torch.Tensor]:
    """Random inputs of every op for ``batch`` noisy samples (the same values on every device)."""
    gen = torch.Generator().manual_seed(0)
    t = {
        "x": torch.rand(SHAPE, generator=gen),
        "noise": torch.randn((batch, *SHAPE), generator=gen),
        "x_t": torch.randn((batch, *SHAPE), generator=gen),
        "unet": torch.randn((batch, 6, *SHAPE[1:]), generator=gen),  # a learn_sigma UNet's output
        "fixed": torch.randn((M, *SHAPE), generator=gen),
        "local": torch.randn((batch * M, *SHAPE), generator=gen),
        "logits": 3 * torch.randn((batch * M, K), generator=gen),
        "mean": torch.tensor(MEAN),
        "std": torch.tensor(STD),
    }
    return {k: v.to(device) for k, v in t.items()}


def _noise(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return gaussian_noise(shape, SEED, 0, stream=STREAM, device=device)  # the device's fast generator


def call(op: str, impl: str, t: dict[str, torch.Tensor]) -> Callable[[], object] | None:
    """A no-argument call of ``op`` by ``impl`` on inputs ``t``; None where that pairing is not measured (the pure
    reference of ``denoise-fresh`` draws B*m*numel normals with the PyTorch Philox: ~10 s on a CPU)."""
    b, device = t["x_t"].shape[0], t["x_t"].device
    if op == "group_norm_silu":
        return _group_norm_call(impl, b, device)
    eps = t["unet"][:, :3]  # the eps channels of a learn_sigma UNet: a strided view, as the engine gets it
    norm = dict(mean=t["mean"], std=t["std"])
    if op == "noisy_input-drawn":
        if impl == "ref":
            return lambda: noisy_input_ref(t["x"], b, SIGMA, SQRT_ABAR, seed=SEED, stream=STREAM)
        if impl == "torch+noise":
            return lambda: noisy_input_ref(t["x"], b, SIGMA, SQRT_ABAR, noise=_noise((b, *SHAPE), device))
        return lambda: noisy_input(t["x"], b, SIGMA, SQRT_ABAR, seed=SEED, stream=STREAM, backend=impl)
    if op == "noisy_input-given":
        if impl == "ref":
            return lambda: noisy_input_ref(t["x"], b, SIGMA, SQRT_ABAR, noise=t["noise"])
        return lambda: noisy_input(t["x"], b, SIGMA, SQRT_ABAR, noise=t["noise"], backend=impl)
    if op == "denoise-fresh":
        if impl == "ref":
            return None
        if impl == "torch+noise":
            return lambda: denoise_replicate_ref(t["x_t"], eps, C_X, C_EPS, M, LOCAL_SIGMA,
                                                 local_noise=_noise((b * M, *SHAPE), device), **norm)
        return lambda: denoise_replicate(t["x_t"], eps, C_X, C_EPS, M, LOCAL_SIGMA, seed=SEED, stream=STREAM,
                                         backend=impl, **norm)
    if op in ("denoise-fixed", "denoise-given"):  # fixed: the reference's mode, the same m noises for every sample
        local = t["fixed"] if op == "denoise-fixed" else t["local"]
        if impl == "ref":
            return lambda: denoise_replicate_ref(t["x_t"], eps, C_X, C_EPS, M, LOCAL_SIGMA, local_noise=local, **norm)
        return lambda: denoise_replicate(t["x_t"], eps, C_X, C_EPS, M, LOCAL_SIGMA, local_noise=local, backend=impl,
                                         **norm)
    if op != "vote":
        raise ValueError(f"unknown op {op!r}; choose from {', '.join(OPS)}")
    counts = torch.zeros(K, dtype=torch.int64, device=device)  # accumulates over calls; returned for checks
    if impl == "ref":
        return lambda: (vote_ref(t["logits"], M, counts), counts)[1]
    return lambda: (vote(t["logits"], M, counts, backend=impl), counts)[1]


def _group_norm_call(impl: str, batch: int, device: torch.device) -> Callable[[], object]:
    dtype = _gn_dtype(device.type)
    gen = torch.Generator().manual_seed(0)
    c = GN_CHANNELS
    x = torch.randn((batch, c, GN_SIZE, GN_SIZE), generator=gen).to(device, dtype)
    weight = (1 + 0.2 * torch.randn(c, generator=gen)).to(device, dtype)
    bias = (0.1 * torch.randn(c, generator=gen)).to(device, dtype)
    scale, shift = (0.3 * torch.randn((batch, 2 * c, 1, 1), generator=gen)).to(device, dtype).chunk(2, dim=1)
    if impl == "unfused":  # models/unet.py unfused: GroupNorm32 (float32 inside), then scale-shift and SiLU in dtype
        def unfused() -> torch.Tensor:
            y = torch.nn.functional.group_norm(x.float(), GN_GROUPS, weight.float(), bias.float()).to(dtype)
            return torch.nn.functional.silu(y * (1 + scale) + shift)

        return unfused
    if impl == "ref":
        return lambda: group_norm_silu_ref(x, GN_GROUPS, weight, bias, 1e-5, scale, shift)
    return lambda: group_norm_silu(x, GN_GROUPS, weight, bias, 1e-5, scale=scale, shift=shift, backend=impl)


def _gn_dtype(device_type: str) -> torch.dtype:
    return torch.float16 if device_type == "cuda" else torch.float32


def bytes_moved(op: str, batch: int = 250, device_type: str = "cpu") -> tuple[int, int]:
    """(bytes read, bytes written) that ``op`` needs (float32, but group_norm_silu in its device's dtype); noise
    counts when it is read from memory; for group_norm_silu the activation once each way (the fused pass)."""
    if op == "group_norm_silu":
        size = batch * GN_CHANNELS * GN_SIZE * GN_SIZE * _gn_dtype(device_type).itemsize
        return size, size
    n = 3 * 32 * 32 * 4
    return {
        "noisy_input-drawn": (n, batch * n),
        "noisy_input-given": (n + batch * n, batch * n),
        "denoise-fresh": (2 * batch * n, batch * M * n),
        "denoise-fixed": (2 * batch * n + M * n, batch * M * n),
        "denoise-given": (2 * batch * n + batch * M * n, batch * M * n),
        "vote": (batch * M * K * 4, K * 8),
    }[op]


def skip_reason(op: str, impl: str, device: str) -> str | None:
    """Why ``impl`` of ``op`` is not timed on ``device`` (None: it is)."""
    if impl not in IMPLS.get(device, ()):
        return f"{impl} does not run on {device}"
    if impl == "torch+noise" and op not in DRAWING:
        return "only the drawing ops have a separate noise step"
    if impl == "unfused" and op != "group_norm_silu":
        return "only group_norm_silu has an unfused module chain"
    if op == "group_norm_silu" and impl in ("cpp", "cuda"):
        return "group_norm_silu has a Triton kernel only"
    if impl not in ("ref", "torch+noise", "unfused"):
        return unavailable_reason(impl, device)
    if op == "denoise-fresh" and impl == "ref":
        return "the pure reference would take ~10 s per call; see torch+noise"
    return None


@dataclass(frozen=True)
class OpTiming:
    """One op timed every way on one device: seconds per call (min and median over rounds) per implementation."""

    op: str
    device: str
    batch: int
    rounds: int
    min_s: dict[str, float]
    median_s: dict[str, float]
    skipped: dict[str, str]

    @property
    def baseline(self) -> str | None:
        """The plain-PyTorch way the fused kernels are compared with: ``torch+noise`` where the op draws noise
        (the pure reference's PyTorch Philox is not what anyone would run), else ``ref``."""
        if self.op == "group_norm_silu":
            order: tuple[str, ...] = ("unfused",)
        else:
            order = ("torch+noise", "ref") if self.op in DRAWING else ("ref",)
        for impl in order:
            if impl in self.min_s:
                return impl
        return None

    def as_dict(self) -> dict[str, object]:
        read, written = bytes_moved(self.op, self.batch, self.device)
        base = self.baseline
        rows = {}
        for impl in self.min_s:
            row = {"min_ms": 1e3 * self.min_s[impl], "median_ms": 1e3 * self.median_s[impl],
                   "GB/s": (read + written) / self.median_s[impl] / 1e9}
            if base is not None and impl not in ("ref", "torch+noise", "unfused"):
                row["speedup_min"] = self.min_s[base] / self.min_s[impl]
                row["speedup_median"] = self.median_s[base] / self.median_s[impl]
            rows[impl] = row
        return {"op": self.op, "device": self.device, "batch": self.batch, "rounds": self.rounds, "baseline": base,
                "bytes_read": read, "bytes_written": written, "impls": rows, "skipped": self.skipped}


def _seconds(fn: Callable[[], object], calls: int, sync: Callable[[], None]) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - start) / calls


def time_op(op: str, device: str = "cpu", *, batch: int = 250, rounds: int = 10, impls: tuple[str, ...] | None = None,
            target_s: float = 0.02) -> OpTiming:
    """Time ``op`` by every implementation that runs on ``device``, interleaved over ``rounds`` rounds of about
    ``target_s`` seconds of calls each (calibrated on the fastest implementation)."""
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    t = inputs(dev, batch)
    fns, skipped = {}, {}
    for impl in impls or IMPLS.get(dev.type, ()):
        reason = skip_reason(op, impl, dev.type)
        fn = None if reason else call(op, impl, t)
        if fn is None:
            skipped[impl] = reason or "not measured"
            continue
        fn()  # warm-up: extension load, Triton compile, allocator
        fns[impl] = fn
    sync()
    calls = {impl: max(1, round(target_s / _seconds(fn, 2, sync))) for impl, fn in fns.items()}
    times: dict[str, list[float]] = {impl: [] for impl in fns}
    for _ in range(rounds):
        for impl, fn in fns.items():
            times[impl].append(_seconds(fn, calls[impl], sync))
    return OpTiming(op, dev.type, batch, rounds, {i: min(ts) for i, ts in times.items()},
                    {i: statistics.median(ts) for i, ts in times.items()}, skipped)


def format_timing(timing: OpTiming) -> list[str]:
    """Human-readable lines: one per implementation."""
    d = timing.as_dict()
    lines = []
    for impl, row in d["impls"].items():
        ratio = f"  {row['speedup_min']:6.2f}x over {d['baseline']} (min), {row['speedup_median']:6.2f}x (median)" \
            if "speedup_min" in row else ""
        lines.append(f"{timing.op:18s} {impl:12s} {row['median_ms']:9.3f} ms (min {row['min_ms']:8.3f})  "
                     f"{row['GB/s']:7.2f} GB/s{ratio}")
    return lines
