"""The tiny Qwen2.5-VL checkpoint loads and runs exactly like a real one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2TokenizerFast,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from app.tiny_model import QWEN_SPECIAL_TOKENS, build_tiny_model
from data.specialties import SPECIALTIES


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_round_trip_and_generate_with_image(tiny_model_dir: Path) -> None:
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    assert isinstance(processor, Qwen2_5_VLProcessor)
    assert isinstance(processor.image_processor, Qwen2VLImageProcessor)
    assert isinstance(processor.video_processor, Qwen2VLVideoProcessor)
    assert isinstance(processor.tokenizer, Qwen2TokenizerFast)

    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "Which specialist should review this?"}],
        }
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "Which specialist should review this?<|im_end|>\n<|im_start|>assistant\n"
    )
    image = Image.new("RGB", (300, 200), (180, 40, 40))
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    n_image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    # Resized within max_pixels = 112*112, so at most 16 merged tokens.
    assert 4 <= n_image_tokens <= 16
    assert n_image_tokens == int(inputs["image_grid_thw"].prod()) // 4

    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new_tokens = out[0, inputs["input_ids"].shape[1] :]
    assert 0 < len(new_tokens) <= 8
    assert all(0 <= int(t) < model.config.text_config.vocab_size for t in new_tokens)


def test_config_ids_match_tokenizer(tiny_model_dir: Path) -> None:
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir)
    tokenizer = AutoProcessor.from_pretrained(tiny_model_dir).tokenizer
    config, text_config = model.config, model.config.text_config
    ids = tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS))
    assert ids == list(range(ids[0], ids[0] + len(QWEN_SPECIAL_TOKENS))), "special tokens sit after the BPE"
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert config.vision_end_token_id == tokenizer.convert_tokens_to_ids("<|vision_end|>")
    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert tokenizer.eos_token_id == text_config.eos_token_id == im_end
    assert tokenizer.pad_token_id == text_config.pad_token_id == endoftext
    assert model.generation_config.eos_token_id == [im_end, endoftext]
    assert text_config.vocab_size == len(tokenizer)
    assert config.vision_config.out_hidden_size == text_config.hidden_size
    head_dim = text_config.hidden_size // text_config.num_attention_heads
    assert sum(text_config.rope_parameters["mrope_section"]) == head_dim // 2
    assert 0.2e6 < model.num_parameters() < 0.5e6


def test_tokenizer_knows_the_project_vocabulary(tiny_model_dir: Path) -> None:
    tokenizer = AutoProcessor.from_pretrained(tiny_model_dir).tokenizer
    assert 1000 <= len(tokenizer) <= 2000
    for name in SPECIALTIES:
        assert len(tokenizer.tokenize(f" {name}")) == 1, name
    text = "<think> Likely melanoma, 37.5 mm. </think> <answer> C </answer>"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text) // 2, "trained merges should compress the project's text"
    assert tokenizer.decode([tokenizer.eos_token_id, *ids], skip_special_tokens=True) == text


def test_same_seed_same_weights(tmp_path: Path) -> None:
    a = build_tiny_model(tmp_path / "a", seed=3)
    b = build_tiny_model(tmp_path / "b", seed=3)
    c = build_tiny_model(tmp_path / "c", seed=4)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _sha256(a / name) == _sha256(b / name), name
    assert _sha256(a / "model.safetensors") != _sha256(c / "model.safetensors")


def test_small_size(tmp_path: Path) -> None:
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(build_tiny_model(tmp_path, size="small"))
    assert 10e6 < model.num_parameters() < 20e6


def test_unknown_size_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown size"):
        build_tiny_model(tmp_path, size="huge")  # type: ignore[arg-type]
