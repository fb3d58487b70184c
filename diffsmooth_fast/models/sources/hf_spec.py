"""``hf:MODEL_ID_OR_FOLDER``: a Hugging Face transformers image classification model, offline.

The model is ``AutoModelForImageClassification.from_pretrained(folder, local_files_only=True)``, where ``folder`` is
the path given or, for a model id (``aaraki/vit-base-patch16-224-in21k-finetuned-cifar10``), its snapshot in the
local Hugging Face cache. Its input record is the image processor's ``preprocessor_config.json``, read as JSON
(no processor class is built, so no optional image library is needed):

- ``image_mean``/``image_std`` (``do_normalize``) and the pixel scale (``do_rescale``, ``rescale_factor``: 1/255
  for images in [0, 1] after ``ToTensor``) become one per-channel normalisation of pixels in [0, 1]:
  ``(x * s - mean) / std == (x - mean / s) / (std / s)`` with ``s = 255 * rescale_factor``;
- the input size is ``crop_size`` when the processor centre-crops, else ``size`` (``height``/``width``,
  ``shortest_edge`` or an int), else the model config's ``image_size``;
- ``id2label`` gives the class names in output order.
"""

from __future__ import annotations

import json
import os

from ..loading import first_line
from .common import LibraryModel, Logits, import_library

PROCESSOR_FILE = "preprocessor_config.json"
# PIL's resampling filters by number, as processors store them.
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def load_hf(spec: str, rest: str) -> LibraryModel:
    """The model of an ``hf:`` spec (``rest`` is what follows ``hf:``); see the module docstring.

    Raises:
        ValueError: transformers missing, a folder without a model, an id not in the local cache (where it looked
            and how to fetch it), or a processor config this module cannot read.
    """
    transformers = import_library(spec, "transformers", "hf")
    folder = rest if os.path.isdir(rest) else _cached_snapshot(spec, rest)
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        first = first_line(exc)
        raise ValueError(f"classifier {spec}: transformers cannot load an image classifier from {folder} "
                         f"({first})") from None
    config = model.config
    processor_path = os.path.join(folder, PROCESSOR_FILE)
    if not os.path.isfile(processor_path):
        raise ValueError(f"classifier {spec}: {folder} has no {PROCESSOR_FILE}, so the model's input normalisation "
                         f"is unknown; save the model's image processor beside it (processor.save_pretrained)")
    try:
        with open(processor_path) as f:
            processor = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"classifier {spec}: {processor_path} is not readable JSON ({exc})") from None
    mean, std = _normalization(spec, processor, config.num_channels if hasattr(config, "num_channels") else 3)
    size = _input_size(spec, processor, getattr(config, "image_size", None))
    labels = None
    id2label = getattr(config, "id2label", None) or {}
    if sorted(int(k) for k in id2label) == list(range(config.num_labels)):
        labels = tuple(str(id2label[i] if i in id2label else id2label[str(i)]) for i in range(config.num_labels))
    return LibraryModel(Logits(model.eval(), spec), mean, std, size,
                        _RESAMPLE.get(processor.get("resample"), str(processor.get("resample", ""))),
                        int(config.num_labels), labels, f"transformers {type(model).__name__} from {folder}")


def _cached_snapshot(spec: str, model_id: str) -> str:
    from huggingface_hub import constants, snapshot_download
    try:
        return snapshot_download(model_id, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - not cached (LocalEntryNotFoundError), or not a valid id
        reason = type(exc).__name__
    raise ValueError(f"classifier {spec}: {model_id} is no folder and is not in the Hugging Face cache ({reason}; "
                     f"looked in {os.path.join(constants.HF_HUB_CACHE, 'models--' + model_id.replace('/', '--'))}); "
                     f"nothing is downloaded during a run: fetch it once with python -c \"import huggingface_hub; "
                     f"huggingface_hub.snapshot_download('{model_id}')\"")


def _normalization(spec: str, processor: dict, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of one normalisation of pixels in [0, 1] equal to the processor's rescale + normalize."""
    scale = 255.0 * float(processor.get("rescale_factor", 1 / 255)) if processor.get("do_rescale", True) else 255.0
    if processor.get("do_normalize", True):
        mean, std = processor.get("image_mean"), processor.get("image_std")
        if mean is None or std is None:
            raise ValueError(f"classifier {spec}: its {PROCESSOR_FILE} normalises but records no image_mean/image_std")
        mean = [float(mean)] * channels if isinstance(mean, (int, float)) else [float(m) for m in mean]
        std = [float(std)] * channels if isinstance(std, (int, float)) else [float(s) for s in std]
    else:
        mean, std = [0.0] * channels, [1.0] * channels
    return tuple(m / scale for m in mean), tuple(s / scale for s in std)


def _input_size(spec: str, processor: dict, image_size: object) -> tuple[int, int]:
    """(H, W) of the model's input from the processor's crop/resize record, else the config's image_size."""
    for key, applies in (("crop_size", processor.get("do_center_crop", False)), ("size", True)):
        size = processor.get(key) if applies else None
        if isinstance(size, int):
            return size, size
        if isinstance(size, dict):
            if "height" in size and "width" in size:
                return int(size["height"]), int(size["width"])
            if "shortest_edge" in size and "longest_edge" not in size:
                return int(size["shortest_edge"]), int(size["shortest_edge"])
    if isinstance(image_size, int):
        return image_size, image_size
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        return int(image_size[0]), int(image_size[1])
    raise ValueError(f"classifier {spec}: neither its {PROCESSOR_FILE} nor its config records the input size")
