#!/usr/bin/env bash
# README's test command: set up if needed, lint, run the default test suite (slow tests skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
