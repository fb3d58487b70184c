#!/usr/bin/env bash
# Everything that needs a GPU, in one command, on one CUDA machine, with every result under ONE folder:
#
#   bash benchmarks/gpu_run.sh OUT                 full profile (about 30 minutes on one H100)
#   PROFILE=short bash benchmarks/gpu_run.sh OUT   ends inside 8 minutes on one H100/H200 (DEADLINE=450 s)
#   PROFILE=short DEV=cpu bash benchmarks/gpu_run.sh OUT    CPU rehearsal: tiny models, GPU-only steps skipped
#   DRY_RUN=1 bash benchmarks/gpu_run.sh OUT       lists the steps and summarises OUT, runs nothing
#
# OUT gets one NAME.log per step (and NAME.json / NAME.xml where the step writes one), env.txt, summary.txt, and
# results.tgz: everything in OUT, re-packed every 20 s and after every step (written to a .part file and moved
# into place, so it is always a whole archive). A run killed at a time limit still leaves every finished step.
#
# Steps run from this checkout (python -m diffsmooth_fast, PYTHONPATH=checkout: no install, no entry point). The
# CUDA extension is built in place (python setup.py build_ext --inplace) in the background while the first,
# GPU-bound ImageNet benchmark runs on the Triton kernels (the build runs at nice 19). If the build fails, the
# extension check is skipped and every later end-to-end step runs with --backend triton (DIFFSMOOTH_BACKEND=triton):
# the run goes on without the CUDA kernels. Each step has a time limit (seconds); past DEADLINE seconds of the
# script the remaining steps are skipped and each step's limit is clipped to the time left, so the whole script
# ends by DEADLINE plus a few seconds. A failing step is logged and the next one runs; the exit status is non-zero
# if any step failed. No network is needed: dependencies must already be installed.
#
# Settings (environment): PROFILE (full|short), DEV (cuda|cpu), DEADLINE (seconds; short: 450, full: 3600), MIN_STEP
# (20: a step left fewer seconds is skipped),
# SKIP_BUILD=1 (default on DEV=cpu, which uses the extension already built), BUILD_CMD (default: python setup.py
# build_ext --inplace), MAX_JOBS, TORCH_CUDA_ARCH_LIST (default: this GPU's capability only).
set -uo pipefail  # no -e: a failing step is recorded and the next one runs

if [ $# -ne 1 ]; then
  echo "usage: [PROFILE=short] [DEV=cpu] [DRY_RUN=1] bash benchmarks/gpu_run.sh OUT_DIR" >&2
  exit 2
fi
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-full}
DEV=${DEV:-cuda}
DRY=${DRY_RUN:-0}
if [ "$PROFILE" = short ]; then DEADLINE=${DEADLINE:-450}; else DEADLINE=${DEADLINE:-3600}; fi
MIN_STEP=${MIN_STEP:-20}  # a step that would get fewer seconds than this is skipped rather than started
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
# The GPU steps must run compiled Triton kernels, not the CPU interpreter (pytest's conftest sets it where no GPU).
unset TRITON_INTERPRET
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
FAILED=()
SKIPPED=()

log() { echo "[$(date -u +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$SUMMARY"; }

# pack: OUT (less the archive) into OUT/results.tgz. tar exits 1 when a file changed while it was read (a log
# being written): the archive is still whole, so it is kept. Each packer has its own .part file.
pack() {
  local part="$OUT/.results.tgz.$BASHPID.part" rc=0
  tar czf "$part" -C "$OUT" --exclude=results.tgz --exclude='.results.tgz.*' . 2>/dev/null || rc=$?
  if [ "$rc" -le 1 ]; then mv -f "$part" "$OUT/results.tgz"; else rm -f "$part"; fi
}

