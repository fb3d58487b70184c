"""The user's own classifiers: a TorchScript file or a ``module:function`` that builds an ``nn.Module``.

Both come back wrapped in ``Logits``, so a model that returns an object with ``.logits`` works and one that
returns a tuple is refused saying what it returned. A ``module:function`` inside timm, torchvision or transformers
is refused: calling a library factory builds an untrained network, which would certify garbage without any error.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import zipfile

import torch
from torch import nn

from .common import Logits, refuse_library_factory
from ..loading import first_line

FACTORY_SPEC = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def is_torchscript(path: str) -> bool:
    """Whether ``path`` is a ``torch.jit.save`` archive (they carry constants.pkl; torch.save archives do not)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def from_torchscript(path: str) -> nn.Module:
    """The TorchScript model in ``path``, wrapped in ``Logits``."""
    try:
        return Logits(torch.jit.load(path, map_location="cpu"), path)
    except (RuntimeError, OSError, ValueError) as exc:
        raise ValueError(f"classifier {path}: not a loadable TorchScript file ({first_line(exc)})") from None


def from_factory(spec: str) -> nn.Module:
    """``function()`` of ``module:function``, wrapped in ``Logits``.

    Raises:
        ValueError: a library factory (with the spec to use instead), a module that cannot be imported (saying
            when it sits in the current folder, which is not on the import path), a missing function, a function
            that raises (named, with its exception) or returns something other than an ``nn.Module``.
    """
    module_name, function_name = spec.split(":")
    refuse_library_factory(spec, module_name)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"classifier {spec}: cannot import module {module_name!r} ({exc}){_path_hint(module_name)}") \
            from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"classifier {spec}: module {module_name!r} has no function {function_name!r}")
    # A user module may re-export a library factory (from torchvision.models import resnet50): same trap.
    refuse_library_factory(spec, getattr(function, "__module__", None) or "")
    try:
        net = function()
    except Exception as exc:  # noqa: BLE001 - the user's code: report whatever it raised in one line
        raise ValueError(f"classifier {spec}: {function_name}() raised {type(exc).__name__}: {first_line(exc)}") \
            from None
    if not isinstance(net, nn.Module):
        raise ValueError(f"classifier {spec}: {function_name}() returned {type(net).__name__}, not a torch.nn.Module")
    return Logits(net, spec)


def _path_hint(module_name: str) -> str:
    """When the module's file is in the current folder but the folder is not on ``sys.path``, say so (the
    ``diffsmooth-fast`` script, unlike ``python -m``, does not put the current folder on the import path)."""
    top = module_name.split(".")[0]
    here = os.getcwd()
    if not (os.path.isfile(os.path.join(here, f"{top}.py")) or os.path.isdir(os.path.join(here, top))):
        return ""
    on_path = {os.path.realpath(p or os.curdir) for p in sys.path}
    if os.path.realpath(here) in on_path:
        return ""
    return (f"; {top} is in the current folder, which is not on the import path: run with PYTHONPATH=. "
            f"(or python -m diffsmooth_fast)")
