#!/usr/bin/env bash
# README's test command: set up if needed, lint, run the default test suite (slow tests skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
# Two pytest-xdist workers by default (one thread each on a 2-core host; tests/conftest.py shares
# the cores; timings in docs/design.md#tests). ATTNROUND_TEST_WORKERS=0: one process.
.venv/bin/python -m pytest -q -n "${ATTNROUND_TEST_WORKERS:-2}" "$@"
