#!/usr/bin/env bash
# Installs unimri and what its tests and demo need, then builds the C++ kernels in place.
#
# * Nothing already installed is ever changed: every pip step is constrained to the versions
#   of all installed distributions (a GPU machine's CUDA torch, numpy and triton stay as they
#   are). With no torch, the local CPU wheel torch 2.13.0 is installed (pinned: an unpinned
#   torch downloads CUDA builds).
# * Only missing packages are installed. With every required package importable no index is
#   needed (PIP_NO_INDEX=1 works). Without an index the optional ones (MONAI, nibabel, pydicom, highdicom,
#   SimpleITK, Pillow, expecttest) may stay missing: their tests skip one by one; a missing
#   required package is an error that names it.
# * A torch outside the tested range (docs/versions.md) or a triton other than the one the
#   torch release was built with is named in a warning; the install goes on.
# * The extension is built against the torch in use (--no-build-isolation).
#
#   bash scripts/install.sh           # install what is missing, build _C, pip install -e .
#   bash scripts/install.sh --check   # only report: versions, warnings, what would be installed
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CHECK=0
case "${1:-}" in
  --check) CHECK=1 ;;
  "") ;;
  *) echo "install.sh: unknown argument '$1' (expected --check or nothing)" >&2; exit 2 ;;
esac
pip_install() {  # pip install "$@", or with --check only say what would be installed
  if [ $CHECK = 1 ]; then echo "install: would run: pip install $*"; else $PY -m pip install "$@"; fi
}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
TESTED_TORCH_MIN=2.11.0   # the oldest and newest torch the CPU suite was run with (docs/versions.md)
TESTED_TORCH_MAX=2.15.0

if $PY -c "import torch" 2>/dev/null; then
  echo "install: using the installed torch $($PY -c 'import torch; print(torch.__version__)')"
elif [ $CHECK = 1 ]; then
  echo "install: torch is missing; would run: pip install torch==2.13.0"; exit 0
else
  $PY -m pip install -q torch==2.13.0 || { echo "install: torch is missing and torch==2.13.0 could not be installed" >&2; exit 1; }
fi

# constraints = every installed distribution at its installed version: pip may add, never change
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
$PY - >"$CONSTRAINTS" <<'PY'
import importlib.metadata as md, re
valid = re.compile(r"^\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?(\+[\w.]+)?$")  # PEP 440, common forms
seen = set()
for dist in md.distributions():
    name = (dist.metadata["Name"] or "").strip()
    if name and name.lower() not in seen and name.lower() != "unimri" and valid.match(dist.version):
        seen.add(name.lower())
        print(f"{name}=={dist.version}")
PY
export PIP_CONSTRAINT="$CONSTRAINTS"

# warnings that name the versions found (they do not stop the install)
$PY - "$TESTED_TORCH_MIN" "$TESTED_TORCH_MAX" <<'PY'
import importlib.metadata as md, re, sys
lo, hi = sys.argv[1:3]
def release(v):
    return tuple(int(p) for p in re.findall(r"\d+", v.split("+")[0])[:3])
torch_v = md.version("torch")
if not release(lo) <= release(torch_v) <= release(hi):
    print(f"install: warning: torch {torch_v} is outside the tested range {lo} to {hi} "
          "(docs/versions.md); the C++ kernels are built against it but were never tested with it")
try:
    triton_v = md.version("triton")
except md.PackageNotFoundError:
    triton_v = None
wanted = [r for r in (md.requires("torch") or []) if re.match(r"triton\s*==", r)]
if triton_v and wanted:
    pinned = re.search(r"==\s*([\w.]+)", wanted[0]).group(1)
    if release(pinned) != release(triton_v):
        print(f"install: warning: torch {torch_v} was released with triton {pinned} but triton {triton_v} "
              "is installed; the Triton kernels were checked only with the pairs in docs/versions.md")
PY

# "pip requirement|import name"
REQUIRED=("numpy|numpy" "setuptools>=64|setuptools" "wheel|wheel" "ninja|ninja" "tqdm|tqdm"
          "matplotlib|matplotlib" "pyyaml|yaml" "scipy|scipy" "pytest|pytest" "pytest-xdist|xdist"
          "hypothesis|hypothesis" "pytest-benchmark|pytest_benchmark")
OPTIONAL=("nibabel|nibabel" "SimpleITK|SimpleITK" "pillow|PIL" "monai|monai" "expecttest|expecttest"
          "pydicom|pydicom" "highdicom|highdicom")
if ! $PY -c "import triton" 2>/dev/null && $PY -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')"; then
  REQUIRED+=("triton==3.7.1|triton")  # the triton release matching torch 2.13 (the CPU wheel names none)
fi

missing() {  # prints the pip requirements among "$@" ("requirement|module") whose module is absent
  $PY - "$@" <<'PY'
import importlib.util, sys
for entry in sys.argv[1:]:
    requirement, module = entry.split("|")
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        print(requirement)
PY
}
mapfile -t need < <(missing "${REQUIRED[@]}")
if [ ${#need[@]} -gt 0 ]; then
  pip_install -q "${need[@]}" \
    || { echo "install: required packages missing and not installable here: ${need[*]}" >&2; exit 1; }
fi
mapfile -t want < <(missing "${OPTIONAL[@]}")
if [ ${#want[@]} -gt 0 ]; then
  pip_install -q --retries 1 --timeout 20 "${want[@]}" 2>/dev/null \
    || echo "install: optional packages not installed (${want[*]}); their tests will skip"
fi
pip_install -q --no-build-isolation --no-deps -e .
