"""Build a tiny, randomly initialised Qwen2.5-VL checkpoint fully offline.

The checkpoint is a real ``Qwen2_5_VLForConditionalGeneration`` plus a real ``Qwen2_5_VLProcessor``
(Qwen2-VL image and video processors, a ``Qwen2Tokenizer`` byte-level BPE, the real Qwen2.5-VL chat
template), written with ``save_pretrained`` so that ``from_pretrained`` loads it exactly like a hub
checkpoint. Tests, CI and CPU demos use it in place of the 3B/7B model: same code paths, random
outputs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from data.schema import ROLES
from data.specialties import SPECIALTIES

if TYPE_CHECKING:
    from transformers import Qwen2Tokenizer

    from app.config import Settings

logger = logging.getLogger(__name__)

# Verbatim from Qwen/Qwen2.5-VL-*-Instruct chat_template.json.
QWEN25_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The added tokens of the real Qwen2.5-VL tokenizer, in their real order (appended after the BPE
# vocabulary, as in the real one).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

_WORDS = (
    "system user assistant You are a helpful assistant. patient image finding findings diagnosis "
    "differential lesion mass nodule tumor benign malignant biopsy histology slide cells tissue "
    "fracture bone lung chest heart liver kidney brain skin eye retina fundus thyroid insulin "
    "glucose diabetes hormone pain fever cough history exam scan x-ray CT MRI ultrasound radiograph "
    "opacity effusion pneumonia edema atrophy inflammation infection rash melanoma carcinoma "
    "lymphoma metastasis stage grade surgery resection appendicitis cataract glaucoma macular "
    "hemorrhage lab blood pressure age male female year years old left right upper lower normal "
    "abnormal likely unlikely consistent with suggests shows reveals question answer option options "
    "choose best most which what the a an of in on and or is are with without no yes not this that "
    "these for to from by as at be was were has have specialist specialists triage attending "
    "consult opinion confidence evidence reasoning step because therefore final case review"
)

_LINES = (
    "system\nYou are a helpful assistant.\nuser\nassistant\n",
    "Which specialist should review this case? Options: A B C D E.",
    "<think> The image shows a lesion, so the most likely diagnosis is clear. </think>",
    "<answer> A </answer> <answer>B</answer> <answer>C</answer> <answer>D</answer> <answer>E</answer>",
    "A. B. C. D. E. (A) (B) (C) (D) (E) A) B) C) D) E)",
    "0 1 2 3 4 5 6 7 8 9 10 12 25 50 75 100 0.5 0.9 1.0 37.5 120/80 mg mL mm cm %",
    ", . ; : ! ? ' \" ( ) [ ] { } - + = / * # @ & _ < > |",
    '{"specialist": "Radiologist", "answer": "C", "confidence": 0.8}',
)


def _corpus() -> list[str]:
    """A deterministic corpus covering the words of the chat template and the project's prompts.

    It includes the synthetic clinic's findings and modalities, as said in a think and an answer,
    so each is a few whole-word tokens (not a dozen byte pieces) the tiny model can copy between
    the image's description, the specialists' opinions and its answer.
    """
    from data.synthetic import MODALITY_STYLES

    lines = [*_LINES, _WORDS, _WORDS.title(), _WORDS.upper()]
    lines += [f"{name}: the {name} says {name.lower()} review. {name}s agree." for name in SPECIALTIES]
    for style in MODALITY_STYLES.values():
        for finding in style.findings:
            lines.append(
                f"{style.modality}: {finding.text} {style.modality}: unclear <answer> {finding.text}"
            )
            lines.append(f"The image shows {finding.text.lower()}.")
    # Repeated so every word clears the trainer's min_frequency and becomes a token.
    return lines * 3


@dataclass(frozen=True)
class _Size:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    mrope_section: tuple[int, int, int]  # sums to head_dim // 2
    v_hidden: int
    v_heads: int
    v_intermediate: int
    v_depth: int


_SIZES: dict[str, _Size] = {
    # ~0.34M parameters, ~1.4 MB of float32 safetensors.
    "tiny": _Size(64, 2, 4, 2, 128, (2, 3, 3), 32, 2, 64, 2),
    # ~13.5M parameters, ~54 MB.
    "small": _Size(384, 6, 6, 2, 1024, (8, 12, 12), 192, 3, 512, 4),
}

_BPE_VOCAB_SIZE = 1536
# Images are resized to between 56x56 (4 merged image tokens) and 112x112 (16 merged tokens).
_MIN_PIXELS = 56 * 56
_MAX_PIXELS = 112 * 112


def build_tokenizer() -> Qwen2Tokenizer:
    """Train a small byte-level BPE with Qwen2's own pre-tokenizer; wrap it as a ``Qwen2Tokenizer``.

    Deterministic: the corpus is fixed and BPE training has no randomness.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    # Train with the exact normalizer and pre-tokenizer the real Qwen2 tokenizer uses.
    reference = Qwen2Tokenizer().backend_tokenizer
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = reference.normalizer
    bpe.pre_tokenizer = reference.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    model_state = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = model_state["vocab"]
    # Pin the special tokens' ids in the real order, after the BPE vocabulary.
    for token in QWEN_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(merge) for merge in model_state["merges"]],
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=[t for t in QWEN_SPECIAL_TOKENS if t not in ("<|im_end|>", "<|endoftext|>")],
        model_max_length=32768,
    )


