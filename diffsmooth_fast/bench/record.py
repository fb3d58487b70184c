"""What every benchmark record carries besides its numbers: when, on what device, with which versions and code."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess

import torch

from .._version import __version__

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(PACKAGE_DIR)  # the checkout, when the package runs from one (editable install)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def git_state() -> dict[str, object]:
    """Commit, branch and whether tracked files differ from it; None values outside a git checkout."""

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": None if status is None else bool(status)}


def versions() -> dict[str, object]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"diffsmooth_fast": __version__, "torch": torch.__version__, "triton": triton_version,
            "cuda": torch.version.cuda, "cudnn": cudnn, "python": platform.python_version()}


def device_info(device: torch.device) -> dict[str, object]:
    """The GPU by name, memory and capability; for a CPU its name and the threads torch uses."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": props.name, "memory_bytes": props.total_memory,
                "capability": f"{props.major}.{props.minor}"}
    return {"type": device.type, "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count()}


def header(benchmark: str, device: torch.device) -> dict[str, object]:
    """The fields every record starts with: which benchmark, when, on what, with which versions and commit."""
    return {"benchmark": benchmark, "created": now(), "device": device_info(device), "versions": versions(),
            "git": git_state()}


def write_json(record: dict, path: str) -> str:
    """Write ``record`` to ``path`` (folders created) and return the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    return path