# step NAME LIMIT CMD...: CMD's output in OUT/NAME.log, its result in the summary; skipped past the deadline.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt "$MIN_STEP" ]; then
    log "SKIP  $name: past the deadline (${DEADLINE}s)"
    SKIPPED+=("$name")
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  log "start $name (limit ${limit}s): $*"
  if [ "$DRY" = 1 ]; then return 0; fi
  local start=$SECONDS rc=0
  timeout --signal=INT --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
  if [ "$rc" -eq 0 ]; then
    log "ok    $name in $((SECONDS - start))s"
  else
    FAILED+=("$name")
    if [ "$rc" -eq 124 ]; then log "FAIL  $name: timed out after ${limit}s"; else
      log "FAIL  $name: exit $rc after $((SECONDS - start))s"; fi
    tail -n 15 "$OUT/$name.log" | sed 's/^/      /' | tee -a "$SUMMARY"
  fi
  # the lines worth reading without opening the log: end-to-end tables, test counts, kernel timings
  grep -E "^  |speedup of|passed|failed|error|ms " "$OUT/$name.log" | grep -v "^  File" | tail -n 40 \
    | sed 's/^/    /' >>"$SUMMARY"
  pack
}

# gpu_step NAME LIMIT CMD...: a step that means something only on a GPU (skipped on DEV=cpu).
gpu_step() {
  if [ "$DEV" != cuda ]; then log "SKIP  $1: GPU only (DEV=$DEV)"; return 0; fi
  step "$@"
}

# --- 0. the machine ------------------------------------------------------------------------------------------
COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
log "results in $OUT; profile $PROFILE on $DEV, deadline ${DEADLINE}s; commit $COMMIT"
if [ "$DRY" != 1 ]; then
  (while sleep 20; do kill -0 $$ 2>/dev/null || exit 0; pack; done) >/dev/null 2>&1 &
  PACKER=$!
  trap 'kill "$PACKER" 2>/dev/null; pack' EXIT
  nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
  python - >"$OUT/env.txt" 2>&1 <<'PY'
import os, platform, torch
try:
    import triton
    tv = triton.__version__
except ImportError:
    tv = None
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda, "| triton", tv,
      "| cpus", os.cpu_count())
