#!/usr/bin/env bash
# README's main command: set up if needed, then calibrate the embedded ResNet-20 at W4A4 with
# Attention Round and print float / round-to-nearest / Attention Round top-1. Extra arguments
# go to 'attnround-pl calibrate' (for example --quant.rounding adaround).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/attnround-pl calibrate --config configs/models/resnet20.yaml \
    --config configs/recipes/attention.yaml "$@"
