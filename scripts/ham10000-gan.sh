#!/usr/bin/env bash
# The GAN issue's HAM10000 run, end to end, on a 2-core CPU (about 2 hours): lesion-grouped
# split -> class-conditional StyleGAN2-style GAN at 64 px (45-minute budget) -> per-class
# FID/KID/precision/recall -> the ablation (every arm trained alike at 128 px) -> RESULTS.md.
# Finished steps are skipped and training steps resume, so rerun it after a kill.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${SKINEDGE_DATA:-../shared/data}/ham10000-sample
OUT=runs/ham10000-gan
MANIFEST=$OUT/manifest.json
GAN=$OUT/stylegan2-64

[ -f $MANIFEST ] || skinedge data split "$DATA" --out $MANIFEST
if [ -f $GAN/last.pt ]; then
    skinedge gan train --out $GAN --resume
else
    skinedge gan train --config src/skinedge/configs/ham10000-gan64-cpu.yaml \
        --manifest $MANIFEST --out $GAN
fi
[ -f $OUT/quality/quality.json ] || skinedge gan quality $GAN --manifest $MANIFEST \
    --per-class 500 --out $OUT/quality
skinedge experiment ablation --config src/skinedge/configs/ham10000-ablation.yaml \
    --out runs/ham10000-ablation
python scripts/results.py --update --gan $GAN --quality $OUT/quality \
    --ablation runs/ham10000-ablation --out docs/RESULTS.md
