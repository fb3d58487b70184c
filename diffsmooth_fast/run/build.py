"""From settings to a ready smoothed classifier: data, checkpoints, the method's pipeline, and a probe.

Everything that can fail on a user's files fails here, before any output file is touched: missing or wrong
checkpoints, a dataset the models cannot take, a model that returns NaN.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..data import digits, load_dataset
from ..data.toy import make_toy
from ..diffusion.denoiser import Denoiser
from ..engine.batching import MEMORY_FRACTION, auto_batch, probe_call
from ..engine.method import MethodConfig, PurifiedClassifier
from ..models.classifiers import load_classifier
from ..ops import resolve_backend
from ..smoothing.certify import Smooth
from .configs import BATCH_AUTO, DTYPES, DataConfig, ModelConfig, SamplingConfig, check_combination, resolve_models

log = logging.getLogger("diffsmooth_fast")

# With --cuda-graphs, --batch auto fills less of the free memory: a graph is warmed up eagerly while the graphs
# captured before it hold their memory, so the classifier's warm-up briefly needs the UNet graph's memory too.
GRAPHS_MEMORY_FRACTION = 0.7


@dataclass(frozen=True)
class Job:
    """A ready run: ``images`` (map-style: index -> (x [C, H, W] in [0, 1], label)), the ``indices`` to do, the
    smoothed classifier, the ``batch`` of noisy samples per call (``--batch auto`` resolved), and for the toy
    problem the exact radii [N]."""

    images: Sequence[tuple[torch.Tensor, int]]
    indices: list[int]
    smooth: Smooth
    device: torch.device
    backend: str
    num_classes: int
    exact_radius: torch.Tensor | None = None
    batch: int = 1000


class _ToyImages:
    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def build_job(data: DataConfig, models: ModelConfig, method: MethodConfig, sampling: SamplingConfig) -> Job:
    """Load the dataset and models, assemble ``method``'s base classifier, probe it on the first image.

    Raises:
        ValueError: any problem with the files, the settings, or the models' outputs (one line each).
    """
    device = sampling.torch_device()
    backend = resolve_backend(sampling.backend, device.type)
    dtype = DTYPES[models.dtype]
    weights = torch.float32 if models.autocast else dtype  # with autocast the weights stay float32
    exact = None
    models = resolve_models(data, models, method)
    check_combination(data, models, method)
    if data.dataset == "toy":
        toy = make_toy()
        images: Sequence = _ToyImages(toy.images, toy.labels)
        classifier: nn.Module = toy.model
        exact = toy.exact_radius
    else:
        images = digits.test_set() if data.dataset == "demo" else load_dataset(data.dataset, data.path, data.split)
        stats = data.dataset if data.dataset in ("cifar10", "imagenet") else None
        classifier = load_classifier(models.classifier, stats, models.normalization,
                                     trust_checkpoint=models.trust_checkpoint)
    classifier = classifier.to(device=device, dtype=weights if data.dataset != "toy" else torch.float32).eval()
    denoiser = None
    if method.uses_denoiser:
        flags = models.flags(data.dataset)
        denoiser = Denoiser.from_flags(flags, models.denoiser, dtype=weights, device=device,
                                       trust_checkpoint=models.trust_checkpoint)
        if sampling.fuse_norms:
            if device.type != "cuda":
                log.info("--fuse-norms: no fused kernel on %s; the plain-PyTorch reference runs instead", device.type)
            denoiser.unet.fuse_group_norms(backend)
    is_toy = data.dataset == "toy"  # its linear model always runs in float32
    base = PurifiedClassifier(method, classifier, denoiser, seed=sampling.seed, backend=backend,
                              dtype=weights if not is_toy else torch.float32, fused=sampling.fused,
                              channels_last=sampling.channels_last,
                              autocast=dtype if models.autocast and not is_toy else None)
    indices = list(range(0, len(images), data.skip))
    indices = indices if data.max < 0 else indices[: data.max]
    first = indices[0] if indices else 0
    num_classes = _probe(base, images, first, method.sigma, sampling.seed, backend, device)
    batch = sampling.batch
    if batch == BATCH_AUTO:  # sized eagerly, before any graph holds memory
        fraction = GRAPHS_MEMORY_FRACTION if sampling.cuda_graphs and device.type == "cuda" else MEMORY_FRACTION
        batch = auto_batch(base, images[first][0], method.sigma, max_batch=max(sampling.n0, sampling.n),
                           device=device, fraction=fraction, backend=backend)
    if sampling.compile:  # after the probes, so that their batch shape is not compiled for nothing
        base.compile_networks()
    if sampling.cuda_graphs and device.type != "cuda":
        log.info("--cuda-graphs: ignored on %s (CUDA graphs need a CUDA device)", device.type)
    base.cuda_graphs = sampling.cuda_graphs and device.type == "cuda"  # after the probes: no graph for their shapes
    smooth = Smooth(base, num_classes, method.sigma, seed=sampling.seed, backend=backend)
    return Job(images, indices, smooth, device, backend, num_classes, exact, batch)


def _probe(base: PurifiedClassifier, images: Sequence, idx: int, sigma: float, seed: int, backend: str,
           device: torch.device) -> int:
    """Run the base classifier on two noisy copies of image ``idx``: the number of classes, or a one-line error."""
    if len(images) == 0:
        raise ValueError("the dataset holds no images")
    x, _ = images[idx]
    x = x.to(device)
    try:
        scores = probe_call(base, x, sigma, 2, backend, seed=seed, idx=idx)
    except RuntimeError as exc:  # shape mismatches inside the networks surface as RuntimeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"the models cannot take this dataset's images [{', '.join(map(str, x.shape))}]: {first}") \
            from None
    if scores.ndim != 2 or scores.shape[0] != 2 or scores.shape[1] < 2:
        raise ValueError(f"the classifier returned shape {list(scores.shape)} for 2 images; expected [2, classes]")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("the models return NaN or infinite values on the first image: check the checkpoints "
                         "(and use --dtype float32 if float16 overflows)")
    return int(scores.shape[1])