print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")
PY
  tee -a "$SUMMARY" <"$OUT/env.txt"
  if [ "$DEV" = cuda ] && ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    log "no CUDA device visible to torch (DEV=cpu rehearses on a CPU)"
    exit 1
  fi
  if [ "$DEV" = cuda ] && [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    # this GPU only: the default list of every architecture compiles several times longer
    TORCH_CUDA_ARCH_LIST=$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")
    export TORCH_CUDA_ARCH_LIST
  fi
fi

# The end-to-end benchmark: tiny models on a CPU rehearsal (the presets' full-size models are for the GPU).
# (The demo preset has small trained models of its own: never --tiny.)
E2E=(python -m diffsmooth_fast bench e2e --device "$DEV" --quick)
TINY=()
[ "$DEV" = cpu ] && TINY=(--tiny)
# The kernels when the CUDA extension is not (yet) there: Triton on a GPU, the PyTorch reference on a CPU.
if [ "$DEV" = cuda ]; then FALLBACK=triton; else FALLBACK=torch; fi
FALLBACK_E2E=(env "DIFFSMOOTH_BACKEND=$FALLBACK" "${E2E[@]}" --backend "$FALLBACK")

# --- 1. the extension, in the background ----------------------------------------------------------------------
if [ "$DEV" = cpu ]; then SKIP_BUILD=${SKIP_BUILD:-1}; else SKIP_BUILD=${SKIP_BUILD:-0}; fi
if [ "$DEV" = cuda ]; then CUDA_BUILD=1; else CUDA_BUILD=0; fi
read -r -a BUILD <<<"${BUILD_CMD:-python setup.py build_ext --inplace}"
BUILD_PID=""
BUILD_LIMIT=$((DEADLINE / 2 < 900 ? DEADLINE / 2 : 900))
if [ "$SKIP_BUILD" = 1 ]; then
  log "build skipped (SKIP_BUILD=1): the extension already in the checkout is used"
else
  log "start build (background, limit ${BUILD_LIMIT}s): DIFFSMOOTH_CUDA=$CUDA_BUILD ${BUILD[*]}"
  if [ "$DRY" = 1 ]; then BUILD_PID=dry; else
    (
      t=$SECONDS rc=0
      DIFFSMOOTH_CUDA=$CUDA_BUILD nice -n 19 timeout -k 10 "$BUILD_LIMIT" "${BUILD[@]}" >"$OUT/build.log" 2>&1 || rc=$?
      echo "build rc=$rc in $((SECONDS - t))s" >>"$OUT/build.log"
      exit "$rc"
    ) &
    BUILD_PID=$!
  fi
fi
BUILT=unknown
# wait_build: the build's result; without a working extension the later end-to-end steps use FALLBACK.
wait_build() {
  [ -z "$BUILD_PID" ] && return 0
  if [ "$DRY" = 1 ]; then BUILD_PID=""; return 0; fi
  local rc=0
  wait "$BUILD_PID" || rc=$?
  BUILD_PID=""
  tail -n 1 "$OUT/build.log" | tee -a "$SUMMARY"
  if [ "$rc" -eq 0 ]; then BUILT=yes; else
    BUILT=no
    FAILED+=(build)
    tail -n 15 "$OUT/build.log" | sed 's/^/      /' | tee -a "$SUMMARY"
    log "the extension did not build: the end-to-end steps run on the $FALLBACK kernels"
  fi
  pack
}
e2e() {  # e2e NAME LIMIT ARGS...: one end-to-end benchmark with its JSON in OUT/NAME.json
  local name=$1 limit=$2 tiny=("${TINY[@]}")
  shift 2
  [[ " $* " == *" --preset demo "* ]] && tiny=()
  # while the extension builds (its files are being written) or when it failed: the FALLBACK kernels
  if [ "$BUILT" = no ] || [ -n "$BUILD_PID" ]; then
    step "$name" "$limit" "${FALLBACK_E2E[@]}" "${tiny[@]}" "$@" --json "$OUT/$name.json"
  else step "$name" "$limit" "${E2E[@]}" "${tiny[@]}" "$@" --json "$OUT/$name.json"; fi
}
ext_check() {
  if [ "$BUILT" = no ]; then log "SKIP  ext-check: the extension did not build"; return 0; fi
  gpu_step ext-check 30 python -c "import diffsmooth_fast._C, diffsmooth_fast._C_cuda
from diffsmooth_fast.ops import unavailable_reason as u, resolve_backend as r
print({b: u(b, 'cuda') or 'ok' for b in ('cuda', 'triton')}, 'auto ->', r('auto', 'cuda'))"
}
KERNEL_TESTS=(tests/test_ops_noisy_input.py tests/test_ops_denoise.py tests/test_ops_vote.py tests/test_noise.py
  tests/test_ops_groupnorm.py)
ENGINE_TESTS=(tests/test_graphs.py tests/test_engine_options.py tests/test_batching.py tests/test_certify.py
  tests/test_end_to_end_benchmark.py)
PYTEST=(python -m pytest -p no:cacheprovider -q -rs)
OPS=(python -m diffsmooth_fast bench ops --device "$DEV")
[ "$DEV" = cpu ] && OPS+=(--batch 16)  # the rehearsal: the command, not the numbers

# seq_demo SIGMA IMAGES LIMIT: benchmarks/sequential_efficiency.py on every 3rd digit, n = 100,000 (CPU rehearsal:
# 2 images, n = 2,000)
seq_demo() {
  local sigma=$1 images=$2 limit=$3 n=100000
  [ "$DEV" = cpu ] && { images=2; n=2000; }
  step "seq-demo-$sigma" "$limit" python benchmarks/sequential_efficiency.py --out "$OUT/seq-demo-$sigma" \
    --images "$images" --json "$OUT/seq-demo-$sigma.json" -- --dataset demo --skip 3 --method diffsmooth \
    --sigma "$sigma" --n0 100 --n "$n" --batch 10000 --device "$DEV"
}

if [ "$PROFILE" = short ]; then
  # 2. ImageNet while the extension builds: GPU-bound (1.7 TFLOP per sample), so the nice'd compile next to it
  #    does not move it; the Triton kernels (the extension is not there yet). bf16 plain, graphs, everything on;
  #    the controls (engine fp32 at the baseline's batch, the baseline under bf16 autocast).
  e2e e2e-imagenet 170 --preset imagenet --images 1 --dtype bfloat16 --variants graphs fast --controls
  wait_build
  ext_check
  # 3. CIFAR-10 (launch-bound: after the build, on a quiet CPU): fp32 and bf16, plain / graphs / fast, controls
  e2e e2e-cifar10 150 --preset cifar10 --images 2 --dtype float32 bfloat16 --variants graphs fast --controls
  # 4. the other side of the batch control: the paper's loop at the engine's batch
  e2e e2e-cifar10-b1000 60 --preset cifar10 --images 2 --baseline-batch 1000 --dtype bfloat16 --no-controls
  # 5. the kernels against the reference on the GPU, then the engine's GPU tests (graphs, options, one sync)
  gpu_step pytest-kernels 90 "${PYTEST[@]}" -m "gpu and not gpu_full" "${KERNEL_TESTS[@]}" \
    --junitxml="$OUT/pytest-kernels.xml"
  gpu_step pytest-engine 120 "${PYTEST[@]}" -m "gpu and not gpu_full" "${ENGINE_TESTS[@]}" \
    --junitxml="$OUT/pytest-engine.xml"
  step bench-ops 45 "${OPS[@]}" --rounds 5 --json "$OUT/bench-ops.json"
  # 6. the shipped trained models on the digits (tiny images: the launch-bound extreme)
  e2e e2e-demo 45 --preset demo --images 2 --dtype float32 bfloat16
  # 7. if time is left: sequential against fixed-n certification of the demo's DiffSmooth (issue 14's measurement)
  seq_demo 0.25 12 90
else
  wait_build
  ext_check
  gpu_step pytest-gpu 600 "${PYTEST[@]}" -m gpu --junitxml="$OUT/pytest-gpu.xml"
  for preset in cifar10 imagenet; do
    e2e "e2e-$preset" 600 --preset "$preset" --images 2 --dtype bfloat16 float16 float32 \
      --variants amp graphs fused fast --controls
  done
  e2e e2e-cifar10-b1000 120 --preset cifar10 --images 2 --baseline-batch 1000 --dtype bfloat16 --no-controls
  e2e e2e-demo 120 --preset demo --images 4 --dtype float32 bfloat16 float16
  gpu_step bench-ops-pytest 600 "${PYTEST[@]}" benchmarks/test_bench_ops.py benchmarks/test_bench_noise.py \
    --benchmark-enable --benchmark-group-by=group --benchmark-json="$OUT/bench-ops-pytest.json"
  step bench-ops 300 "${OPS[@]}" --json "$OUT/bench-ops.json"
  step op-ratios-cpu 300 python benchmarks/op_ratios.py --json "$OUT/op-ratios-cpu.json"
  step pytest-rest 900 "${PYTEST[@]}" -m "not gpu" --junitxml="$OUT/pytest-rest.xml"
  seq_demo 0.25 120 600
  seq_demo 0.5 120 600
fi
wait_build  # a build nobody waited for (a skipped step) is not left running

# --- 7. summary ----------------------------------------------------------------------------------------------
python - "$OUT" <<'PY' | tee -a "$SUMMARY"
import glob, json, os, sys
from diffsmooth_fast.bench.end_to_end import format_table
out = sys.argv[1]
print("\n== end to end (seconds per image at the paper's N; * estimation extrapolated from the measured n)")
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    try:
        r = json.load(open(path))
    except ValueError:
        continue
    if not isinstance(r, dict) or r.get("benchmark") != "end_to_end":
        continue
    print(f"-- {os.path.basename(path)}{'' if r.get('complete', True) else ' (stopped before its last run)'}")
    for line in format_table(r):
        print(line)
    for name, ratios in r.get("speedups", {}).items():
        for dtype, ratio in ratios.items():
            print(f"  speedup {dtype}: {ratio:.2f}x ({name} over the baseline)")
path = os.path.join(out, "bench-ops-pytest.json")
if os.path.exists(path):
    print("\n== kernels (median, pytest-benchmark)")
    for b in json.load(open(path))["benchmarks"]:
        print(f"  {b['group'] or '':20s} {b['name']:50s} {b['stats']['median'] * 1e3:10.3f} ms")
PY
if [ "$DRY" = 1 ]; then
  log "dry run: no step was run"
  exit 0
fi
[ ${#SKIPPED[@]} -gt 0 ] && log "skipped at the deadline: ${SKIPPED[*]}"
if [ ${#FAILED[@]} -eq 0 ]; then
  log "all steps passed; results in $OUT (results.tgz)"
else
  log "FAILED steps: ${FAILED[*]}; logs in $OUT (results.tgz)"
  exit 1
fi
