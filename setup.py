"""Build of diffsmooth_fast's C++ (always) and CUDA (when torch has CUDA) extensions.

Install with `pip install --no-build-isolation .` (or `-e .`): the extensions must compile against the torch
that is installed, which an isolated build environment would replace.

DIFFSMOOTH_CUDA selects the CUDA build: `auto` (default: build when torch has CUDA and a toolkit is found),
`1` (build or fail with the reason), `0` (skip).
"""

from __future__ import annotations

import os
import sys

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


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
