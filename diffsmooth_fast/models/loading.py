"""Safe reading of checkpoint files: ``torch.load(..., weights_only=True)`` with errors that say what to do.

A checkpoint that needs arbitrary code to unpickle is refused unless the caller says it trusts the file
(``trust_checkpoint=True``, ``--trust-checkpoint`` on the command line), because unpickling runs code.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import torch

# torch's two wordings: an allowed-list miss ("Unsupported global: GLOBAL argparse.Namespace") and a blocked module
# ("Trying to load unsupported GLOBAL posix.system whose module posix is blocked"): both name code to run.
_UNSUPPORTED_GLOBAL = re.compile(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)")
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
                f"{what} {path} would run code when unpickled (it refers to {found.group(1)}), so it was not "
                f"read; if you trust the file, pass {TRUST_OPTION}"
            ) from None
        raise ValueError(f"{what} {path}: not a readable torch file ({_NOT_TORCH})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ValueError(f"{what} {path}: not a readable torch file ({first_line(exc)})") from None


_NOT_TORCH = "corrupt, truncated, or not written by torch.save"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_weights(path: str | os.PathLike[str], *, what: str = "checkpoint", trust_checkpoint: bool = False) -> Any:
    """``load_checkpoint``, or for a ``.safetensors`` file its dict of tensors (safetensors holds no code).

    Raises:
        ValueError: as ``load_checkpoint``; a ``.safetensors`` file that is unreadable, or without the
            ``safetensors`` package installed.
    """
    path = os.fspath(path)
    if not path.endswith(".safetensors"):
        return load_checkpoint(path, what=what, trust_checkpoint=trust_checkpoint)
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path}: no such file")
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ValueError(f"{what} {path}: reading .safetensors files needs the safetensors package "
                         f"(pip install safetensors)") from None
    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError (not exported on every version)
        raise ValueError(f"{what} {path}: not a readable .safetensors file ({first_line(exc)})") from None


def state_mismatch(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str | None:
    """What keeps ``state`` from loading strictly into a network whose state dict is ``expected``: missing,
    unexpected and misshapen tensors, a few of each named (``None`` when it fits). A partly loaded network would
    certify with random weights, so every loader refuses on this."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {list(state[k].shape)} (expected {list(expected[k].shape)})"
             for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = [f"{label} {', '.join(items[:3])}{', ...' if len(items) > 3 else ''} ({len(items)} in all)"
                for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("wrong shapes", wrong)) if items]
    return "; ".join(problems) or None
