"""``torchvision:MODEL_NAME[:WEIGHTS_ENUM][@WEIGHTS_FILE]``: a torchvision classification model.

``MODEL_NAME`` is a name of ``torchvision.models.list_models()`` (``resnet50``); ``WEIGHTS_ENUM`` a member of its
weights enum (``IMAGENET1K_V2``; default ``DEFAULT``), whose ``transforms()`` give the normalisation and the crop
size. The weights are

- without ``@WEIGHTS_FILE``: the enum's file in torch hub's local cache (``torch.hub.get_dir()/checkpoints/``),
  built by torchvision's own builder (so its model-specific settings, such as Inception's ``transform_input``,
  are those of the release); the file is first read with ``weights_only`` unpickling, so a file that would run
  code is refused before torchvision reads it;
- ``@WEIGHTS_FILE``: a state dict (``torch.save`` or ``.safetensors``) for ``MODEL_NAME`` built without weights;
  the class count is read from the last linear layer's weight (a CIFAR-10 fine-tune loads with 10 classes).
"""

from __future__ import annotations

import difflib
import os

import torch
from torch import nn

from ..loading import first_line, load_checkpoint
from .common import LibraryModel, import_library, load_state, state_dict_from_file


def load_torchvision(spec: str, rest: str, *, trust_checkpoint: bool = False) -> LibraryModel:
    """The model of a ``torchvision:`` spec (``rest`` is what follows ``torchvision:``).

    Raises:
        ValueError: torchvision missing or not importable, an unknown model or weights name, weights not in the
            cache (where it looked, how to fetch them), or weights that do not fit the model.
    """
    body, _, file = rest.partition("@")
    name, _, enum_name = body.partition(":")
    import_library(spec, "torchvision", "torchvision")
    from torchvision.models import get_model, get_model_weights, list_models

    if name not in list_models():
        close = difflib.get_close_matches(name, list_models(), n=4)
        raise ValueError(f"classifier {spec}: torchvision has no model {name!r}"
                         + (f"; close names: {', '.join(close)}" if close else ""))
    enum = get_model_weights(name)
    members = [m for m in enum.__members__ if m != "DEFAULT"]
    if enum_name and enum_name not in enum.__members__:
        raise ValueError(f"classifier {spec}: {enum.__name__} has no member {enum_name!r}; known: "
                         f"{', '.join(members)} (or DEFAULT)")
    weights = enum[enum_name or "DEFAULT"]
    categories = tuple(weights.meta.get("categories") or ()) or None
    if file:
        path = file
        state = state_dict_from_file(spec, path, trust_checkpoint=trust_checkpoint)
        net = get_model(name, weights=None)
        head = _head_key(net)
        rows = state[head].shape[0] if head in state and state[head].ndim == 2 else None
        if rows is not None and rows != net.state_dict()[head].shape[0]:
            net = get_model(name, weights=None, num_classes=int(rows))
        load_state(spec, net, state, path)
    else:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
        if not os.path.isfile(path):
            raise ValueError(f"classifier {spec}: no weights on this machine (looked for {path}); nothing is "
                             f"downloaded during a run: fetch them once with python -c \"import torchvision; "
                             f"torchvision.models.get_model('{name}', weights='{weights.name}')\", or give a file "
                             f"as torchvision:{name}:{weights.name}@FILE")
        load_checkpoint(path, what=f"classifier {spec}: weights file", trust_checkpoint=trust_checkpoint)
        try:
            net = get_model(name, weights=weights, progress=False)
        except RuntimeError as exc:
            first = first_line(exc)
            raise ValueError(f"classifier {spec}: torchvision cannot load {path} ({first})") from None
    transforms = weights.transforms()
    crop = list(transforms.crop_size)
    size = (int(crop[0]), int(crop[-1]))
    num_classes = _num_classes(net)
    labels = categories if categories is not None and len(categories) == num_classes else None
    return LibraryModel(net.eval(), tuple(transforms.mean), tuple(transforms.std), size,
                        str(getattr(transforms.interpolation, "value", transforms.interpolation)), num_classes,
                        labels, f"torchvision {weights}, weights {path}")


def _last_linear(net: nn.Module) -> tuple[str, nn.Linear] | None:
    found = None
    for module_name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            found = (module_name, module)
    return found


def _head_key(net: nn.Module) -> str | None:
    """The state-dict key of the classification head's weight: the last linear layer's."""
    found = _last_linear(net)
    return f"{found[0]}.weight" if found else None


def _num_classes(net: nn.Module) -> int:
    found = _last_linear(net)
    return int(found[1].out_features) if found else -1
