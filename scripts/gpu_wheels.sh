#!/usr/bin/env bash
# Download, as wheels, every package `python -m bench.gpu` imports besides torch, pinned to the versions of this
# checkout's .venv, for a GPU machine that is offline and has torch but not diffusers. Copy the repository with
# the folder to that machine and run `python -m bench.gpu` there (it installs the wheels into a temporary folder).
#
#   bash scripts/gpu_wheels.sh [DIR] [pip download options]
#   bash scripts/gpu_wheels.sh wheels --python-version 3.10 --platform manylinux2014_x86_64   # another Python
#
# Binary wheels (numpy, tokenizers, safetensors, ...) must match the GPU machine's Python and platform: pass
# pip's --python-version / --platform when they differ from this machine's.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-wheels}
shift || true
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$DIR"
pins=$(mktemp)
trap 'rm -f "$pins"' EXIT
# The distributions behind every module the bench imports (measured by importing them), torch and CUDA excluded.
OMP_NUM_THREADS=1 "$PY" - > "$pins" <<'PY'
import importlib.metadata as md
import sys

import anogen.synth, anogen.fit, bench.common, bench.gpu  # noqa: F401,E401
from diffusers import StableDiffusionPipeline  # noqa: F401

owners = md.packages_distributions()
skip = {"torch", "triton", "anogen", "pip", "setuptools"}
dists = set()
for name in list(sys.modules):
    top = name.split(".")[0]
    for dist in owners.get(top, []):
        if dist.lower() not in skip and not dist.lower().startswith("nvidia"):
            dists.add(dist)
for dist in sorted(dists, key=str.lower):
    print(f"{dist}=={md.version(dist)}")
PY
echo "gpu_wheels: $(wc -l < "$pins") packages -> $DIR"
extra=()
if [ "$#" -gt 0 ]; then
  extra=(--only-binary=:all: "$@")
fi
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --dest "$DIR" -r "$pins" "${extra[@]}"
ls "$DIR" | wc -l | xargs echo "gpu_wheels: wheels in $DIR:"
