#!/usr/bin/env bash
# The compression issue's HAM10000 run, end to end, on a 2-core CPU (about 2 hours):
# three Lite0 teachers on one lesion-grouped split -> ensemble -> distilled Lite0 student ->
# INT8 (PTQ, then QAT while still distilling if PTQ misses its bound) -> report -> RESULTS.md.
# Steps whose outputs exist are skipped, and training steps resume, so rerun it after a kill.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${SKINEDGE_DATA:-../shared/data}/ham10000-sample
CONFIG=src/skinedge/configs/ham10000-lite0-cpu.yaml
MANIFEST=runs/ham10000-lite0/manifest.json

[ -d runs/ham10000-lite0/train/best ] || skinedge quickstart --data "$DATA" --out runs/ham10000-lite0
[ -d runs/ham10000-lite0-rot90-ls/train/best ] || skinedge quickstart --data "$DATA" \
    --out runs/ham10000-lite0-rot90-ls --set augment.rot90=true --set loss.label_smoothing=0.1
mkdir -p runs/ham10000-lite0-seed1
cp -n "$MANIFEST" runs/ham10000-lite0-seed1/manifest.json
[ -d runs/ham10000-lite0-seed1/train/best ] || skinedge train --config "$CONFIG" \
    --manifest runs/ham10000-lite0-seed1/manifest.json --set seed=1 --out runs/ham10000-lite0-seed1/train
[ -d runs/ham10000-teacher3 ] || skinedge ensemble create runs/ham10000-teacher3 \
    runs/ham10000-lite0/train/best runs/ham10000-lite0-rot90-ls/train/best runs/ham10000-lite0-seed1/train/best
[ -d runs/ham10000-student-lite0/best ] || skinedge compress distill --teacher runs/ham10000-teacher3 \
    --manifest "$MANIFEST" --config src/skinedge/configs/ham10000-distill-lite0-cpu.yaml \
    --out runs/ham10000-student-lite0
STUDENT=runs/ham10000-student-lite0/best
OUT=exports/ham10000-student
[ -f $OUT/tf_efficientnet_lite0_fp32.xml ] || skinedge export $STUDENT --target openvino --out $OUT
ls $OUT/tf_efficientnet_lite0_int8*.xml >/dev/null 2>&1 || \
    skinedge compress quantize $STUDENT --mode auto --out $OUT --set epochs=2 || true
INT8=$(ls $OUT/tf_efficientnet_lite0_int8*.xml | head -1)
skinedge compress report --teacher runs/ham10000-teacher3 --student $STUDENT --int8 "$INT8" \
    --fp32 $OUT/tf_efficientnet_lite0_fp32.xml --threads 1,2 --iterations 100 \
    --out compression/ham10000-student
python scripts/results.py runs/ham10000-lite0 runs/ham10000-lite0-rot90-ls \
    --bench bench/ham10000-lite0 --compression compression/ham10000-student --out docs/RESULTS.md
