#!/usr/bin/env bash
# The main job end to end on the bundled sample (252 UTKFace faces), on the CPU:
# regions -> report -> one branch per region -> fusion -> evaluation -> prediction -> export.
# Everything lands in runs/sample/ (override with OUT=...). About 3 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")"
BIN=.venv/bin
OUT=${OUT:-runs/sample}
SEED=${SEED:-0}
mkdir -p "$OUT"

echo "== regions: landmarks and crops"
$BIN/agefuse-regions sample/utkface --cache "$OUT/cache" --workers 2 --seed "$SEED"
echo "== exploratory report"
$BIN/agefuse-report "$OUT/cache" --out "$OUT/report"
for region in face eyes mouth original; do
  echo "== branch: $region"
  $BIN/agefuse-train-branch --cache "$OUT/cache" --region "$region" --out "$OUT/runs/$region" \
    --model small_cnn --image-size 48 --batch-size 32 --max-rounds 15 --k 4 --epsilon 0.01 \
    --lr 3e-3 --workers 0 --seed "$SEED" | grep -E "^(region|best|stopped)"
done
echo "== fusion head"
$BIN/agefuse-train-fusion --cache "$OUT/cache" --runs "$OUT/runs" --branches face,eyes,mouth,original \
  --out "$OUT/fused" --seed "$SEED" | tail -n 1
echo "== evaluation on the sample's validation split"
$BIN/agefuse-evaluate --model "$OUT/fused/fused.pt" --cache "$OUT/cache" --split val --out "$OUT/eval"
echo "== prediction on one photo"
$BIN/agefuse-predict sample/utkface/35_0_3_20170119201338805.jpg.chip.jpg --model "$OUT/fused/fused.pt" \
  --out "$OUT/predictions"
echo "== export"
$BIN/agefuse-export --model "$OUT/fused/fused.pt" --out "$OUT/fused/fused.pt2" 2>/dev/null
echo "done: see $OUT/eval/evaluation.md, $OUT/report/*.png, $OUT/predictions/"
