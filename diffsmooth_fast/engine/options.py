"""How fast a run goes, in one place: :class:`EngineOptions` and the code that applies them.

The method (:mod:`~diffsmooth_fast.engine.method`) says what the base classifier computes; the options here say
how its networks run: their precision (``dtype``, or float32 weights under ``autocast``), memory format
(``channels_last``), the UNet's fused GroupNorm + scale-shift + SiLU (``fuse_norms``), CUDA graphs per batch
shape (``cuda_graphs``), ``torch.compile`` (``compile``), the fused counting path (``fused``:
:mod:`~diffsmooth_fast.engine.counting`), the kernels' backend and the batch of noisy samples per call.
``dtype`` and ``autocast`` change the numbers (they are result settings); the others change speed and memory
only: in float32 every combination gives the certificates of the plain path.

:func:`assemble` builds a method's base classifier with the options applied; :meth:`FastNetworks.start` switches
on what must wait until the checks before a run are done (compiled networks and CUDA graphs, which would
otherwise be compiled or captured for the probes' batch shapes).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import nn

from ..checks import is_int
from ..diffusion.denoiser import Denoiser
from ..models.classifiers import NormalizedClassifier
from ..ops import BACKENDS, resolve_backend
from .counting import CountingPath
from .graphs import GraphedFunction, GraphPool
from .method import DirectNetworks, MethodConfig, PurifiedClassifier

log = logging.getLogger("diffsmooth_fast")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BATCH_AUTO = "auto"  # batch="auto": the largest batch that fits the GPU (batching.auto_batch)
DEFAULT_BATCH = 1000


def parse_batch(text: str) -> int | str:
    """``--batch``'s value: an integer >= 1, or ``auto``."""
    value = text.strip().lower()
    if value == BATCH_AUTO:
        return BATCH_AUTO
    try:
        batch = int(value)
    except ValueError:
        raise ValueError(f"--batch must be an integer >= 1 or auto, got {text!r}") from None
    if batch < 1:
        raise ValueError(f"--batch must be an integer >= 1 or auto, got {text!r}")
    return batch


@dataclass(frozen=True)
class EngineOptions:
    """The engine's speed options (see the module docstring); the defaults are the plain float32 eager path.

    Args:
        dtype: the models' precision, ``float32``, ``float16`` or ``bfloat16``: their weights are held in it, or
            with ``autocast`` kept in float32 while the forward passes run under ``torch.autocast`` in ``dtype``.
        autocast: see ``dtype`` (needs a half ``dtype``).
        fused: the counting path of fused kernels (noisy_input, denoise_replicate, vote) instead of the plain one.
        fuse_norms: the UNet's GroupNorm + scale-shift + SiLU as one Triton kernel (CUDA; the reference elsewhere).
        channels_last: both networks and their inputs in channels_last (NHWC) memory format.
        cuda_graphs: replay the networks from CUDA graphs captured per batch shape (ignored off CUDA).
        compile: ``torch.compile`` the UNet and the classifier network (each batch shape compiles on first use).
        backend: the kernels' and noise's backend: ``auto``, ``cuda``, ``triton``, ``cpp`` or ``torch``.
        batch: noisy samples per base-classifier call, or ``"auto"`` (the largest that fits the GPU).
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1``, ...
    """

    dtype: str = "float32"
    autocast: bool = False
    fused: bool = False
    fuse_norms: bool = False
    channels_last: bool = False
    cuda_graphs: bool = False
    compile: bool = False
    backend: str = "auto"
    batch: int | str = DEFAULT_BATCH
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.autocast and self.dtype == "float32":
            raise ValueError("--autocast runs the models in --dtype float16 or bfloat16; give one of them")
        for f in fields(self):
            if f.type == "bool" and not isinstance(getattr(self, f.name), bool):
                raise ValueError(f"{f.name} must be True or False, got {getattr(self, f.name)!r}")
        if self.backend != "auto" and self.backend not in BACKENDS:
            raise ValueError(f"--backend: unknown backend {self.backend!r}; choose auto or one of {', '.join(BACKENDS)}")
        if self.batch != BATCH_AUTO and not (is_int(self.batch) and self.batch >= 1):
            raise ValueError(f"--batch must be an integer >= 1 or auto, got {self.batch!r}")

    @property
    def weights_dtype(self) -> torch.dtype:
        """The dtype the models' weights are held in (float32 under autocast)."""
        return torch.float32 if self.autocast else DTYPES[self.dtype]

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return DTYPES[self.dtype] if self.autocast else None

    def result_settings(self) -> dict[str, object]:
        """The options that change the numbers of a run (a resumed run must match them)."""
        out: dict[str, object] = {"dtype": self.dtype}
        if self.autocast:  # only when set, so that files written before the option existed still resume
            out["autocast"] = True
        return out

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"--device {self.device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {self.device}: this torch has no CUDA device; use --device cpu")
        return device


