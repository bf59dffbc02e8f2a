#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install anogen with its test extra.
# torch is pinned to the CPU build that lies on this kind of machine's disk; an unpinned torch would pull a
# multi-GB CUDA build. GPU users install their own CUDA torch first (see docs/install.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
