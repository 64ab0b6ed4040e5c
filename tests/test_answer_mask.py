"""rl.answer_mask on the tiny checkpoint's tokenizer: a byte-level BPE with Qwen2's real pre-tokenizer.

The reference for "exactly the content tokens" is the tokenizer's own encode-side offset mapping
(each token's character span in the input text), independent of the mask's decode-side spans.
"""

from __future__ import annotations

import pytest
import torch

from rl.answer_mask import answer_token_mask, token_spans

OPEN, CLOSE = "<answer>", "</answer>"

CASES = {
    "letter glued to the tag": ("<answer>B</answer>", "B"),
    "letter after a space": ("<answer> B</answer>", " B"),
    "open answer": ("<answer>Fracture of the femur</answer>", "Fracture of the femur"),
    "CJK": ("<answer>骨折</answer>", "骨折"),
    "number with unit": ("<answer>3.5 cm</answer>", "3.5 cm"),
    "unclosed": ("<answer>C", "C"),
    "think before": ("<think>The femur is broken.</think><answer>Fracture</answer>", "Fracture"),
    "text after": ("<think>x</think><answer> Surgeon</answer> and more text", " Surgeon"),
    "CJK think and answer": ("<think>股骨骨折</think><answer>骨折 3.5 cm</answer>", "骨折 3.5 cm"),
}


@pytest.fixture(scope="module")
def tokenizer():
    from app.tiny_model import build_tokenizer

    return build_tokenizer()


def _content_span(text: str) -> tuple[int, int]:
    start = text.index(OPEN) + len(OPEN)
    end = text.find(CLOSE, start)
    return start, len(text) if end < 0 else end


def _expected(tokenizer, text: str) -> list[float]:
    """1 where the token's encode-side character span overlaps the answer's content."""
    start, end = _content_span(text)
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    return [1.0 if a < end and b > start else 0.0 for a, b in offsets]


def _marked_text(tokenizer, ids: list[int], mask: torch.Tensor) -> str:
    return tokenizer.decode([t for t, m in zip(ids, mask.tolist(), strict=True) if m])


@pytest.mark.parametrize(("text", "content"), CASES.values(), ids=CASES.keys())
def test_marks_exactly_the_tokens_of_the_answer_content(tokenizer, text, content):
    ids = tokenizer(text)["input_ids"]
    mask = answer_token_mask(tokenizer, torch.tensor([ids]))
    assert mask.dtype == torch.float32 and mask.shape == (1, len(ids))
    assert mask[0].tolist() == _expected(tokenizer, text)
    # The marked tokens spell the content, plus at most the straddled ends of the two tags.
    marked = _marked_text(tokenizer, ids, mask[0])
    head, found, tail = marked.partition(content)
    assert found == content
    assert OPEN.endswith(head) and CLOSE.startswith(tail)


def test_the_token_carrying_a_glued_answer_is_marked(tokenizer):
    """Qwen2's pre-tokenizer glues the decision to the tag (``>B``): that token is the answer."""
    ids = tokenizer("<answer>B</answer>")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids)[:2] == ["<answer", ">B"]
    mask = answer_token_mask(tokenizer, torch.tensor([ids]))
    assert mask[0].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]


def test_no_answer_tag_marks_nothing(tokenizer):
    texts = ["<think>answer B</think>no tags", "answer: B", "</answer> B"]
    batch = tokenizer(texts, padding=True, padding_side="right", return_tensors="pt")["input_ids"]
    assert answer_token_mask(tokenizer, batch).sum().item() == 0.0


def test_every_byte_token_of_a_cjk_character_is_marked(tokenizer):
    """Each of the three byte tokens of 骨 decodes to a replacement character alone; all three count."""
    ids = tokenizer("<answer>骨折</answer>")["input_ids"]
    assert [tokenizer.decode([t]) for t in ids].count("\ufffd") == 6
    mask = answer_token_mask(tokenizer, torch.tensor([ids]))
    assert mask.sum().item() == 6.0
    assert _marked_text(tokenizer, ids, mask[0]) == "骨折"


def test_a_completion_cut_inside_a_character_keeps_its_bytes_in_the_answer(tokenizer):
    ids = tokenizer("<answer>骨折")["input_ids"][:-1]  # the last byte of 折 never came
    mask = answer_token_mask(tokenizer, torch.tensor([ids]))
    assert mask[0].tolist() == [0.0, 0.0] + [1.0] * (len(ids) - 2)


def test_special_tokens_get_nothing(tokenizer):
    text = f"<answer>C{tokenizer.eos_token}"
    ids = tokenizer(text)["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id
    mask = answer_token_mask(tokenizer, torch.tensor([ids]))
    assert mask[0, -1].item() == 0.0
    assert _marked_text(tokenizer, ids, mask[0]) == ">C"


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_marks_each_row_as_alone_and_no_padding(tokenizer, side):
    texts = [text for text, _ in CASES.values()]
    batch = tokenizer(texts, padding=True, padding_side=side, return_tensors="pt")
    mask = answer_token_mask(tokenizer, batch["input_ids"])
    assert mask.shape == batch["input_ids"].shape
    padding = batch["input_ids"] == tokenizer.pad_token_id
    assert padding.any() and mask[padding].sum().item() == 0.0
    for row, text in enumerate(texts):
        real = batch["attention_mask"][row].bool()
        assert mask[row][real].tolist() == _expected(tokenizer, text)


def test_spans_cost_a_bounded_number_of_short_decodes(tokenizer):
    """Linear in the completion: at most two decodes per token, none longer than a few tokens."""
    text = "<think>" + "股骨骨折, a fracture of the femur 3.5 cm. " * 20 + "</think><answer>骨折</answer>"
    ids = tokenizer(text)["input_ids"]
    lengths: list[int] = []

    def decode(window: list[int]) -> str:
        lengths.append(len(window))
        return tokenizer.decode(window)

    decoded, spans = token_spans(decode, ids)
    assert decoded == text
    assert len(spans) == len(ids) > 300
    assert len(lengths) <= 2 * len(ids)
    assert max(lengths) <= 8
