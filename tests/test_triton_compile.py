"""Every Triton kernel of the project compiles for an sm_90 GPU, with no GPU present (tests/triton_aot.py).

The CPU tests run the kernels in Triton's interpreter, which accepts code the real compiler rejects; this is the
check that they build before the first GPU run. Each test compiles all the variants its kernel's wrapper can
launch (dtypes, flags, int widths) in one subprocess, as triton reads TRITON_INTERPRET at import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest

import diffsmooth_fast

from .test_ops_common import needs_triton

# A hang guard, not a speed test: one kernel's compiles took 18-80 s on 2 cores at a load average of 5, and over
# 300 s on a busier machine; an hour stops only a compile that hangs.
HANG_GUARD = 3600
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(diffsmooth_fast.__file__)))  # this checkout, not another


@needs_triton
@pytest.mark.parametrize("kernel", ["noise", "noisy_input", "denoise", "vote", "group_norm"])
def test_compiles_for_a_gpu_target(kernel, tmp_path):
    pytest.importorskip("triton.backends.nvidia", reason="triton's NVIDIA backend is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # a real compile every time, and ptxas's register report with it
    done = subprocess.run([sys.executable, "-m", "tests.triton_aot", kernel], check=False, env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=HANG_GUARD)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    failed = [row for row in rows if not row["ok"]]
    assert done.returncode == 0 and rows and not failed, (
        "\n\n".join(f"{row['signature']} {row['constexprs']}:\n{row['error']}" for row in failed[:3])
        or done.stderr[-3000:])
    # Spills are slow, not wrong: reported, not failed.
    for row in rows:
        if row["spill_bytes"]:
            warnings.warn(f"{kernel}: {row['spill_bytes']} bytes of register spills with {row['registers']} "
                          f"registers, {row['signature']} {row['constexprs']}", stacklevel=1)
