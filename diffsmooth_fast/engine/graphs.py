"""CUDA graphs for the networks of a base classifier, captured once per batch shape and replayed afterwards.

Certification calls the same two networks (the diffusion UNet and the classifier) thousands of times per image on
batches of the same few shapes, so launching their hundreds of kernels one by one from Python is pure overhead on a
fast GPU. :class:`GraphedFunction` records one call of a function into a ``torch.cuda.CUDAGraph`` per input
(shape, strides, dtype, device) and replays it for every later input of that kind.

What may be graphed: a *pure function of its input tensor*. A graph replays the kernels it recorded with the
arguments they had at capture, so anything that changes between calls without being in the input tensor would be
frozen. The base classifiers draw their own noise (DiffSmooth's fresh local noise, the reverse process) by
position, at Philox offsets that are Python ints changing with every batch: those draws are never graphed. Only the
networks are, each a pure function of its input (and of weights and constants that do not change during a run).

Design choices:

* Outputs are cloned before they are returned. A replay rewrites the graph's static output tensor in place; a
  caller that keeps a result (``Smooth`` argmaxes the scores on the device after the call returns; a test compares
  two calls) would otherwise see it change under it at the next replay. A clone of the output ([B, C, H, W] or
  [B*m, K]) costs nothing next to the network that made it.
* Every shape gets its own graph, the smaller last batch of an image (n % batch) included: certifying an image
  sees the same few shapes (the n0 batch, the full batch, the last one; predict: two) at every image, so
  each graph is captured once per run and replayed for every image. At most ``max_shapes`` graphs are kept (least
  recently used dropped) because each one holds its memory.
* The graphs of a base classifier share one memory pool, so their memory is that of the largest, not the sum.
  This is safe because they are replayed one after another on one stream and every output is cloned right after
  its replay, before another graph can reuse the memory it lives in.
* A function that cannot be captured (a user's classifier that synchronises with the host, say) is logged once and
  run eagerly from then on: graphs are a speed-up, never a reason for a run to fail.
* On the CPU (or any non-CUDA tensor) a call is the plain function call: graphs are CUDA-only.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Protocol

import torch

from ..checks import check_int
from ..models.loading import first_line

log = logging.getLogger("diffsmooth_fast")

DEFAULT_MAX_SHAPES = 4  # a certify run's n0 batch, full batch and last batch, and one to spare
WARMUP_CALLS = 2  # eager calls on a side stream before capturing: cuBLAS/cuDNN handles and autotuning settle


class Graph(Protocol):
    """A captured graph: ``replay()`` reruns its kernels on its static tensors."""

    def replay(self) -> None: ...


class GraphBackend(Protocol):
    """How graphs are made: the real one is :class:`CudaGraphBackend`; tests inject a fake one to check the
    caching logic without a GPU."""

    def supports(self, x: torch.Tensor) -> bool:
        """Whether ``x``'s calls can be graphed (CUDA tensors, outside another capture)."""
        ...

    def capture(self, fn: Callable[[torch.Tensor], torch.Tensor], static_input: torch.Tensor,
                pool: GraphPool) -> tuple[Graph, torch.Tensor]:
        """Warm ``fn`` up and record ``fn(static_input)``: the graph and its static output (not yet computed:
        the caller replays the graph once to fill it)."""
        ...


class GraphPool:
    """The memory pool that a set of graphs shares (created on the first capture, so making one costs nothing)."""

    def __init__(self) -> None:
        self.handle: object | None = None

    def get(self) -> object:
        if self.handle is None:
            self.handle = torch.cuda.graph_pool_handle()
        return self.handle


