#!/usr/bin/env bash
# The published quality runs: each named run trains under nested cross-validation, then its
# results file (test scores with commit, command, machine, load, date, CPU time) is copied
# to benchmarks/results/quality/, from which `python benchmarks/report.py` renders the
# README and docs tables.
#
#   bash scripts/quality_runs.sh                      # every run, in the order below
#   bash scripts/quality_runs.sh phantom_all demo     # only these
#
# Outputs (run folders, plots) go to outputs/quality/<run>/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export PYTHONPATH="$ROOT/python:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
OUT=outputs/quality
DEST=benchmarks/results/quality
mkdir -p "$OUT" "$DEST"

PHANTOM='{"num_cases": 40, "size": 64, "seed": 1}'
PHANTOM_RECIPE=(--features 8 --stages 32,64 --batch-size 4 --epochs 6,12 --patience 10 --lr 0.1
                --schedule cosine --folds 3 --seeds 3 --jobs 2 --no-progress)
COLIN='{"cases": "slabs", "num_slabs": 5, "downsample": 2, "crop_margin": 16}'
COLIN_RECIPE=(--features 8 --stages 32,64 --batch-size 4 --epochs 15,30 --patience 20 --lr 0.1
              --schedule cosine --folds 5 --jobs 2 --no-progress)
unimri() { $PY -m unimri --threads 1 "$@"; }

publish() {  # publish SRC NAME: copy a results file into the committed results folder
  cp "$1" "$DEST/$2"
  echo "quality_runs: published $DEST/$2"
}

backbones_figure() {  # Table 1 as a figure, from whichever backbones results files exist
  $PY -m unimri.studies.paper backbones "$DEST/backbones.png" "Phantom (2D)=$DEST/backbones_phantom.json" \
    "Colin27 hippocampus (2D)=$DEST/backbones_colin27.json"
}

run() {
  local name=$1
  case $name in
    demo)
      unimri demo --out "$OUT/demo" --overwrite --no-progress
      publish "$OUT/demo/demo_results.json" demo.json ;;
    phantom_all)
      unimri ablate --study all --models unet --dataset phantom --dataset-kwargs "$PHANTOM" \
        "${PHANTOM_RECIPE[@]}" --peer monai --out "$OUT/phantom_all"
      for s in components loss attention; do publish "$OUT/phantom_all/$s/${s}_results.json" "${s}_phantom.json"; done ;;
    phantom_backbones)
      unimri ablate --study backbones --dataset phantom --dataset-kwargs "$PHANTOM" \
        "${PHANTOM_RECIPE[@]}" --out "$OUT/phantom_backbones"
      publish "$OUT/phantom_backbones/backbones_results.json" backbones_phantom.json
      backbones_figure ;;
    phantom_lambda)
      unimri ablate --study lambda --dataset phantom --dataset-kwargs "$PHANTOM" \
        "${PHANTOM_RECIPE[@]}" --out "$OUT/phantom_lambda"
      publish "$OUT/phantom_lambda/lambda_results.json" lambda_phantom.json
      cp "$OUT/phantom_lambda/lambda.csv" "$DEST/lambda_phantom.csv" ;;
    phantom3d)
      unimri ablate --study backbones --models unet --spatial-dims 3 --dataset phantom \
        --dataset-kwargs '{"num_cases": 20, "size": 48, "spatial_dims": 3, "seed": 1}' --patch-size 32 \
        --features 8 --stages 16,32 --batch-size 2 --epochs 10,20 --patience 10 --lr 0.1 --schedule cosine \
        --folds 3 --seeds 2 --jobs 2 --no-progress --out "$OUT/phantom3d_backbones"
      publish "$OUT/phantom3d_backbones/backbones_results.json" backbones3d_phantom.json ;;
    colin27_all)
      unimri ablate --study all --models unet --dataset colin27-hippocampus --dataset-kwargs "$COLIN" \
        "${COLIN_RECIPE[@]}" --seeds 3 --peer monai --out "$OUT/colin27_all"
      for s in components loss attention; do publish "$OUT/colin27_all/$s/${s}_results.json" "${s}_colin27.json"; done
      # leave-one-slab-out at width 8: the components study's unified-approach runs
      $PY -m unimri.studies.collect --out "$DEST/colin27_loso_w8.json" --study colin27-loso \
        --group "UNet w8" --method "unified approach" "$OUT"/colin27_all/components/unet-all_unified_approach-seed{0,1,2} ;;
    time_to_quality)  # from phantom_all's components runs, without training again
      $PY - "$OUT/phantom_all/components" "$DEST" <<'PY'
