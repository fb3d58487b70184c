"""Classifiers from the model libraries researchers use: ``timm:``, ``torchvision:`` and ``hf:`` specs.

Each library records how its model wants its input (timm's ``pretrained_cfg``, torchvision's weights enum
transforms, the Hugging Face image processor's config): the per-channel mean and std and the input size. This module
turns that record into the project's classifier layout: ``InputNormalization(mean, std)`` first, so that smoothing
noise stays in pixel space [0, 1] and the fused path can fold the normalisation in; then, when the dataset's images
have another size than the model's input, a bicubic ``Resize`` (as DDS upsamples CIFAR-10 32 -> 224 and ImageNet
224 -> 512); then the library's network, whose output is reduced to its logits tensor.

Nothing is downloaded: weights come from a file given with ``@FILE`` or from the library's local cache, and a miss
is one line saying where it looked and how to fetch the weights once.

Spec syntax (parsed by ``models.sources``, one module per library):
  ``timm:MODEL_NAME[@WEIGHTS_FILE]``, ``torchvision:MODEL_NAME[:WEIGHTS_ENUM][@WEIGHTS_FILE]``,
  ``hf:MODEL_ID_OR_FOLDER``.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from ..loading import first_line, load_weights, state_mismatch

LIBRARIES = {"timm": "timm", "torchvision": "torchvision", "hf": "transformers"}
# What a module:function into a library builds (an untrained network) and the spec that loads its weights instead.
LIBRARY_SPECS = {"timm": "timm:MODEL_NAME[@WEIGHTS_FILE]", "torchvision": "torchvision:MODEL_NAME[:WEIGHTS_ENUM]",
                 "transformers": "hf:MODEL_ID_OR_FOLDER"}


@dataclass(frozen=True)
class LibraryModel:
    """A network loaded from a library with the input it expects: images normalised by ``(x - mean) / std`` per
    channel, ``input_size`` (H, W); ``interpolation`` is the library's recorded resize (logged, not used);
    ``labels`` are the class names in output order when the library records them."""

    net: nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int]
    interpolation: str
    num_classes: int
    labels: tuple[str, ...] | None
    source: str  # where the weights came from, for the log


def import_library(spec: str, name: str, extra: str) -> ModuleType:
    """``import name``, or a one-line error saying how to install it (``extra``: this package's pip extra)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ValueError(f"classifier {spec} needs {name}, which is not installed ({exc}); install it with "
                         f"pip install \"diffsmooth_fast[{extra}]\"") from None
    except Exception as exc:  # noqa: BLE001 - e.g. a torchvision built for another torch fails with RuntimeError
        first = first_line(exc)
        raise ValueError(f"classifier {spec}: {name} is installed but cannot be imported ({first}); it was "
                         f"probably built for another torch than {torch.__version__}") from None


def refuse_library_factory(spec: str, module: str) -> None:
    """A ``module:function`` inside timm, torchvision or transformers builds an untrained network (the weights
    are not loaded by calling the factory): refuse it with the spec that loads the weights."""
    root = module.split(".")[0]
    if root in LIBRARY_SPECS:
        raise ValueError(f"classifier {spec} would build an untrained {root} network (calling a {root} factory "
                         f"loads no weights); use --classifier {LIBRARY_SPECS[root]}")


def state_dict_from_file(spec: str, path: str, *, trust_checkpoint: bool) -> dict[str, torch.Tensor]:
    """The network's tensors in a weights file (``.pth``/``.pt``/``.bin`` by ``torch.save``, or ``.safetensors``):
    a bare state dict, or one under ``state_dict``/``model``/``state_dict_ema``, without DataParallel's
    ``module.`` prefix."""
    if not os.path.isfile(path):
        raise ValueError(f"classifier {spec}: weights file {path}: no such file")
    obj = load_weights(path, what=f"classifier {spec}: weights file", trust_checkpoint=trust_checkpoint)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ValueError(f"classifier {spec}: weights file {path} holds no state dict of tensors")
    state = dict(obj)
    if all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def load_state(spec: str, net: nn.Module, state: Mapping[str, torch.Tensor], path: str) -> None:
    """``net.load_state_dict(state)``, strict: a missing, unexpected or misshapen tensor is one line naming a few
    of each (a partly loaded network would certify with random weights)."""
    problems = state_mismatch(net.state_dict(), state)
    if problems:
        raise ValueError(f"classifier {spec}: the weights in {path} do not fit the model: {problems}")
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})


def check_classes(name: str, library: LibraryModel, num_classes: int | None,
                  class_names: Sequence[str] | None) -> None:
    """Refuse a library model whose class count differs from the dataset's, or whose label names are the
    dataset's in another order (each label would be certified as another class)."""
    if num_classes is not None and library.num_classes > 0 and library.num_classes != num_classes:
        raise ValueError(f"classifier {name} has {library.num_classes} classes but the dataset has {num_classes}")
    if class_names is None or library.labels is None or len(class_names) != len(library.labels):
        return
    ours, theirs = ([re.sub(r"[\s_-]+", " ", str(c)).strip().lower() for c in names]
                    for names in (class_names, library.labels))
    if ours != theirs and sorted(ours) == sorted(theirs):
        i = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
        raise ValueError(f"classifier {name} orders its classes differently from the dataset: its class {i} is "
                         f"{library.labels[i]!r}, the dataset's label {i} is {class_names[i]!r}")


class Resize(nn.Module):
    """Images [B, C, h, w] -> [B, C, H, W] by bicubic interpolation with antialiasing (PIL's bicubic kernel, the
    call DDS makes: ``F.interpolate(x, size, mode="bicubic", antialias=True)``), computed in float32 so that half
    precision runs resize as accurately as float32 ones. Resizing commutes with the per-channel normalisation
    (the kernel's weights sum to one), so it may sit after the normalisation layer, where the fused path needs it.
    """

    def __init__(self, size: Sequence[int]) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), size=self.size, mode="bicubic", align_corners=False,
                             antialias=True).to(x.dtype)

    def extra_repr(self) -> str:
        return f"size={self.size}, mode='bicubic', antialias=True"


def describe_output(out: object) -> str:
    """A short description of what a model returned, for an error message."""
    if isinstance(out, torch.Tensor):
        return f"a tensor {list(out.shape)}"
    if isinstance(out, (tuple, list)):
        parts = [f"tensor {list(o.shape)}" if isinstance(o, torch.Tensor) else type(o).__name__ for o in out[:4]]
        return f"a {type(out).__name__} of {len(out)} ({', '.join(parts)}{', ...' if len(out) > 4 else ''})"
    if isinstance(out, Mapping):
        return f"a {type(out).__name__} with keys {', '.join(map(str, list(out)[:6]))}"
    return f"a {type(out).__name__}"


class Logits(nn.Module):
    """The wrapped model's logits [B, classes]: its output itself when that is a tensor, else the output's
    ``.logits`` (Hugging Face's ``ImageClassifierOutput`` and alike). Anything else (a tuple of logits and
    features, a dict) is an error that says what was returned: guessing which element holds the logits could
    certify the wrong tensor."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, torch.Tensor):
            return out
        logits = getattr(out, "logits", None)
        if isinstance(logits, torch.Tensor):
            return logits
        raise ValueError(f"classifier {self.name} returned {describe_output(out)}; expected logits [batch, classes]: "
                         f"return one tensor, or an object with a .logits tensor")
