#!/usr/bin/env bash
# README's main command: set up if needed, then calibrate the embedded ResNet-20 at W4A4 with
# the default recipe (attnround: Attention Round with Lp range searches) and print float /
# round-to-nearest / quantized top-1. Extra arguments go to 'attnround-pl calibrate' (for
# example --config configs/recipes/attention.yaml for the paper's setting).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/attnround-pl calibrate --config configs/models/resnet20.yaml \
    --config configs/recipes/attnround.yaml "$@"
