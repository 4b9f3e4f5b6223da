#!/usr/bin/env bash
# Installs unimri and what its tests and demo need, then builds the C++ kernels in place.
#
# * A torch that is already installed is used as it is and never replaced (a GPU machine's
#   CUDA torch stays); every later pip step is constrained to it. With no torch, the local
#   CPU wheel torch 2.13.0 is installed (pinned: an unpinned torch downloads CUDA builds).
# * Only missing packages are installed. Without a package index (GPU runners often have
#   none) the optional ones (MONAI, nibabel, SimpleITK, Pillow, expecttest) may stay missing:
#   their tests skip one by one; a missing required package is an error that names it.
# * The extension is built against the torch in use (--no-build-isolation).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

if $PY -c "import torch" 2>/dev/null; then
  echo "install: using the installed torch $($PY -c 'import torch; print(torch.__version__)')"
else
  $PY -m pip install -q torch==2.13.0
fi
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
$PY -c "import torch; print('torch==' + torch.__version__)" >"$CONSTRAINTS"
export PIP_CONSTRAINT="$CONSTRAINTS"

# "pip requirement|import name"; triton 3.7.1 is the release matching torch 2.13
# (another torch brings its own triton); triton's interpreter needs numpy < 2.4
REQUIRED=("numpy<2.4|numpy" "setuptools>=64|setuptools" "wheel|wheel" "ninja|ninja" "tqdm|tqdm"
          "matplotlib|matplotlib" "pyyaml|yaml" "scipy|scipy" "pytest|pytest" "pytest-xdist|xdist"
          "hypothesis|hypothesis" "pytest-benchmark|pytest_benchmark")
OPTIONAL=("nibabel|nibabel" "SimpleITK|SimpleITK" "pillow|PIL" "monai|monai" "expecttest|expecttest")
if ! $PY -c "import triton" 2>/dev/null && $PY -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')"; then
  REQUIRED+=("triton==3.7.1|triton")
fi

missing() {  # prints the pip requirements among "$@" whose module does not import
  for entry in "$@"; do
    if ! $PY -c "import ${entry#*|}" 2>/dev/null; then echo "${entry%%|*}"; fi
  done
}
mapfile -t need < <(missing "${REQUIRED[@]}")
if $PY -c "import numpy, sys; sys.exit(tuple(map(int, numpy.__version__.split('.')[:2])) < (2, 4))" 2>/dev/null \
   && $PY -c "import triton" 2>/dev/null; then
  need+=("numpy<2.4")
fi
if [ ${#need[@]} -gt 0 ]; then
  $PY -m pip install -q "${need[@]}"
fi
mapfile -t want < <(missing "${OPTIONAL[@]}")
if [ ${#want[@]} -gt 0 ]; then
  $PY -m pip install -q --retries 1 --timeout 20 "${want[@]}" \
    || echo "install: optional packages not installed (${want[*]}); their tests will skip"
fi
$PY -m pip install -q --no-build-isolation --no-deps -e .
