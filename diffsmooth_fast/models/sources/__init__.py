"""Where a classifier comes from besides a Cohen/SmoothAdv checkpoint: the model libraries (``timm:``,
``torchvision:``, ``hf:``, one module each, sharing ``common``) and the user's own code (``user_models``:
TorchScript, ``module:function``). This module says which library a spec names and gives its loader; the
libraries themselves are imported only when a spec of theirs is loaded."""

from __future__ import annotations

from .common import LIBRARIES, LibraryModel
from .hf_spec import load_hf
from .timm_spec import load_timm
from .torchvision_spec import load_torchvision


def is_library_spec(spec: str) -> bool:
    """Whether ``spec`` names a library model (``timm:``, ``torchvision:``, ``hf:``) rather than a file or a
    ``module:function``."""
    prefix, sep, rest = spec.partition(":")
    return bool(sep) and prefix in LIBRARIES and bool(rest)


def load_library_model(spec: str, *, trust_checkpoint: bool = False) -> LibraryModel:
    """The model a ``timm:``, ``torchvision:`` or ``hf:`` spec names, on the CPU, in eval mode, offline.

    Raises:
        ValueError: the library is not installed, the model name is unknown, the weights are not on this machine
            (where it looked and how to fetch them), or the weights do not fit the model.
    """
    prefix, _, rest = spec.partition(":")
    if prefix == "timm":
        return load_timm(spec, rest, trust_checkpoint=trust_checkpoint)
    if prefix == "torchvision":
        return load_torchvision(spec, rest, trust_checkpoint=trust_checkpoint)
    if prefix == "hf":
        return load_hf(spec, rest)
    raise ValueError(f"classifier {spec}: unknown library {prefix!r}; known: {', '.join(LIBRARIES)}")
