#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs, builds, then runs pytest.
# With PIP_NO_INDEX=1 (a machine without a package index) nothing is downloaded: install.sh
# installs nothing and the apt packages below are not fetched (their tests skip).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
APT=1
case "${PIP_NO_INDEX:-}" in
  1|true|yes|on) APT=0; echo "test.sh: PIP_NO_INDEX set: no apt packages fetched (mricron-data, aarch64 g++)" ;;
esac
if [ $APT = 1 ] && command -v apt-get >/dev/null && [ ! -f /usr/share/mricron/templates/ch2.nii.gz ]; then
  # the real MR (Colin27 + AAL labels) for the built-in colin27-hippocampus dataset
  (apt-get update -qq && apt-get install -y -qq mricron-data) >/dev/null 2>&1 \
    || echo "warning: could not install mricron-data; its test will report the missing package"
fi
if [ $APT = 1 ] && command -v apt-get >/dev/null && ! command -v aarch64-linux-gnu-g++ >/dev/null; then
  # compile-only check that the C++ kernels build for aarch64 (tests/test_cpu_variants.py)
  (apt-get install -y -qq g++-aarch64-linux-gnu || (apt-get update -qq && apt-get install -y -qq g++-aarch64-linux-gnu)) \
    >/dev/null 2>&1 || echo "warning: could not install g++-aarch64-linux-gnu; the aarch64 compile test will skip"
fi
PY=${PYTHON:-python3}
$PY -m pytest -q -p no:cacheprovider -n 2 --benchmark-disable "$@"
# The whole suite (no arguments) also runs the nnU-Net plugin and DICOM tests in their own
# venv (nnunetv2 needs a torchvision that cannot load against a local CPU torch); without a
# package index that venv cannot be made, and the step says so instead.
if [ $# -eq 0 ]; then
  if [ -n "${PIP_NO_INDEX:-}" ] && [ ! -x "${UNIMRI_NNUNET_VENV:-$HOME/.cache/unimri/venv-nnunet}/bin/python" ]; then
    echo "test.sh: nnU-Net/DICOM venv tests not run: no package index (PIP_NO_INDEX) to create their venv"
  else
    bash scripts/test_nnunet.sh
  fi
fi
