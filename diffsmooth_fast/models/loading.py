"""Safe reading of checkpoint files: ``torch.load(..., weights_only=True)`` with errors that say what to do.

A checkpoint that needs arbitrary code to unpickle is refused unless the caller says it trusts the file
(``trust_checkpoint=True``, ``--trust-checkpoint`` on the command line), because unpickling runs code.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any

import torch

_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
TRUST_OPTION = "trust_checkpoint=True (--trust-checkpoint on the command line)"


def load_checkpoint(path: str | os.PathLike[str], *, what: str = "checkpoint", trust_checkpoint: bool = False) -> Any:
    """The object stored in ``path``, on the CPU.

    Tensors are memory-mapped when the file allows it (torch's zip format), so converting a large state dict
    tensor by tensor never holds two full copies in memory.

    Raises:
        ValueError: the file is missing, unreadable, not a torch file, or needs code to unpickle (named).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{what} {path}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"{what} {path}: is a directory, expected a file")
    weights_only = not trust_checkpoint
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc) and "zip" not in str(exc):
                raise
            # Legacy (non-zip) torch files cannot be memory-mapped; read them whole.
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as exc:
        found = _UNSUPPORTED_GLOBAL.search(str(exc))
        if weights_only and found:
            raise ValueError(
                f"{what} {path} needs arbitrary code to unpickle (it refers to {found.group(1)}); "
                f"if you trust the file, pass {TRUST_OPTION}"
            ) from None
        raise ValueError(f"{what} {path}: not a readable torch file ({_NOT_TORCH})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ValueError(f"{what} {path}: not a readable torch file ({_first_line(exc)})") from None


_NOT_TORCH = "corrupt, truncated, or not written by torch.save"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
