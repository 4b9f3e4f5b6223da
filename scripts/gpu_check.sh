#!/usr/bin/env bash
# The GPU check in one command, on a machine with an NVIDIA GPU (its own CUDA torch, possibly
# no package index): builds unimri against the installed torch, runs the CUDA tests (Triton vs
# the float64 reference, gradcheck and opcheck on CUDA, AMP training steps of the five
# backbones with SAS, deterministic mode, NCCL DDP with two GPUs) and the GPU benchmarks
# (loss, attention gate, training step; CUDA-event timing, copy bandwidth measured in the
# same run). Writes under $UNIMRI_GPU_OUT (default benchmarks/results): gpu_check.md (the
# summary), gpu_tests.xml, *_gpu.{csv,md,png}. Aims at < 8 minutes on one H200.
#
#   bash scripts/gpu_check.sh            # everything
#   UNIMRI_GPU_QUICK=1 bash scripts/gpu_check.sh   # quick benchmark sizes
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${UNIMRI_GPU_OUT:-benchmarks/results}
mkdir -p "$OUT"
SUMMARY="$OUT/gpu_check.md"
start=$(date +%s)
status=0

if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch.cuda.is_available() is False: run this on a machine with a GPU" >&2
  exit 2
fi
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then
  CUDA_HOME=$(dirname "$(dirname "$(command -v nvcc)")"); export CUDA_HOME
fi
step() {  # step NAME TIMEOUT_S CMD...: runs, records the exit status and the time taken
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s) rc=0
  echo "== $name"
  timeout "$limit" "$@" || rc=$?
  [ $rc -ne 0 ] && status=1
  echo "| $name | $([ $rc -eq 0 ] && echo ok || echo "FAILED (exit $rc)") | $(( $(date +%s) - t0 )) s |" >>"$SUMMARY.rows"
}
rm -f "$SUMMARY.rows"
step "install + build against the installed torch" 240 bash scripts/install.sh
$PY - >"$SUMMARY" <<'PY'
import platform, torch
try:
    import triton; tv = triton.__version__
except ImportError:
    tv = "missing"
import unimri_kernels.dispatch as d
p = torch.cuda.get_device_properties(0)
print("# GPU check\n")
print(f"- device: {torch.cuda.get_device_name(0)} ({p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}), "
      f"{torch.cuda.device_count()} GPU(s)")
print(f"- torch {torch.__version__} (CUDA {torch.version.cuda}), triton {tv}, Python {platform.python_version()}")
print(f"- host CPU: {platform.processor() or platform.machine()}; C++ kernels built: {d.has_cpp()}")
print(f"- backends on cuda: {d.available_backends('cuda')}\n")
PY
NPROC=$($PY -c "import os; print(min(8, os.cpu_count() or 1))")
step "CUDA tests" 300 $PY -m pytest -q -p no:cacheprovider --benchmark-disable -n "$NPROC" \
  --junitxml="$OUT/gpu_tests.xml" tests/test_cuda.py tests/test_unified_focal_loss.py tests/test_attention_gate.py \
  tests/test_nn_attention.py tests/test_amp.py tests/test_memory_format.py -k "cuda or CUDA or amp or autocast"
QUICK=$([ "${UNIMRI_GPU_QUICK:-0}" = 1 ] && echo --quick || true)
step "GPU benchmarks: loss, attention gate" 240 $PY benchmarks/run.py --ops loss,attention --device cuda --out "$OUT" $QUICK
step "GPU benchmarks: training step" 120 $PY benchmarks/run.py --ops train --device cuda --out "$OUT" --quick
{
  echo "| step | result | time |"; echo "|---|---|---|"; cat "$SUMMARY.rows"
  echo; echo "total: $(( $(date +%s) - start )) s"
} >>"$SUMMARY"
rm -f "$SUMMARY.rows"
cat "$SUMMARY"
exit $status
