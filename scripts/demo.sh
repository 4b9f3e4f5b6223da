#!/usr/bin/env bash
# The README's first command: install unimri on a fresh machine, then run the demo
# experiment (UNet on the built-in phantom, cross-entropy baseline vs the unified
# approach, 3-fold CV). Prints the metric table; plots and run folders go to
# ./outputs/demo. See docs/experiments.md for exactly what it trains and how long it takes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
start=$(date +%s)
bash scripts/install.sh
echo "install: $(( $(date +%s) - start )) s"
$PY -m unimri demo --out outputs/demo --overwrite "$@"
echo "total (install + demo): $(( $(date +%s) - start )) s"