class FastNetworks(DirectNetworks):
    """:class:`~diffsmooth_fast.engine.method.Networks` with the options applied to every call: inputs in the
    networks' memory format, forward passes under autocast, and (after :meth:`start`) CUDA graphs and compiled
    networks. All four calls share one graph memory pool: they run one after another on one stream and each
    graph's output is cloned before the next replay (see :mod:`~diffsmooth_fast.engine.graphs`)."""

    def __init__(self, classifier: nn.Module, denoiser: Denoiser | None, sigma: float, options: EngineOptions) -> None:
        super().__init__(classifier, denoiser, sigma)
        self.options = options
        self.graphs_on = False
        pool = GraphPool()
        calls = ("denoise", "model_output", "classify", "classify_normalized")
        # Each graphed function wraps the plain call (DirectNetworks') in this object's layout and precision.
        self._graphed = {name: GraphedFunction(self._eager(getattr(DirectNetworks, name).__get__(self)), name=name,
                                               pool=pool) for name in calls}

    def start(self) -> None:
        """Switch on what waits for the checks before a run: compiled networks, then CUDA graphs (CUDA only)."""
        if self.options.compile:
            self._compile()
        self.graphs_on = self.options.cuda_graphs and _device(self.classifier).type == "cuda"

    def denoise(self, x_noisy: torch.Tensor) -> torch.Tensor:
        return self._call("denoise", x_noisy)

    def model_output(self, x_t: torch.Tensor) -> torch.Tensor:
        return self._call("model_output", x_t)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self._call("classify", x)

    def classify_normalized(self, inputs: torch.Tensor) -> torch.Tensor:
        return self._call("classify_normalized", inputs)

    def graphed(self, name: str) -> GraphedFunction:
        """The graphed form of one call (for tests and logs: its captured shapes)."""
        return self._graphed[name]

    def _call(self, name: str, x: torch.Tensor) -> torch.Tensor:
        graphed = self._graphed[name]
        return graphed(x) if self.graphs_on else graphed.fn(x)

    def _eager(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(x: torch.Tensor) -> torch.Tensor:
            if self.options.channels_last and x.dim() == 4:  # a no-op on denoise_replicate's NHWC output
                x = x.contiguous(memory_format=torch.channels_last)
            with self._precision(x):
                return fn(x)
        return run

    def _precision(self, x: torch.Tensor) -> contextlib.AbstractContextManager:
        if not self.options.autocast:
            return contextlib.nullcontext()
        # No weight-cast cache: it lives for one autocast context anyway, and CUDA graph capture requires it off.
        return torch.autocast(x.device.type, dtype=self.options.autocast_dtype, cache_enabled=False)

    def _compile(self) -> None:
        opts = {"dynamic": False}  # certification sees two or three batch shapes: specialise on each
        if self.denoiser is not None:
            # Inductor writes its own fused norm kernels, and tracing through the Triton op's Python dispatch
            # would only add graph breaks: compiled UNets run the unfused modules.
            if any(getattr(m, "fused_backend", None) is not None for m in self.denoiser.unet.modules()):
                log.info("torch.compile: the UNet's fused norms are switched off (inductor fuses them itself)")
                self.denoiser.unet.fuse_group_norms(None)
            self.denoiser.unet.forward = torch.compile(self.denoiser.unet.forward, **opts)
        net = self.classifier.net if isinstance(self.classifier, NormalizedClassifier) else self.classifier
        net.forward = torch.compile(net.forward, **opts)


def assemble(method: MethodConfig, classifier: nn.Module, denoiser: Denoiser | None, options: EngineOptions, *,
             seed: int = 0) -> PurifiedClassifier | CountingPath:
    """``method``'s base classifier around the loaded models, with ``options`` applied.

    The models must already be on their device in ``options.weights_dtype`` (loading decides that, to hold one
    copy of the weights); the memory format and the fused norms are applied to them here, in place. Call
    ``base.networks.start()`` once the checks before the run are done (see the module docstring).
    """
    device = _device(classifier)
    backend = resolve_backend(options.backend, device.type)
    if options.channels_last:
        for net in (classifier, denoiser):
            if net is not None:
                net.to(memory_format=torch.channels_last)
    if options.fuse_norms and denoiser is not None:
        if device.type != "cuda":
            log.info("--fuse-norms: no fused kernel on %s; the plain-PyTorch reference runs instead", device.type)
        denoiser.unet.fuse_group_norms(backend)
    if options.cuda_graphs and device.type != "cuda":
        log.info("--cuda-graphs: ignored on %s (CUDA graphs need a CUDA device)", device.type)
    networks = FastNetworks(classifier, denoiser, method.sigma, options)
    base = PurifiedClassifier(method, classifier, denoiser, seed=seed, backend=backend, networks=networks)
    return CountingPath(base, channels_last=options.channels_last) if options.fused else base


def _device(module: nn.Module) -> torch.device:
    """Where a module lives (its first parameter or buffer; a module holding neither runs anywhere: CPU)."""
    tensor = next(module.parameters(), None)
    tensor = tensor if tensor is not None else next(module.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")
