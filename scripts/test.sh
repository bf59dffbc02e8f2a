#!/usr/bin/env bash
# The README's test command: set up .venv, check style, run the default test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check anogen tests bench
.venv/bin/python -m pytest -q "$@"
