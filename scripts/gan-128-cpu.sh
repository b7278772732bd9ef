#!/usr/bin/env bash
# Issue 17's GAN comparison at 128 px on a CPU. Each generator (StyleGAN2-style, then DCGAN)
# trains twice for the same minutes: against its own discriminator and against the projected
# discriminator (frozen EfficientNet-Lite1 features). The two runs of a pair train side by side,
# one thread each, so each gets one core of the same machine for the same wall time. Then
# per-class FID/KID/precision/recall of every run on EfficientNet-Lite0 ImageNet features (not
# the projected discriminator's network) and the RESULTS.md section `gan-128`. Last, the
# candidates of one GAN (SELECT_GAN) selected twice for the rare classes, with one classifier-
# confidence bar (0.3) and with per-class bars from validation images (section
# `gan-128-selection`).
# Finished steps are skipped and training resumes, so rerun it after a kill.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/skinedge ] && PATH=$PWD/.venv/bin:$PATH  # the project's venv when there is one
DATA=${SKINEDGE_DATA:-../shared/data}/ham10000-sample
OUT=runs/ham10000-gan
MANIFEST=$OUT/manifest.json
MINUTES=${MINUTES:-40}

[ -f $MANIFEST ] || skinedge data split "$DATA" --out $MANIFEST

train() {  # NAME CONFIG
    if [ -f $OUT/$1/last.pt ]; then
        skinedge gan train --out $OUT/$1 --resume --set time_limit_minutes=$MINUTES --set threads=1
    else
        skinedge gan train --config src/skinedge/configs/$2 --manifest $MANIFEST --out $OUT/$1 \
            --set time_limit_minutes=$MINUTES --set threads=1
    fi > $OUT/$1.log 2>&1
}
trap 'kill $(jobs -p) 2>/dev/null' EXIT  # a failed or killed script leaves no run behind
pair() {  # NAME CONFIG NAME CONFIG: side by side; fails if either fails
    local rc=0
    train "$1" "$2" & local first=$!
    train "$3" "$4" & local second=$!
    wait $first || { echo "$1 failed: see $OUT/$1.log" >&2; rc=1; }
    wait $second || { echo "$3 failed: see $OUT/$3.log" >&2; rc=1; }
    return $rc
}
pair stylegan2-128 ham10000-gan128-cpu.yaml projected-128 ham10000-projected128-cpu.yaml
pair dcgan-128 ham10000-dcgan128-cpu.yaml projected-dcgan-128 ham10000-projected128-dcgan-cpu.yaml

RUNS=(stylegan2-128 projected-128 dcgan-128 projected-dcgan-128)
PAIRS=()
for run in "${RUNS[@]}"; do
    [ -f $OUT/$run-quality/quality.json ] || skinedge gan quality $OUT/$run \
        --manifest $MANIFEST --per-class 500 --out $OUT/$run-quality
    PAIRS+=($OUT/$run $OUT/$run-quality)
done
python3 scripts/results.py --update --section gan-128 --gan-compare "${PAIRS[@]}" \
    --out docs/RESULTS.md

# Selection, fixed bar against per-class bars from validation, scored by a Lite0 classifier
# trained on this split's real images (the ablation's recipe).
SELECT_GAN=${SELECT_GAN:-projected-128}  # the lowest FID of the four in RESULTS gan-128
CLASSIFIER=$OUT/classifier-128
if [ -e $CLASSIFIER/last ] || [ -e $CLASSIFIER/.last.old ]; then  # a finished run returns
    skinedge train --out $CLASSIFIER --resume
else
    skinedge train --config src/skinedge/configs/ham10000-ablation-lite0-cpu.yaml \
        --manifest $MANIFEST --out $CLASSIFIER
fi
COUNTS=$(python3 -c "
import math
from skinedge.data import load_manifest
from skinedge.synth.candidates import needed_counts
quotas = needed_counts(load_manifest('$MANIFEST', verify=False))
print(' '.join(f'--count {c}={math.ceil(3 * q)}' for c, q in quotas.items() if q))")
CANDIDATES=$OUT/$SELECT_GAN-candidates
[ -f $CANDIDATES/candidates.csv ] || skinedge gan sample $OUT/$SELECT_GAN $COUNTS --seed 0 \
    --out $CANDIDATES
for bar in 0.3 validation; do
    [ -f $OUT/$SELECT_GAN-selected-$bar/synthetic.json ] || skinedge gan select $CANDIDATES \
        --manifest $MANIFEST --classifier $CLASSIFIER/best --out $OUT/$SELECT_GAN-selected-$bar \
        --set min_classifier_confidence=$bar
done
python3 scripts/results.py --update --section gan-128-selection \
    --selection $OUT/$SELECT_GAN-selected-0.3 $OUT/$SELECT_GAN-selected-validation \
    --out docs/RESULTS.md
