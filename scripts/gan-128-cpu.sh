#!/usr/bin/env bash
# Issue 17's GAN comparison at 128 px on a CPU. Each generator (StyleGAN2-style, then DCGAN)
# trains twice for the same minutes: against its own discriminator and against the projected
# discriminator (frozen EfficientNet-Lite1 features). The two runs of a pair train side by side,
# one thread each, so each gets one core of the same machine for the same wall time. Then
# per-class FID/KID/precision/recall of every run on EfficientNet-Lite0 ImageNet features (not
# the projected discriminator's network) and the RESULTS.md section `gan-128`.
# Finished steps are skipped and training resumes, so rerun it after a kill.
set -euo pipefail
cd "$(dirname "$0")/.."
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
pair() {  # NAME CONFIG NAME CONFIG: side by side
    train "$1" "$2" & first=$!
    train "$3" "$4" & second=$!
    wait $first
    wait $second
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
python scripts/results.py --update --section gan-128 --gan-compare "${PAIRS[@]}" \
    --out docs/RESULTS.md
