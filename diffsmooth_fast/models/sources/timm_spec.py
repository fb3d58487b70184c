"""``timm:MODEL_NAME[@WEIGHTS_FILE]``: a timm model with its weights and timm's ``pretrained_cfg`` input record.

``MODEL_NAME`` is any name ``timm.create_model`` takes, with or without a pretrained tag
(``beit_large_patch16_224`` or ``beit_large_patch16_224.in22k_ft_in22k_in1k``). The weights are

- ``@WEIGHTS_FILE``: a state dict saved by ``torch.save`` (``.pth``, ``.pt``, ``.bin``, bare or under
  ``state_dict``/``model``) or a ``.safetensors`` file; the class count is read from the head's weight, so a
  fine-tuned checkpoint (CIFAR-10 BEiT) loads with its own head;
- otherwise timm's local cache: the Hugging Face hub cache (``pretrained_cfg['hf_hub_id']``: ``model.safetensors``
  or ``pytorch_model.bin``), then torch hub's checkpoint folder (``pretrained_cfg['url']``).

The file is read with ``weights_only`` unpickling (or as safetensors), never by timm's own loader, which may
unpickle arbitrary objects. Files in another layout than timm's (original BEiT releases) go through the model
module's ``checkpoint_filter_fn``, as timm does for its own downloads.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

import torch

from .common import LibraryModel, import_library, load_state, state_dict_from_file

HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def load_timm(spec: str, rest: str, *, trust_checkpoint: bool = False) -> LibraryModel:
    """The model of a ``timm:`` spec (``rest`` is what follows ``timm:``); see the module docstring.

    Raises:
        ValueError: timm missing, an unknown model name, weights not found (where it looked, how to fetch them),
            or weights that do not fit the model.
    """
    name, _, file = rest.partition("@")
    timm = import_library(spec, "timm", "timm")
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:12]}*")[:5]
        raise ValueError(f"classifier {spec}: timm has no model {name!r}"
                         + (f"; close names: {', '.join(close)}" if close else ""))
    if file:
        path = file
        state = state_dict_from_file(spec, path, trust_checkpoint=trust_checkpoint)
        num_classes = _head_classes(timm.models.get_pretrained_cfg_value(name, "classifier"), state)
        net = timm.create_model(name, pretrained=False, **({"num_classes": num_classes} if num_classes else {}))
    else:
        net = timm.create_model(name, pretrained=False)
        path = _cached_weights(spec, name, net.pretrained_cfg)
        state = state_dict_from_file(spec, path, trust_checkpoint=trust_checkpoint)
    _load(spec, net, state, path)
    cfg = net.pretrained_cfg
    _, height, width = cfg["input_size"]
    return LibraryModel(net.eval(), tuple(cfg["mean"]), tuple(cfg["std"]), (int(height), int(width)),
                        str(cfg.get("interpolation", "")), int(net.num_classes), None, f"timm, weights {path}")


def _head_classes(head: object, state: Mapping[str, torch.Tensor]) -> int | None:
    """The class count of a state dict: rows of the classifier's weight (``head``: its name in timm's cfg)."""
    head = head[0] if isinstance(head, (tuple, list)) else head
    weight = state.get(f"{head}.weight") if head else None
    return int(weight.shape[0]) if weight is not None and weight.ndim >= 2 else None


def _load(spec: str, net: torch.nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    expected = net.state_dict()
    if set(state) != set(expected):
        # A release in its authors' layout: timm maps it with the model module's filter, as for its downloads.
        filter_fn = getattr(sys.modules[type(net).__module__], "checkpoint_filter_fn", None)
        if filter_fn is not None:
            try:
                state = filter_fn(state, net)
            except Exception:  # noqa: BLE001 - a filter that does not apply: report the keys below instead
                pass
    load_state(spec, net, state, path)


def _cached_weights(spec: str, name: str, cfg: Mapping) -> str:
    """The weights file of ``cfg`` in the local caches, or a one-line error naming where it looked."""
    looked = []
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import constants, try_to_load_from_cache
        repo, _, revision = hub_id.partition("@")
        names = (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else HUB_FILES
        for filename in names:
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str) and os.path.isfile(found):
                return found
        looked.append(os.path.join(constants.HF_HUB_CACHE, "models--" + repo.replace("/", "--")))
    url = cfg.get("url")
    if url:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url.split("?")[0]))
        if os.path.isfile(path):
            return path
        looked.append(path)
    if cfg.get("file"):
        if os.path.isfile(cfg["file"]):
            return cfg["file"]
        looked.append(cfg["file"])
    if not looked:
        raise ValueError(f"classifier {spec}: timm records no pretrained weights for {name}; give a weights file "
                         f"as timm:{name}@FILE")
    raise ValueError(f"classifier {spec}: no weights on this machine (looked in {' and '.join(looked)}); nothing "
                     f"is downloaded during a run: fetch them once with python -c \"import timm; "
                     f"timm.create_model('{name}', pretrained=True)\", or give a file as timm:{name}@FILE")
