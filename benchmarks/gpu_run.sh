#!/usr/bin/env bash
# Everything that needs a GPU, in one command, on one CUDA machine (sized for ~25 minutes on one H100):
#
#   bash benchmarks/gpu_run.sh [RESULTS_DIR]        (default: benchmarks/results/gpu-<UTC time>)
#   PROFILE=short bash benchmarks/gpu_run.sh ...    (under 10 minutes: build, GPU tests, end to end in bf16 with
#                                                    and without every speed option, one image each, kernels)
#
#  1. builds the CUDA extension in place (editable install, CUDA required);
#  2. runs the GPU tests (pytest -m gpu);
#  3. times the kernels (pytest-benchmark JSON) and the CPU op ratios;
#  4. runs the end-to-end certification benchmark, engine (bf16, fp16, fp32) against the paper-style baseline,
#     on CIFAR-10 and ImageNet in --quick mode;
#  5. runs the rest of the test suite (-m "not gpu"; with step 2 that is the whole suite);
#  6. prints a summary (also in RESULTS_DIR/summary.txt).
#
# The benchmarks run before the long CPU-heavy suite so that a short GPU lease still gets them. A failing step is
# logged and the next one runs; the script exits non-zero at the end if any step failed. Each step has a time
# limit (seconds, overridable: e.g. LIMIT_SUITE=1200). The machine needs no network: dependencies must already
# be installed (the install uses --no-deps). DRY_RUN=1 lists the steps and summarises RESULTS_DIR without running
# anything (the CPU test of this script does that).
set -euo pipefail
cd "$(dirname "$0")/.."

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${1:-benchmarks/results/gpu-$STAMP}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SUMMARY="$OUT/summary.txt"
FAILED=()

log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$SUMMARY"; }

# step NAME LIMIT_SECONDS COMMAND...: runs COMMAND with its output in $OUT/NAME.log, records pass/fail and time.
step() {
  local name=$1 limit=$2
  shift 2
  log "start $name (limit ${limit}s): $*"
  if [ "${DRY_RUN:-0}" = 1 ]; then return 0; fi
  local start=$SECONDS rc=0
  timeout --signal=INT --kill-after=30 "$limit" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
  if [ "$rc" -eq 0 ]; then
    log "ok    $name in $((SECONDS - start))s"
  else
    FAILED+=("$name")
    if [ "$rc" -eq 124 ]; then
      log "FAIL  $name: timed out after ${limit}s"
    else
      log "FAIL  $name: exit $rc after $((SECONDS - start))s"
    fi
    tail -n 20 "$OUT/$name.log" | sed 's/^/      /' | tee -a "$SUMMARY"
  fi
}

# --- 0. the machine ------------------------------------------------------------------------------------------
log "results in $OUT; commit $(git rev-parse HEAD 2>/dev/null || echo unknown)"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
python - >"$OUT/env.txt" 2>&1 <<'EOF'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
EOF
tee -a "$SUMMARY" <"$OUT/env.txt"
if [ "${DRY_RUN:-0}" != 1 ] && ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  log "no CUDA device visible to torch: nothing to do here"
  exit 1
fi
# Compile for this GPU only (the default list of every architecture takes several times longer).
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ] && [ "${DRY_RUN:-0}" != 1 ]; then
  TORCH_CUDA_ARCH_LIST=$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")
  export TORCH_CUDA_ARCH_LIST
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
# The tests and benchmarks must run the compiled Triton kernels, not the CPU interpreter.
unset TRITON_INTERPRET

# --- 1. build -------------------------------------------------------------------------------------------------
if [ "${PROFILE:-full}" = short ]; then BUILD_LIMIT=${LIMIT_BUILD:-300}; else BUILD_LIMIT=${LIMIT_BUILD:-900}; fi
step build "$BUILD_LIMIT" env DIFFSMOOTH_CUDA=1 pip install --no-build-isolation --no-deps -e .
step extension-check 60 python -c "import diffsmooth_fast._C, diffsmooth_fast._C_cuda; \
from diffsmooth_fast.ops import unavailable_reason as u; print({b: u(b, 'cuda') or 'ok' for b in ('cuda', 'triton')})"

