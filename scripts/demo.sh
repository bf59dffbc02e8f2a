#!/usr/bin/env bash
# The README's first command: set up .venv, then run the whole pipeline on the built-in toy data set (CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/anogen demo --out "${1:-demo-out}"
