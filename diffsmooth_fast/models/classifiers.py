"""Base classifiers as the user has them: Cohen et al. / SmoothAdv checkpoints, TorchScript files, or a
``module:function`` that builds a model. Every one comes back as ``NormalizedClassifier``: an input
normalisation layer followed by the network, mapping images [B, 3, H, W] in [0, 1] to logits.

The normalisation is part of the classifier, not of the data pipeline, because smoothing noise is added in pixel
space (Cohen et al., ``NormalizeLayer``). Getting it wrong does not raise anything: the network runs and its
accuracy silently collapses. So the choice is explicit (``normalize`` = (x - mean) / std, ``center`` = x - mean,
``none``), and ``auto`` says what it picked and why in the ``diffsmooth_fast`` log.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .loading import load_weights, state_mismatch
from .resnet import ARCH_DATASET, ARCHITECTURES, build_architecture
from .sources import is_library_spec, load_library_model
from .sources.common import LibraryModel, Logits, Resize, check_classes
from .sources.user_models import FACTORY_SPEC, from_factory, from_torchscript, is_torchscript

log = logging.getLogger("diffsmooth_fast")

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The demo's digits (diffsmooth_fast.data.digits: grey in all three channels, train-split statistics).
DIGITS_MEAN = (0.3054,) * 3
DIGITS_STD = (0.3761,) * 3
# SmoothAdv normalises its ImageNet-32 models with the CIFAR-10 constants (code/datasets.py, get_normalize_layer).
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "imagenet32": (CIFAR10_MEAN, CIFAR10_STD),
    "digits": (DIGITS_MEAN, DIGITS_STD),
}
NORMALIZATIONS = ("normalize", "center", "none")
# CIFAR-10's classes in label order (batches.meta), to check a library model's label names against.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class InputNormalization(nn.Module):
    """The classifier's first layer: ``(x - mean) / std`` (``normalize``), ``x - mean`` (``center``) or ``x``.

    ``mode``, ``mean`` and ``std`` (tuples of floats, one per channel) are plain attributes so that a fused kernel
    can fold the layer in; for ``center`` std is all ones and for ``none`` mean is all zeros, so ``(x - mean) / std``
    is always the layer's function. The per-channel tensors are non-persistent buffers: they follow ``.to()`` but
    are not in the state dict, exactly like the reference layers, which store no tensors.
    """

    def __init__(self, mode: str, mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0)):
        super().__init__()
        if mode not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {mode!r}")
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean and std must have one entry per channel and std > 0, got {mean} and {std}")
        self.mode = mode
        self.mean = tuple(float(m) for m in mean) if mode != "none" else (0.0,) * len(mean)
        self.std = tuple(float(s) for s in std) if mode == "normalize" else (1.0,) * len(std)
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Divide (not multiply by 1/std) so outputs match the reference NormalizeLayer bit for bit.
        if self.mode == "normalize":
            return (x - self._mean) / self._std
        if self.mode == "center":
            return x - self._mean
        return x

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, mean={self.mean}, std={self.std}"


class NormalizedClassifier(nn.Sequential):
    """``Sequential(normalization, net)``: the reference layout, so ``state_dict()`` keys are ``1.<net key>``.

    Forward: x [B, 3, H, W] in [0, 1] -> logits [B, num_classes].
    """

    def __init__(self, normalization: InputNormalization, net: nn.Module) -> None:
        super().__init__(normalization, net)

    @property
    def normalization(self) -> InputNormalization:
        return self[0]

    @property
    def net(self) -> nn.Module:
        return self[1]


def load_classifier(path: str | os.PathLike[str], dataset: str | None = None, normalization: str = "auto", *,
                    trust_checkpoint: bool = False, image_size: Sequence[int] | None = None,
                    num_classes: int | None = None, class_names: Sequence[str] | None = None) -> NormalizedClassifier:
    """The base classifier stored at ``path``, on the CPU, in eval mode.

    Args:
        path: one of
            - a Cohen et al. / SmoothAdv checkpoint ``{'epoch', 'arch', 'state_dict', 'optimizer'}`` with ``arch``
              in ``ARCHITECTURES`` and keys prefixed ``1.`` or ``1.module.``; or a bare state dict of one of those
              networks (the architecture is then inferred from its keys and shapes); ``.safetensors`` files hold the
              state dict;
            - a TorchScript file (``torch.jit.save``);
            - ``package.module:function``: the module is imported and ``function()`` must return an ``nn.Module``
              (one inside timm, torchvision or transformers is refused: it would build an untrained network);
            - a library spec, loaded offline with the normalisation and input size the library records:
              ``timm:MODEL_NAME[@WEIGHTS_FILE]``, ``torchvision:MODEL_NAME[:WEIGHTS_ENUM][@WEIGHTS_FILE]``,
              ``hf:MODEL_ID_OR_FOLDER`` (see ``models.sources``).
            TorchScript and ``module:function`` models are the user's own: they are expected to include their
            preprocessing, so ``auto`` gives them no normalisation layer. Their output may be the logits tensor
            or an object with ``.logits``.
        dataset: ``cifar10``, ``imagenet``, ``imagenet32``, ``digits`` or None (the arch's own dataset); picks mean and std.
        normalization: ``normalize``, ``center``, ``none``, or ``auto`` (see ``choose_normalization``; the choice
            is logged; for a library spec ``auto`` is the library's record). A wrong choice is not detected by
            anything: accuracy silently collapses.
        trust_checkpoint: allow files that need arbitrary code to unpickle (for example a pickled model or a
            checkpoint holding ``argparse.Namespace``). Only for files you trust: unpickling runs code.
        image_size: (H, W) of the dataset's images; a library model whose input size differs gets a bicubic
            ``Resize`` to its own size after the normalisation.
        num_classes, class_names: the dataset's class count and names in label order, when known: a library
            model with another count, or with the same names in another order, is refused.

    Raises:
        ValueError: a missing or unreadable file, an unknown arch (the known ones are listed), a state dict that does
            not match its arch (missing / unexpected keys and the probable arch), a ``module:function`` that cannot
            be imported or raises, a library model that cannot be loaded offline or whose classes do not fit the
            dataset, or a bad ``dataset`` / ``normalization``.
    """
    if normalization != "auto" and normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be auto, {', '.join(NORMALIZATIONS)}; got {normalization!r}")
    if dataset is not None and dataset not in DATASET_STATS:
        raise ValueError(f"dataset must be one of {', '.join(DATASET_STATS)} or None, got {dataset!r}")
    name = os.fspath(path)
    library: LibraryModel | None = None
    if not os.path.exists(name) and is_library_spec(name):
        library = load_library_model(name, trust_checkpoint=trust_checkpoint)
        check_classes(name, library, num_classes, class_names)
        net, arch = library.net, None
    elif not os.path.exists(name) and FACTORY_SPEC.fullmatch(name):
        net, arch = from_factory(name), None
    elif not os.path.exists(name):
        raise ValueError(f"classifier {name}: no such file (nor a module:function, timm:, torchvision: or hf: spec)")
    elif is_torchscript(name):
        net, arch = from_torchscript(name), None
    else:
        obj = load_weights(name, what="classifier checkpoint", trust_checkpoint=trust_checkpoint)
        net, arch = _from_checkpoint(obj, name)

    from_library = library is not None and normalization == "auto"  # the library's own record decides
    if from_library:
        mode, reason, level = "normalize", f"as {library.source} records it", logging.INFO
    elif normalization == "auto":
        mode, reason, level = choose_normalization(arch, name)
    else:
        mode, reason, level = normalization, "as requested", logging.INFO
    dataset = dataset if dataset is not None else ARCH_DATASET.get(arch or "")
    if mode == "none":
        layer = InputNormalization("none")
    elif from_library:
        layer = InputNormalization("normalize", library.mean, library.std)
    elif dataset is None:
        raise ValueError(f"classifier {name}: normalization {mode!r} needs dataset= ({', '.join(DATASET_STATS)})")
    else:
        if arch is not None and DATASET_STATS[dataset] != DATASET_STATS[ARCH_DATASET[arch]]:
            log.warning("classifier %s: arch %s was trained on %s but dataset=%r was given", name, arch,
                        ARCH_DATASET[arch], dataset)
        layer = InputNormalization(mode, *DATASET_STATS[dataset])
    log.log(level, "classifier %s: normalization %r (%s, mean=%s, std=%s): %s. A wrong choice silently collapses "
            "accuracy; set normalization= to override.", name, mode, dataset or "no dataset", layer.mean, layer.std,
            reason)
    if library is not None and image_size is not None and tuple(image_size) != library.input_size:
        log.info("classifier %s: images %s resized to the model's input %s (bicubic with antialiasing, as DDS; "
                 "the library records %s)", name, "x".join(map(str, image_size)),
                 "x".join(map(str, library.input_size)), library.interpolation or "no interpolation")
        net = nn.Sequential(Resize(library.input_size), net)
    return NormalizedClassifier(layer, net).eval()


def choose_normalization(arch: str | None, path: str) -> tuple[str, str, int]:
    """What ``normalization="auto"`` picks: ``(mode, reason, logging level)``.

    A checkpoint does not record its normalisation, and Cohen et al. and SmoothAdv write identical files, so the
    rule reads the folder layout each project uses for its released models:

    1. user models (TorchScript, ``module:function``, a pickled module): ``none``, they own their preprocessing;
    2. the demo's ``digits_resnet14``: ``normalize`` (how ``diffsmooth_fast.demo.train`` trains it);
    3. ``imagenet32_resnet110``, or a path through ``imagenet32/``, ``finetune_cifar_from_imagenet*/`` or
       ``self_training*/``: ``normalize`` (SmoothAdv's fully normalised models; it has no centering layer for
       ImageNet-32);
    4. a path through SmoothAdv's model folders (``pretrained_models/``, ``PGD_<k>step(s)*/``, ``DDN_<k>steps*/``,
       ``eps_<k>/``, ``replication/``): ``center``, SmoothAdv's default input-centering layer;
    5. otherwise ``normalize``, Cohen et al.'s layer: logged at INFO when the path has Cohen's layout
       (``<dataset>/<resnetN>/noise_<sigma>/``), at WARNING when nothing in the path tells.
    """
    if arch is None:
        return "none", "a user model is expected to normalise its own input", logging.INFO
    if arch == "digits_resnet14":
        return "normalize", "the demo's digits classifiers are trained with full normalization", logging.INFO
    parts = [part.lower() for part in re.split(r"[\\/]+", os.path.abspath(path))[:-1]]
    if arch == "imagenet32_resnet110" or any(
        part == "imagenet32" or part.startswith(("finetune_cifar_from_imagenet", "self_training")) for part in parts
    ):
        return "normalize", "SmoothAdv's ImageNet-32, fine-tuned and self-trained models use full normalization", \
            logging.INFO
    smoothadv = re.compile(r"pretrained_models|replication|(pgd|ddn)_\d+steps?(_.*)?|eps_\d+")
    if any(smoothadv.fullmatch(part) for part in parts):
        return "center", "the path has SmoothAdv's model folder layout, whose models center their input", logging.INFO
    if any(re.fullmatch(r"noise_\d+(\.\d+)?", part) and re.fullmatch(r"resnet\d+", parent)
           for parent, part in zip(parts, parts[1:])):
        return "normalize", "the path has Cohen et al.'s model folder layout (full normalization)", logging.INFO
    return "normalize", "nothing in the path tells; assuming Cohen et al.'s full normalization (SmoothAdv models " \
        "outside its folder layout need normalization='center')", logging.WARNING


def _from_checkpoint(obj: object, path: str) -> tuple[nn.Module, str | None]:
    """The network in a loaded checkpoint object and its arch (None for a pickled module)."""
    if isinstance(obj, nn.Module):  # only reachable with trust_checkpoint=True
        return Logits(obj, path), None
    if not isinstance(obj, Mapping):
        raise ValueError(f"classifier checkpoint {path} holds a {type(obj).__name__}, expected a checkpoint dict")
    if "param_groups" in obj and "state" in obj:
        raise ValueError(f"classifier checkpoint {path} is an optimizer state, not a model")
    arch = obj.get("arch") if "state_dict" in obj else None
    state_dict = obj["state_dict"] if "state_dict" in obj else obj
    if not isinstance(state_dict, Mapping) or not state_dict or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        raise ValueError(f"classifier checkpoint {path}: 'state_dict' is not a non-empty dict of tensors")
    if arch is not None and arch not in ARCHITECTURES:
        raise ValueError(f"classifier checkpoint {path}: unknown arch {arch!r}; known: {', '.join(ARCHITECTURES)}")
    state_dict = _strip_wrappers(state_dict)
    guessed = guess_arch(state_dict)
    if arch is None:
        if guessed is None:
            first = ", ".join(list(state_dict)[:4])
            raise ValueError(f"classifier checkpoint {path}: no 'arch' entry and its keys ({first}, ...) match none "
                             f"of {', '.join(ARCHITECTURES)}")
        log.info("classifier checkpoint %s has no 'arch' entry; its keys are those of %s", path, guessed)
        arch = guessed
    return _load_weights(arch, state_dict, path, guessed), arch


def _strip_wrappers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of the bare network: drop ``Sequential(normalize, net)``'s ``1.`` and DataParallel's ``module.``."""
    state = dict(state_dict)
    for prefix in ("module.", "1.", "module."):
        if prefix == "1." and any(k.startswith("1.") for k in state) and all(k.startswith(("0.", "1.")) for k in state):
            state = {k: v for k, v in state.items() if k.startswith("1.")}  # a normalize layer's own tensors
        if all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def guess_arch(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The arch whose layout a (prefix-free) state dict has, from its keys and the fc shape; None if none fits."""
    fc = state_dict.get("fc.weight")
    if fc is None or fc.ndim != 2:
        return None

    def blocks(stage: int) -> int:
        prefix = f"layer{stage}."
        return len({key[len(prefix):].split(".")[0] for key in state_dict if key.startswith(prefix)})

    if "layer4.0.conv3.weight" in state_dict and [blocks(s) for s in (1, 2, 3, 4)] == [3, 4, 6, 3]:
        return "resnet50"
    if "layer4.0.conv1.weight" not in state_dict and fc.shape[1] == 64:
        depth = 6 * blocks(3) + 2
        if depth == 20:
            return "cifar_resnet20"
        if depth == 110:
            return "imagenet32_resnet110" if fc.shape[0] == 1000 else "cifar_resnet110"
    return None


def _load_weights(arch: str, state_dict: dict[str, torch.Tensor], path: str, guessed: str | None) -> nn.Module:
    with torch.device("meta"):  # allocate nothing: the checkpoint's tensors are assigned
        net = build_architecture(arch)
    expected, state = net.state_dict(), state_dict  # ``state_dict`` is this module's own copy
    for key in expected:
        # Files from PyTorch < 0.4.1 lack BatchNorm's counter; it only matters when training with momentum=None.
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    problems = state_mismatch(expected, state)
    if problems:
        hint = f"; it looks like {guessed}" if guessed and guessed != arch else (
            "" if guessed else f"; its layout matches none of {', '.join(ARCHITECTURES)}")
        raise ValueError(f"classifier checkpoint {path} does not match arch {arch!r}: {problems}{hint}")
    # Copies in RAM, in fp32: the memory-mapped file may be rewritten under us by a training run still saving to it.
    state = {k: v.to(torch.float32 if v.is_floating_point() else v.dtype, copy=True) for k, v in state.items()}
    net.load_state_dict(state, assign=True)
    return net
