"""Benchmark setup: as in tests/, run Triton in its interpreter when there is no GPU."""

import os
import shutil

if "TRITON_INTERPRET" not in os.environ and shutil.which("nvidia-smi") is None:
    os.environ["TRITON_INTERPRET"] = "1"
