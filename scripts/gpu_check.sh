#!/usr/bin/env bash
# The GPU check in one command, on a machine with an NVIDIA GPU (its own CUDA torch, possibly
# no package index). Steps, each with its own time limit inside one overall budget of
# UNIMRI_GPU_BUDGET_S seconds (default 470, under 8 minutes on one H100/H200):
#
#   1. install    scripts/install.sh: builds _C against the installed torch; changes nothing
#                 that is installed (no index needed when every required package imports)
#   2. environment  device, versions, which backend runs each op on CUDA
#   3. cuda tests   every test with the `cuda` pytest marker (tests/conftest.py gives it to each
#                 test that carries requires_cuda), deterministic cuBLAS, TF32 off
#   4. bench ops    loss and attention-gate benchmarks on CUDA (each CSV row written as measured)
#   5. roofline     per op: achieved bandwidth as a fraction of a device copy measured in the
#                 same run, time vs torch.compile of the reference, launches and host syncs per
#                 call (profiler), the bf16 tl.dot path vs float64 (benchmarks/gpu_roofline.py)
#   6. bench train  training-step benchmark on CUDA, quick sizes (torch.compile only with --compile)
#
# Writes under --out (default $UNIMRI_GPU_OUT or benchmarks/results/gpu_check): summary.md (always,
# also after a failure, a timeout or Ctrl-C), logs/<step>.log, cuda_tests.xml, *_gpu*.csv/md/png, roofline.csv/md.
#
#   bash scripts/gpu_check.sh                  # everything
#   bash scripts/gpu_check.sh --quick          # quick sizes for the op benchmarks too
#   bash scripts/gpu_check.sh --compile        # include the torch.compile benchmark variants
#   bash scripts/gpu_check.sh --dry-run        # on a CPU: walks every step, CUDA parts recorded
#                                              # as "no GPU" (install --check, tests collected only)
set -uo pipefail
CALLER=$PWD
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${UNIMRI_GPU_OUT:-benchmarks/results/gpu_check}
DRY=0 QUICK="" COMPILE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --quick) QUICK=--quick ;;
    --compile) COMPILE=--compile ;;
    --out) OUT=$2; case "$OUT" in /*) ;; *) OUT="$CALLER/$OUT" ;; esac; shift ;;
    *) echo "gpu_check: unknown argument '$1' (--dry-run, --quick, --compile, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
# the dry run's budget is loose: on a shared CPU, collecting the suite alone can take a minute
BUDGET=${UNIMRI_GPU_BUDGET_S:-$([ $DRY = 1 ] && echo 1200 || echo 470)}
mkdir -p "$OUT/logs"
SUMMARY="$OUT/summary.md" ROWS="$OUT/logs/steps.rows"
: >"$ROWS"
start=$(date +%s) status=0

# deterministic cuBLAS (torch.use_deterministic_algorithms needs it for bmm/mm on CUDA) and no
# TF32 in cuBLAS/cuDNN: the tests compare against float64 references
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8} NVIDIA_TF32_OVERRIDE=0
export PYTHONUNBUFFERED=1

GPU=0
if [ $DRY = 0 ]; then
  if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch.cuda.is_available() is False: run this on a machine with a GPU, or use --dry-run" >&2
    exit 2
  fi
  GPU=1
fi
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then
  CUDA_HOME=$(dirname "$(dirname "$(command -v nvcc)")"); export CUDA_HOME
fi

write_summary() {
  {
    echo "# GPU check"; echo
    echo "- mode: $([ $DRY = 1 ] && echo "dry run (no GPU: CUDA parts not run)" || echo "GPU run")"
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ); commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "- CUBLAS_WORKSPACE_CONFIG=$CUBLAS_WORKSPACE_CONFIG NVIDIA_TF32_OVERRIDE=$NVIDIA_TF32_OVERRIDE"
    [ -f "$OUT/logs/environment.log" ] && sed -n 's/^env: /- /p' "$OUT/logs/environment.log"
    echo; echo "| step | result | time | log |"; echo "|---|---|---|---|"
    cat "$ROWS"
    echo; echo "total: $(( $(date +%s) - start )) s of a ${BUDGET} s budget; exit status $status"
  } >"$SUMMARY"
}
trap 'status=1; echo "| (interrupted) | FAILED (signal) | - | - |" >>"$ROWS"; exit 1' INT TERM
trap 'write_summary; cat "$SUMMARY"' EXIT

record() {  # record NAME RESULT SECONDS
  echo "| $1 | $2 | $3 s | logs/$1.log |" >>"$ROWS"
}
step() {  # step NAME LIMIT_S CMD...: runs within the remaining budget, logs to logs/NAME.log
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - start) ))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -le 0 ]; then
    record "$name" "NOT RUN (budget spent)" 0; status=1; return
  fi
  local t0 rc=0
  t0=$(date +%s)
  echo "== $name (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/logs/$name.log" 2>&1 || rc=$?
  tail -n 3 "$OUT/logs/$name.log"
  local result=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then result="FAILED (time limit ${limit} s)"; status=1
  elif [ $rc -ne 0 ]; then result="FAILED (exit $rc)"; status=1; fi
  record "$name" "$result" $(( $(date +%s) - t0 ))
}
no_gpu() {  # no_gpu NAME WHAT: the dry run's record of a CUDA part
  echo "no GPU: $2" >"$OUT/logs/$1.log"
  echo "== $1: no GPU ($2)"
  record "$1" "no GPU ($2)" 0
}

if [ $DRY = 1 ]; then
  step install 300 bash scripts/install.sh --check
else
  step install 120 bash scripts/install.sh
fi

step environment 120 $PY - <<'PY'
import platform, torch
from importlib import metadata
def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"
import unimri_kernels.dispatch as d
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"env: device: {torch.cuda.get_device_name(0)} ({p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}), "
          f"{torch.cuda.device_count()} GPU(s), CUDA {torch.version.cuda}")
else:
    print("env: device: no GPU")
print(f"env: torch {torch.__version__}, triton {version('triton')}, numpy {version('numpy')}, "
      f"Python {platform.python_version()}")
print(f"env: C++ kernels loaded: {d.has_cpp()}; backends on cuda: {d.available_backends('cuda')}")
PY

NPROC=$($PY -c "import os; print(min(8, os.cpu_count() or 1))")
PYTEST=($PY -m pytest -q -p no:cacheprovider --benchmark-disable -m cuda tests)
if [ $GPU = 1 ]; then
  step cuda_tests 240 "${PYTEST[@]}" -n "$NPROC" --junitxml="$OUT/cuda_tests.xml"
else
  step cuda_tests_collected 300 "${PYTEST[@]}" --collect-only
  no_gpu cuda_tests "$(grep -Eo '[0-9]+/[0-9]+ tests collected' "$OUT/logs/cuda_tests_collected.log" | cut -d/ -f1) CUDA tests selected by -m cuda, not run"
fi

if [ $GPU = 1 ]; then
  step bench_ops 75 $PY benchmarks/run.py --ops loss,attention --device cuda --out "$OUT" $QUICK $COMPILE
  step roofline 120 $PY benchmarks/gpu_roofline.py --out "$OUT"
  step bench_train 45 $PY benchmarks/run.py --ops train --device cuda --out "$OUT" --quick $COMPILE
else
  step bench_args 300 $PY benchmarks/run.py --ops loss,attention,train --device cuda --out "$OUT" --quick $COMPILE --check-args
  no_gpu bench_ops "loss, attention gate on cuda not measured"
  step roofline_model 120 $PY benchmarks/gpu_roofline.py --dry-run --out "$OUT"
  no_gpu bench_train "training step on cuda not measured"
fi
exit $status
