#!/usr/bin/env bash
# Installs unimri and everything its tests and demo need on a fresh machine of this kind:
# torch from the local CPU wheel (pinned, never a CUDA download), triton, the optional
# readers, MONAI (benchmark/agreement peer), then builds the C++ kernels in place.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
CONSTRAINTS=$(mktemp)
echo "torch==2.13.0" >"$CONSTRAINTS"
export PIP_CONSTRAINT="$CONSTRAINTS"
if ! $PY -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  $PY -m pip install -q torch==2.13.0
fi
$PY -m pip install -q "numpy<2.4" "triton==3.7.1" "setuptools>=64" wheel ninja \
  tqdm matplotlib pyyaml nibabel SimpleITK pillow monai \
  pytest pytest-xdist hypothesis pytest-benchmark scipy expecttest
$PY -m pip install -q --no-build-isolation --no-deps -e .
