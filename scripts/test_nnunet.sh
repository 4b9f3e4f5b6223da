#!/usr/bin/env bash
# The nnU-Net v2 plugin and DICOM tests, in their own virtual environment.
#
# nnunetv2 imports torchvision, and PyPI's torchvision cannot load against the local CPU
# torch, so these tests run in a venv with PyPI's torch + matching torchvision + nnunetv2
# + pydicom/highdicom. The venv is created once and reused (UNIMRI_NNUNET_VENV, default
# ~/.cache/unimri/venv-nnunet). unimri's C++ kernels are built against that venv's torch
# in a separate build copy (UNIMRI_NNUNET_BUILD, default <venv>/unimri-build), never in
# this checkout (whose unimri_kernels/_C*.so belongs to the system torch); rebuilds are
# incremental. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV=${UNIMRI_NNUNET_VENV:-$HOME/.cache/unimri/venv-nnunet}
BUILD=${UNIMRI_NNUNET_BUILD:-$VENV/unimri-build}
TORCH_PINS=${UNIMRI_NNUNET_TORCH:-"torch==2.14.1 torchvision==0.29.1"}
PY=${PYTHON:-python3}

if ! "$VENV/bin/python" -c "import nnunetv2, torchvision, pydicom, highdicom, pytest, hypothesis" >/dev/null 2>&1; then
  echo "test_nnunet: creating $VENV (torch, torchvision, nnunetv2, pydicom, highdicom; several GB)"
  "$PY" -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q $TORCH_PINS nnunetv2 pydicom highdicom nibabel SimpleITK matplotlib pyyaml tqdm \
    pytest hypothesis setuptools wheel ninja
fi

# Sources into the build copy with their timestamps, so the build recompiles only what changed.
mkdir -p "$BUILD"
tar -C "$REPO" --exclude=.git --exclude='*.so' --exclude=build --exclude='*.egg-info' --exclude=__pycache__ \
  --exclude=.venv --exclude=runs --exclude=outputs -cf - . | tar -C "$BUILD" -xf -
echo "test_nnunet: building unimri_kernels._C against $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
(cd "$BUILD" && MAX_JOBS=${MAX_JOBS:-2} "$VENV/bin/python" setup.py -q build_ext --inplace >"$BUILD/build.log" 2>&1) \
  || { tail -30 "$BUILD/build.log"; echo "test_nnunet: building the C++ kernels failed (log: $BUILD/build.log)"; exit 1; }

cd "$BUILD"
export PYTHONPATH="$BUILD/python:$BUILD"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_nnunet.py tests/test_dicom.py "$@"
