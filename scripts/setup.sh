#!/usr/bin/env bash
# Creates/updates .venv with everything the project needs (idempotent: re-runs only when
# pyproject.toml or constraints.txt change). torch comes from the local wheels via constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=${MMEDAGENT_EXTRAS:-train,ui,serve,postgres,tracing,dev}
stamp=".venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)-${extras//,/_}"
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  echo "setting up .venv (torch from local wheels, then mmedagent-rl[$extras]) ..." >&2
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt torch torchvision 2>&1 \
    | grep -v "is ignored" >&2 || true
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e ".[$extras]" 2>&1 \
    | grep -v "is ignored" >&2 || true
  .venv/bin/python -c "import torch, torchvision, transformers, langgraph, sqlalchemy" \
    || { echo "setup failed: see pip output above" >&2; exit 1; }
  rm -f .venv/.installed-*
  touch "$stamp"
fi
