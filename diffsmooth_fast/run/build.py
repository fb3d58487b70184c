"""From settings to a ready smoothed classifier: data, checkpoints, the method's pipeline, and a probe.

Everything that can fail on a user's files fails here, before any output file is touched: missing or wrong
checkpoints, a dataset the models cannot take, a model that returns NaN.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..data import check_labels, digits, load_dataset
from ..data.toy import make_toy
from ..diffusion.denoiser import Denoiser
from ..diffusion.from_diffusers import diffusers_folder
from ..engine.batching import MEMORY_FRACTION, auto_batch, probe_call
from ..engine.counting import CountingPath
from ..engine.method import PurifiedClassifier
from ..engine.options import BATCH_AUTO, assemble
from ..models.classifiers import CIFAR10_CLASSES, load_classifier
from ..models.loading import first_line
from ..ops import resolve_backend
from ..smoothing.certify import Smooth
from .configs import ModelConfig, RunSettings

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


def build_job(settings: RunSettings) -> Job:
    """Load the dataset and models, assemble the method's base classifier, probe it on the first image.

    Raises:
        ValueError: any problem with the files, the settings, or the models' outputs (one line each), labels the
            classifier cannot give (outside its classes, or another number of classes than the dataset's).
    """
    data, models, method, sampling, engine = (settings.data, settings.models, settings.method, settings.sampling,
                                              settings.engine)
    device = engine.torch_device()
    exact = None
    if data.dataset == "toy":
        toy = make_toy()
        images: Sequence = _ToyImages(toy.images, toy.labels)
        classifier: nn.Module = toy.model
        exact = toy.exact_radius
        engine = replace(engine, dtype="float32", autocast=False)  # its linear model always runs in float32
    else:
        images = digits.test_set() if data.dataset == "demo" else load_dataset(data.dataset, data.path, data.split)
        stats = data.dataset if data.dataset in ("cifar10", "imagenet") else None
        # What a library model (timm:, torchvision:, hf:) is checked and resized against.
        size = tuple(images[0][0].shape[-2:]) if len(images) else None
        classes = {"cifar10": (10, CIFAR10_CLASSES), "demo": (digits.NUM_CLASSES, None)}.get(data.dataset)
        if classes is None and getattr(images, "classes", None):  # an ImageNet-style class tree
            classes = (len(images.classes), None)
        classifier = load_classifier(models.classifier, stats, models.normalization,
                                     trust_checkpoint=models.trust_checkpoint, image_size=size,
                                     num_classes=classes[0] if classes else None,
                                     class_names=classes[1] if classes else None)
    classifier = classifier.to(device=device, dtype=engine.weights_dtype).eval()
    denoiser = None
    if method.uses_denoiser:
        denoiser = _load_denoiser(models, engine.weights_dtype, device, quiet=settings.output.quiet)
    base = assemble(method, classifier, denoiser, engine, seed=sampling.seed)
    indices = list(range(0, len(images), data.skip))
    indices = indices if data.max < 0 else indices[: data.max]
    first = indices[0] if indices else 0
    backend = resolve_backend(engine.backend, device.type)
    num_classes = _probe(base, images, first, method.sigma, sampling.seed, backend, device)
    check_labels(images.labels, num_classes, getattr(images, "num_classes", None))
    batch = engine.batch
    if batch == BATCH_AUTO:  # sized eagerly, before any graph holds memory
        fraction = GRAPHS_MEMORY_FRACTION if engine.cuda_graphs and device.type == "cuda" else MEMORY_FRACTION
        batch = auto_batch(base, images[first][0], method.sigma, max_batch=max(sampling.n0, sampling.n),
                           device=device, fraction=fraction, backend=backend)
    base.networks.start()  # after the probes: no graph captured, nothing compiled, for their batch shapes
    smooth = Smooth(base, num_classes, seed=sampling.seed, backend=backend)
    return Job(images, indices, smooth, device, backend, num_classes, exact, batch)


def _load_denoiser(models: ModelConfig, dtype: torch.dtype, device: torch.device, *, quiet: bool) -> Denoiser:
    """The run's denoiser: a diffusers folder, or an OpenAI file with its flags (read from it, given, or a preset;
    where each came from is said on stderr unless ``quiet``)."""
    folder = diffusers_folder(models.denoiser)
    if folder is not None:
        denoiser = Denoiser.from_diffusers(folder, dtype=dtype, device=device)
        if not quiet:
            print(f"denoiser {models.denoiser}: {denoiser.parametrization.describe()}", file=sys.stderr)
        return denoiser
    resolved = models.resolved_flags()
    if not quiet:
        print(resolved.summary(), file=sys.stderr)
    return Denoiser.from_flags(resolved.flags, models.denoiser, dtype=dtype, device=device,
                               trust_checkpoint=models.trust_checkpoint)


def _probe(base: PurifiedClassifier | CountingPath, images: Sequence, idx: int, sigma: float, seed: int, backend: str,
           device: torch.device) -> int:
    """Run the base classifier on two noisy copies of image ``idx``: the number of classes, or a one-line error."""
    if len(images) == 0:
        raise ValueError("the dataset holds no images")
    x, _ = images[idx]
    x = x.to(device)
    try:
        scores = probe_call(base, x, sigma, 2, backend, seed=seed, idx=idx)
    except RuntimeError as exc:  # shape mismatches inside the networks surface as RuntimeError
        first = first_line(exc)
        raise ValueError(f"the models cannot take this dataset's images [{', '.join(map(str, x.shape))}]: {first}") \
            from None
    if scores.ndim != 2 or scores.shape[0] != 2 or scores.shape[1] < 2:
        raise ValueError(f"the classifier returned shape {list(scores.shape)} for 2 images; expected [2, classes]")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("the models return NaN or infinite values on the first image: check the checkpoints "
                         "(and use --dtype float32 if float16 overflows)")
    return int(scores.shape[1])
