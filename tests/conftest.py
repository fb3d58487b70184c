"""Shared test setup. TRITON_INTERPRET must be set before anything imports triton, hence at the top."""

import os
import shutil

# Without a GPU, run Triton kernels in its CPU interpreter (slow: tests use small tensors, large blocks).
if "TRITON_INTERPRET" not in os.environ and shutil.which("nvidia-smi") is None:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

HAS_GPU = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one intra-op thread: tiny models gain nothing from threads, and two OpenMP
    threads on a loaded 2-core machine stall at every barrier (observed: 5x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