if [ "${PROFILE:-full}" = short ]; then
  # One short device call: the GPU tests, then each preset's engine in bfloat16, plain and with every speed
  # option, against the baseline on one image, then the kernels. No CPU-only work (CI runs that).
  # Without the gpu_full tests: on a cold Triton cache each constexpr variant compiles once (~0.5-1 s), and the
  # GroupNorm test's 90 variants plus the inductor test would not fit in the limit with the rest.
  step pytest-gpu "${LIMIT_GPU_TESTS:-150}" python -m pytest -m "gpu and not gpu_full" -q -rs \
    --junitxml="$OUT/pytest-gpu.xml"
  for preset in cifar10 imagenet; do
    # ImageNet's UNet has more norm geometries to compile (Triton) and 224x224 passes: more time
    if [ "$preset" = imagenet ]; then limit=${LIMIT_E2E:-180}; else limit=${LIMIT_E2E:-120}; fi
    step "end_to_end-$preset" "$limit" diffsmooth-fast bench e2e --preset "$preset" --quick --images 1 \
      --dtype bfloat16 --variants graphs fast --device cuda --json "$OUT/end_to_end-$preset.json"
  done
  step bench-ops-cuda 60 diffsmooth-fast bench ops --device cuda --rounds 5 --json "$OUT/bench_ops_cuda.json"
fi

if [ "${PROFILE:-full}" != short ]; then
# --- 2. GPU tests ---------------------------------------------------------------------------------------------
step pytest-gpu "${LIMIT_GPU_TESTS:-600}" python -m pytest -m gpu -q -rs --junitxml="$OUT/pytest-gpu.xml"

# --- 3. kernel benchmarks -------------------------------------------------------------------------------------
step bench-ops "${LIMIT_BENCH:-600}" python -m pytest benchmarks/test_bench_ops.py benchmarks/test_bench_noise.py \
  --benchmark-enable --benchmark-group-by=group --benchmark-json="$OUT/bench_ops.json" -q
step bench-ops-cuda 300 diffsmooth-fast bench ops --device cuda --json "$OUT/bench_ops_cuda.json"
step op-ratios-cpu 300 python benchmarks/op_ratios.py --json "$OUT/op_ratios_cpu.json"

# --- 4. end to end: engine vs paper-style baseline, quick (n extrapolated to the paper's N) -------------------
for preset in cifar10 imagenet; do
  step "end_to_end-$preset" "${LIMIT_E2E:-600}" diffsmooth-fast bench e2e --preset "$preset" --quick \
    --dtype bfloat16 float16 float32 --variants amp graphs fused fast --device cuda \
    --json "$OUT/end_to_end-$preset.json"
done

# --- 5. the rest of the test suite ----------------------------------------------------------------------------
step pytest-rest "${LIMIT_SUITE:-900}" python -m pytest -m "not gpu" -q -rs --junitxml="$OUT/pytest-rest.xml"
fi

# --- 6. summary -----------------------------------------------------------------------------------------------
python - "$OUT" <<'EOF' | tee -a "$SUMMARY"
import glob, json, os, sys
out = sys.argv[1]
print("\n== end to end (seconds per image at the paper's N; quick runs are extrapolated)")
for path in sorted(glob.glob(os.path.join(out, "end_to_end-*.json"))):
    r = json.load(open(path))
    s = r["settings"]
    print(f"{s['setup']} on {r['device']['name']}: N={s['N']} (measured n={s['n']}), n0={s['n0']}, m={s['m']}, "
          f"{s['images']} images")
    for run in r["runs"]:
        if "error" in run:
            print(f"  {run['name']:28s} {run['dtype']:8s} batch {run['batch']:5d}: FAILED: {run['error']}")
            continue
        mem = run["peak_gpu_memory_bytes"]
        same = "" if "matches_engine" not in run else f"  same certificates as engine: {run['matches_engine']}"
        print(f"  {run['name']:28s} {run['dtype']:8s} batch {run['batch']:5d}: {run['seconds_per_image']:9.2f} s/image "
              f"{run['samples_per_second']:9.1f} samples/s  MFU {100 * run['mfu']:5.1f}%  "
              f"peak {mem / 2**30 if mem else 0:6.2f} GiB{same}")
    for name, ratios in r.get("speedups", {"engine": r["speedup"]}).items():
        for dtype, ratio in ratios.items():
            print(f"  speedup {dtype}: {ratio:.2f}x ({name} over the baseline)")
path = os.path.join(out, "bench_ops.json")
if os.path.exists(path):
    print("\n== kernels (median, pytest-benchmark)")
    for b in json.load(open(path))["benchmarks"]:
        print(f"  {b['group'] or '':20s} {b['name']:50s} {b['stats']['median'] * 1e3:10.3f} ms")
EOF
if [ "${DRY_RUN:-0}" = 1 ]; then
  log "dry run: no step was run"
elif [ ${#FAILED[@]} -eq 0 ]; then
  log "all steps passed; results in $OUT"
else
  log "FAILED steps: ${FAILED[*]}; logs in $OUT"
  exit 1
fi