class CudaGraphBackend:
    """``torch.cuda.CUDAGraph`` capture, as the PyTorch documentation describes it: warm up on a side stream,
    then capture into the shared pool."""

    def __init__(self, warmup_calls: int = WARMUP_CALLS) -> None:
        self.warmup_calls = warmup_calls

    def supports(self, x: torch.Tensor) -> bool:
        return x.is_cuda and not torch.cuda.is_current_stream_capturing()

    def capture(self, fn: Callable[[torch.Tensor], torch.Tensor], static_input: torch.Tensor,
                pool: GraphPool) -> tuple[Graph, torch.Tensor]:
        device = static_input.device
        current = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(current)  # the static input was filled on the current stream
        with torch.cuda.stream(side):
            for _ in range(self.warmup_calls):
                fn(static_input)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool.get()):
            static_output = fn(static_input)
        return graph, static_output


class GraphedFunction:
    """``fn`` (a pure function of one tensor, returning one tensor) run through CUDA graphs, one per input kind.

    Args:
        fn: the function; it must give the same result for the same input tensor every time (see the module
            docstring: no noise drawn at offsets that change between calls).
        name: what the log calls it.
        max_shapes: graphs kept at most (least recently used dropped).
        pool: a pool shared with other graphed functions that are replayed on the same stream (None: its own).
        backend: how graphs are captured (default :class:`CudaGraphBackend`).

    Calls with tensors the backend does not support (CPU tensors) run ``fn`` directly.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], *, name: str = "function",
                 max_shapes: int = DEFAULT_MAX_SHAPES, pool: GraphPool | None = None,
                 backend: GraphBackend | None = None) -> None:
        self.fn, self.name, self.max_shapes = fn, name, check_int("max_shapes", max_shapes, 1)
        self.pool = pool if pool is not None else GraphPool()
        self.backend = backend if backend is not None else CudaGraphBackend()
        self.captures = 0  # graphs captured so far (a shape evicted and seen again is captured again)
        self.failed = False  # capture failed once: eager from then on
        self._graphs: OrderedDict[Hashable, tuple[Graph, torch.Tensor, torch.Tensor]] = OrderedDict()
        self._noted_eager: set[str] = set()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.failed or not self.backend.supports(x):
            self._note_eager(x)
            return self.fn(x)
        key = (tuple(x.shape), x.stride(), x.dtype, x.device)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(x, key)
            if entry is None:
                return self.fn(x)
        else:
            self._graphs.move_to_end(key)
        graph, static_input, static_output = entry
        static_input.copy_(x)
        graph.replay()
        return static_output.clone()  # the next replay rewrites static_output in place

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """The input shapes that have a graph now, least recently used first."""
        return [key[0] for key in self._graphs]

    def _capture(self, x: torch.Tensor, key: Hashable) -> tuple[Graph, torch.Tensor, torch.Tensor] | None:
        while len(self._graphs) >= self.max_shapes:
            self._graphs.popitem(last=False)  # its memory goes back to the pool for the new graph
        static_input = torch.empty_like(x)  # x's layout where it is dense, contiguous otherwise (expanded views)
        static_input.copy_(x)
        try:
            graph, static_output = self.backend.capture(self.fn, static_input, self.pool)
        except RuntimeError as exc:  # e.g. an operation not permitted while capturing: run this one eagerly
            first = first_line(exc)
            log.warning("CUDA graphs: capturing the %s failed (%s); it runs eagerly", self.name, first)
            self.failed = True
            self._graphs.clear()
            return None
        if not isinstance(static_output, torch.Tensor):
            raise TypeError(f"a graphed {self.name} must return one tensor, got {type(static_output).__name__}")
        self.captures += 1
        entry = (graph, static_input, static_output)
        self._graphs[key] = entry
        log.debug("CUDA graphs: captured the %s for input %s %s", self.name, list(x.shape), x.dtype)
        return entry

    def _note_eager(self, x: torch.Tensor) -> None:
        if x.device.type != "cuda" and x.device.type not in self._noted_eager:
            self._noted_eager.add(x.device.type)
            log.info("CUDA graphs apply to CUDA tensors only: the %s runs eagerly on %s", self.name, x.device.type)