import sys
from unimri.studies.ablation import time_to_quality_report
src, dest = sys.argv[1], sys.argv[2]
runs = {label: [f"{src}/unet-{slug}-seed{s}" for s in (0, 1, 2)]
        for label, slug in (("one stage at 64 (SAS + unified loss)", "sas__unified_loss"),
                            ("progressive resizing 32 -> 64 (all)", "all_unified_approach"))}
print(time_to_quality_report(runs, dest, title="Phantom, UNet + SAS + unified loss: validation DSC vs CPU time"))
PY
      ;;
    colin27_backbones)
      unimri ablate --study backbones --dataset colin27-hippocampus --dataset-kwargs "$COLIN" \
        "${COLIN_RECIPE[@]}" --seeds 2 --out "$OUT/colin27_backbones"
      publish "$OUT/colin27_backbones/backbones_results.json" backbones_colin27.json
      backbones_figure ;;
    colin27_lambda)
      unimri ablate --study lambda --dataset colin27-hippocampus --dataset-kwargs "$COLIN" \
        "${COLIN_RECIPE[@]}" --seeds 1 --out "$OUT/colin27_lambda"
      publish "$OUT/colin27_lambda/lambda_results.json" lambda_colin27.json
      cp "$OUT/colin27_lambda/lambda.csv" "$DEST/lambda_colin27.csv"
      $PY -c "import sys; from unimri.studies.paper import combine_lambda_plots as c; c(sys.argv[2:], sys.argv[1])" \
        "$DEST/lambda.png" "$DEST/lambda_phantom.csv" "$DEST/lambda_colin27.csv" ;;
    colin27_3d)
      unimri ablate --study backbones --models unet --spatial-dims 3 --dataset colin27-hippocampus \
        --dataset-kwargs '{"cases": "slabs", "num_slabs": 5, "downsample": 1, "crop_margin": 16}' \
        --patch-size 48x48x8 --features 8 --stages 24,48 --batch-size 2 --epochs 20,40 --patience 20 \
        --lr 0.1 --schedule cosine --folds 5 --seeds 2 --jobs 2 --no-progress --out "$OUT/colin27_3d_backbones"
      publish "$OUT/colin27_3d_backbones/backbones_results.json" backbones3d_colin27.json ;;
    colin27_loso_w16)
      for s in 0 1 2; do
        unimri train --model unet --attention sas --loss unified --dataset colin27-hippocampus \
          --dataset-kwargs "$COLIN" --features 16 --stages 32,64 --batch-size 4 --epochs 15,30 --patience 20 \
          --lr 0.1 --schedule cosine --folds 5 --seed $s --split-seed 0 --no-progress --overwrite \
          --out "$OUT/colin27_w16_seed$s"
      done
      $PY -m unimri.studies.collect --out "$DEST/colin27_loso_w16.json" --study colin27-loso \
        --group "UNet w16" --method "unified approach" "$OUT"/colin27_w16_seed{0,1,2} ;;
    imbalance)
      unimri ablate --study imbalance --fg-fractions 0.05,0.01,0.003,0.001 --models unet --dataset phantom \
        --dataset-kwargs "$PHANTOM" "${PHANTOM_RECIPE[@]}" --out "$OUT/phantom_imbalance"
      publish "$OUT/phantom_imbalance/imbalance_results.json" imbalance.json
      cp "$OUT/phantom_imbalance/imbalance_unet.png" "$DEST/imbalance.png" ;;
    *) echo "quality_runs: unknown run '$name'" >&2; return 2 ;;
  esac
}

ALL=(phantom_all time_to_quality phantom_backbones phantom_lambda phantom3d demo colin27_all colin27_backbones
     colin27_lambda colin27_3d colin27_loso_w16 imbalance)
for name in "${@:-${ALL[@]}}"; do
  echo "== quality_runs: $name ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))"
  run "$name"
done
