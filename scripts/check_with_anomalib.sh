#!/usr/bin/env bash
# Opt-in check (not run in CI): read an anogen MVTec or Folder export with real anomalib.
#
#   scripts/check_with_anomalib.sh EXPORT_DIR CATEGORY [mvtec|folder]
#
# anomalib pulls torch and torchvision (CUDA wheels by default), so it gets its own virtual environment, never
# anogen's: ANOMALIB_VENV (default: ~/.cache/anogen/venv-anomalib, outside the repo) is created on first use with CPU-only torch wheels.
# Produce the export first, e.g.:
#   anogen export synth/ --data /data/mvtec/bottle --format mvtec --out /tmp/export-mvtec
#   scripts/check_with_anomalib.sh /tmp/export-mvtec bottle mvtec
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 ]]; then
    sed -n '2,10p' "$0"
    exit 2
fi
EXPORT_DIR=$1
CATEGORY=$2
FORMAT=${3:-mvtec}
HERE=$(cd "$(dirname "$0")" && pwd)
VENV=${ANOMALIB_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/anogen/venv-anomalib}
ANOMALIB_SPEC=${ANOMALIB_SPEC:-anomalib>=2.0}

if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    # CPU wheels keep the download small; set TORCH_INDEX to another index for CUDA builds.
    "$VENV/bin/pip" install --quiet --index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" torch torchvision
    "$VENV/bin/pip" install --quiet "$ANOMALIB_SPEC" pillow numpy
fi
"$VENV/bin/python" -c "import anomalib; print('anomalib', anomalib.__version__)"
exec "$VENV/bin/python" "$HERE/check_with_anomalib.py" "$EXPORT_DIR" "$CATEGORY" "$FORMAT"
