"""Build of diffsmooth_fast's C++ (always) and CUDA (when torch has CUDA) extensions.

Install with `pip install --no-build-isolation .` (or `-e .`): the extensions must compile against the torch
that is installed, which an isolated build environment would replace.

DIFFSMOOTH_CUDA selects the CUDA build: `auto` (default: build when torch has CUDA and a toolkit is found),
`1` (build or fail with the reason), `0` (skip).
"""

from __future__ import annotations

import os
import re
import sys
from importlib import metadata

from setuptools import setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit(
        "diffsmooth_fast builds against an installed torch: run `pip install torch` first, then "
        "`pip install --no-build-isolation .`"
    )

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")
# -fno-trapping-math: floating-point exception flags are never read, and without it GCC keeps the kernels'
# NaN-preserving ternary clamps and selects as branches instead of vector code (values do not change).
# No -march: the wheel must run on any x86-64 (SSE2 vectors are the baseline).
CXX_FLAGS = ["-O3", "-std=c++17", "-fopenmp", "-fno-trapping-math"]


def _cuda_mode() -> str:
    mode = os.environ.get("DIFFSMOOTH_CUDA", "auto").strip().lower()
    aliases = {"1": "force", "on": "force", "force": "force", "0": "skip", "off": "skip", "skip": "skip"}
    if mode != "auto" and mode not in aliases:
        sys.exit(f"DIFFSMOOTH_CUDA must be auto, 1 or 0, got {mode!r}")
    return aliases.get(mode, "auto")


def _want_cuda() -> bool:
    mode = _cuda_mode()
    if mode == "skip":
        return False
    problem = None
    if torch.version.cuda is None:
        problem = f"the installed torch {torch.__version__} is a CPU build (torch.version.cuda is None)"
    elif cpp_extension.CUDA_HOME is None:
        problem = "no CUDA toolkit was found (set CUDA_HOME to the directory that holds bin/nvcc)"
    if problem is None:
        return True
    if mode == "force":
        sys.exit(f"DIFFSMOOTH_CUDA=1 but the CUDA extension cannot be built: {problem}")
    print(f"diffsmooth_fast: skipping the CUDA extension: {problem}", file=sys.stderr)
    return False


def _extensions() -> list:
    core_sources = [os.path.join(CSRC, "core", f"{name}.cpp") for name in ("noise", "noisy_input", "denoise", "vote")]
    cuda_sources = [os.path.join(CSRC, "cuda", f"{name}.cu") for name in ("noise", "noisy_input", "denoise", "vote")]
    ext = [
        cpp_extension.CppExtension(
            "diffsmooth_fast._C",
            sources=[os.path.join(CSRC, "bindings.cpp"), *core_sources],
            include_dirs=[os.path.join(HERE, CSRC)],
            extra_compile_args={"cxx": CXX_FLAGS},
            extra_link_args=["-fopenmp"],
        )
    ]
    if _want_cuda():
        ext.append(
            cpp_extension.CUDAExtension(
                "diffsmooth_fast._C_cuda",
                sources=[os.path.join(CSRC, "bindings_cuda.cpp"), *cuda_sources],
                include_dirs=[os.path.join(HERE, CSRC)],
                extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": ["-O3", "-std=c++17"]},
            )
        )
    return ext


# The triton release the CPU tests are validated with (TRITON_INTERPRET=1), for a torch that names none itself.
TRITON_CPU = "triton==3.6.0"


def _extras() -> dict[str, list[str]]:
    """The optional dependencies (pyproject.toml declares them dynamic), pinned so that pip can satisfy them next
    to the installed torch and never replaces it.

    - triton: the installed torch's own requirement (a CUDA torch 2.13 needs triton 3.7.1, 2.14 needs 3.8), or
      ``TRITON_CPU`` for a torch that names none (the CPU wheels).
    - torchvision (and timm, which imports it): torch 2.X is released with torchvision 0.(X+15), and each
      torchvision wheel requires one torch; the extra names both, so pip installs the torchvision built for the
      installed torch or fails, instead of bringing another torch.
    """
    torch_base = torch.__version__.split("+")[0]
    requires = [r for r in (metadata.requires("torch") or []) if re.match(r"triton\b", r)]
    triton = requires[0].split(";")[0].strip() if requires else TRITON_CPU
    major, minor = (int(part) for part in re.findall(r"\d+", torch_base)[:2])
    torchvision = [f"torch=={torch_base}", f"torchvision==0.{minor + 15}.*" if major == 2 else "torchvision"]
    hf = ["transformers>=4.40", "huggingface_hub>=0.23", "safetensors>=0.4"]
    diffusers = ["diffusers>=0.27", "huggingface_hub>=0.23", "safetensors>=0.4"]
    return {
        "triton": [triton],
        "plot": ["matplotlib>=3.7"],
        "train": ["scikit-learn>=1.3"],  # python -m diffsmooth_fast.demo.train (the digits come with scikit-learn)
        "safetensors": ["safetensors>=0.4"],
        "hf": hf,
        "diffusers": diffusers,
        "torchvision": torchvision,
        "timm": ["timm>=0.9", "huggingface_hub>=0.23", "safetensors>=0.4", *torchvision],
        # Not timm or torchvision: PyPI's torchvision wheels are CUDA builds that fail to import beside a CPU torch
        # (and transformers would then try to use them); their tests skip when they cannot be imported.
        "test": ["pytest>=8", "pytest-benchmark>=4", "statsmodels>=0.14", triton, "matplotlib>=3.7",
                 "scikit-learn>=1.3", *dict.fromkeys(hf + diffusers)],
    }


setup(
    extras_require=_extras(),
    ext_modules=_extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
