#!/usr/bin/env bash
# The DCGAN baseline on the same HAM10000 split as scripts/ham10000-gan.sh (run that first for
# the manifest), trained for 25 minutes on a 2-core CPU, with the same per-class quality
# metrics, into its own RESULTS.md section. Rerun after a kill: training resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=runs/ham10000-gan
MANIFEST=$OUT/manifest.json
GAN=$OUT/dcgan-64

if [ -f $GAN/last.pt ]; then
    skinedge gan train --out $GAN --resume
else
    skinedge gan train --config src/skinedge/configs/ham10000-dcgan64-cpu.yaml \
        --manifest $MANIFEST --out $GAN --set time_limit_minutes=25
fi
[ -f $OUT/dcgan-quality/quality.json ] || skinedge gan quality $GAN --manifest $MANIFEST \
    --per-class 500 --out $OUT/dcgan-quality
python scripts/results.py --update --section gan-dcgan --gan $GAN \
    --quality $OUT/dcgan-quality --out docs/RESULTS.md
