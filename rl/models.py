"""The policy as the trainers get it: loaded with the run's ``from_pretrained`` arguments, parameters
frozen or a LoRA configuration, and a LoRA adapter folded into its base."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rl.recipe import PolicyModelConfig

# PolicyModelConfig fields that are from_pretrained arguments, by their from_pretrained name.
MODEL_INIT_FIELDS = {
    "dtype": "dtype",
    "attn_implementation": "attn_implementation",
    "model_revision": "revision",
}


def model_init_kwargs(
    model_args: PolicyModelConfig, recipe_kwargs: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``from_pretrained``'s keyword arguments: the model arguments' (dtype None: float32 on CPU,
    "auto" on a GPU) and a recipe's ``model_init_kwargs``; the same key set both ways is refused."""
    given = {
        key: getattr(model_args, name)
        for name, key in MODEL_INIT_FIELDS.items()
        if getattr(model_args, name) not in (None, "main")
    }
    recipe_kwargs = dict(recipe_kwargs or {})
    both = sorted(set(given) & set(recipe_kwargs))
    if both:
        raise ValueError(
            f"{both[0]} is set twice: in the model arguments and in the recipe's model_init_kwargs"
        )
    kwargs = {**given, **recipe_kwargs}
    kwargs.setdefault("dtype", "float32" if not torch.cuda.is_available() else "auto")
    return kwargs


def load_policy_model(model_args: PolicyModelConfig, init_kwargs: Mapping[str, Any]) -> Any:
    """The starting policy, with ``model_args.freeze``'d parameters frozen (full fine-tuning)."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(model_args.model_name_or_path, **init_kwargs)
    frozen = tuple(model_args.freeze)
    if frozen and not model_args.use_peft:
        for name, param in model.named_parameters():
            if name.startswith(frozen):
                param.requires_grad_(False)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"freeze {list(frozen)} leaves nothing to train")
    return model


def peft_config(model_args: PolicyModelConfig) -> Any:
    """PEFT's LoRA configuration for the model arguments (None under full fine-tuning)."""
    if not model_args.use_peft:
        return None
    from trl import get_peft_config

    config = get_peft_config(model_args)
    config.target_modules = lora_targets(model_args)
    return config


def lora_targets(model_args: PolicyModelConfig) -> list[str] | str | None:
    """PEFT's ``target_modules``: the projection names, in the language model only unless
    ``lora_scope`` is ``all`` (a regex PEFT matches against the full module name)."""
    names = model_args.lora_target_modules
    if model_args.lora_scope == "all" or not names:
        return list(names) if names else None
    return rf".*\blanguage_model\..*\.({'|'.join(re.escape(n) for n in names)})"


def merge_adapter(model: str, adapter: str, output_dir: str | Path) -> str:
    """Fold a LoRA adapter into its base model and save the result (with the base's processor)."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = Path(output_dir)
    base = AutoModelForImageTextToText.from_pretrained(model, dtype="auto")
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    merged.save_pretrained(out)
    AutoProcessor.from_pretrained(model).save_pretrained(out)
    return str(out)
