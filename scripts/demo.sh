#!/usr/bin/env bash
# README's main command: set up if needed, then run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/attnround-pl demo "$@"