def build_tiny_model(out_dir: str | Path, *, size: Literal["tiny", "small"] = "tiny", seed: int = 0) -> Path:
    """Write a randomly initialised Qwen2.5-VL checkpoint (model, processor, chat template) to ``out_dir``.

    The same ``size`` and ``seed`` give bit-identical weights. Returns ``out_dir`` as a ``Path``.
    """
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    if size not in _SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(_SIZES)}")
    dims = _SIZES[size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    endoftext, im_end = ids["<|endoftext|>"], ids["<|im_end|>"]
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": dims.hidden,
            "intermediate_size": dims.intermediate,
            "num_hidden_layers": dims.layers,
            "max_window_layers": dims.layers,
            "num_attention_heads": dims.heads,
            "num_key_value_heads": dims.kv_heads,
            "max_position_embeddings": 32768,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e4,
                "mrope_section": list(dims.mrope_section),
            },
            "bos_token_id": endoftext,
            "eos_token_id": im_end,
            "pad_token_id": endoftext,
        },
        vision_config={
            "depth": dims.v_depth,
            "hidden_size": dims.v_hidden,
            "intermediate_size": dims.v_intermediate,
            "num_heads": dims.v_heads,
            "out_hidden_size": dims.hidden,
            "fullatt_block_indexes": [dims.v_depth - 1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        # Untied like Qwen2.5-VL-7B: with tied random embeddings greedy decoding just repeats its
        # last input token, which makes tests of decoding nearly vacuous.
        tie_word_embeddings=False,
    )
    # A private RNG stream: the weights depend on ``seed`` alone and the caller's RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    # Like the real checkpoint, end a turn at <|im_end|> or <|endoftext|>; no sampling defaults.
    model.generation_config = GenerationConfig(
        bos_token_id=endoftext, eos_token_id=[im_end, endoftext], pad_token_id=endoftext
    )

    pixel_bounds = {"min_pixels": _MIN_PIXELS, "max_pixels": _MAX_PIXELS}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixel_bounds),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixel_bounds),
        chat_template=QWEN25_VL_CHAT_TEMPLATE,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    logger.info(
        "built %s Qwen2.5-VL (%d params, vocab %d) at %s",
        size,
        model.num_parameters(),
        len(tokenizer),
        out,
    )
    return out


def ensure_default_model(settings: Settings, announce: Callable[[str], object] = logger.info) -> None:
    """Build the tiny offline checkpoint when a role uses it and it is not there yet."""
    tiny = settings.tiny_model_dir
    uses_tiny = any(settings.model_for(r) == str(tiny) for r in ROLES)
    if uses_tiny and not (tiny / "config.json").exists():
        announce(f"building the tiny offline Qwen2.5-VL checkpoint in {tiny} ...")
        build_tiny_model(tiny)
