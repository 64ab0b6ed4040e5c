"""Tolerant parsers: valid, missing tags, unknown specialty, empty, very long, garbage."""

from __future__ import annotations

import pytest

from data.answers import is_correct, match_option
from graph.parse import (
    choose_specialists,
    is_strict_format,
    parse_think_answer,
    parse_triage,
)

OPTIONS = ["A) Normal", "B) Nodule", "C) Fracture", "D) Mass"]


def test_strict_think_answer():
    p = parse_think_answer("<think>round opacity</think><answer>B</answer>")
    assert (p.think, p.answer, p.status, p.error) == ("round opacity", "B", "ok", None)
    assert is_strict_format(" <think>x</think>\n<answer>B</answer> ")


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("<think>x</think> <answer>C", "C"),  # unclosed answer tag
        ("<answer>D</answer>", "D"),  # no think
        ("I looked at it.\nFinal answer: B) Nodule", "B) Nodule"),
        ("blah <think>a</think> more <answer>A</answer> trailing", "A"),
    ],
)
def test_recovered_answers(text, answer):
    p = parse_think_answer(text)
    assert p.status == "recovered"
    assert p.answer == answer
    assert not is_strict_format(text)


@pytest.mark.parametrize(
    "text", ["", "   ", "<think>only thinking</think>", "ĠĠ<|im_end|>zzz", "<answer></answer>"]
)
def test_failed_answers_never_raise(text):
    p = parse_think_answer(text)
    assert p.status == "failed"
    assert p.answer == ""
    assert p.error


def test_very_long_output_is_bounded():
    text = "<think>" + "x" * 5_000_000 + "</think><answer>A</answer>"
    p = parse_think_answer(text)
    assert p.status == "failed"  # the answer lies past the parse window: cut, not crashed
    long_ok = "<think>" + "y" * 10_000 + "</think><answer>A</answer>"
    assert parse_think_answer(long_ok).answer == "A"


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("B", "B"),
        ("b)", "B"),
        ("Answer: B.", "B"),
        ("The answer is C", "C"),
        ("(d)", "D"),
        ("nodule", "B"),
        ("It is a fracture of the rib", "C"),
        ("E", None),
        ("nodule or mass", None),  # ambiguous
        ("", None),
    ],
)
def test_match_option(answer, letter):
    assert match_option(answer, OPTIONS) == letter


def test_is_correct_letter_text_and_open():
    assert is_correct("B) Nodule", "B", OPTIONS)
    assert is_correct("Nodule", "Nodule", OPTIONS)
    assert not is_correct("A", "B", OPTIONS)
    assert not is_correct("", "B", OPTIONS)
    assert is_correct("Yes.", "yes", [])
    assert not is_correct("no", "yes", [])


def test_triage_valid_order_and_dedup():
    p = parse_triage("<think>CT slice</think><answer>Radiologist, Surgeon, radiology, Oncologist</answer>")
    assert p.status == "ok"
    assert p.specialties == ["Radiologist", "Surgeon", "Oncologist"]
    assert p.rationale == "CT slice"


def test_triage_unknown_specialty_fails_with_fallback():
    p = parse_triage("<think>x</think><answer>Cardiologist, Neurologist</answer>")
    assert p.status == "failed"
    assert p.specialties == []
    assert choose_specialists(p.specialties, 3) == ["Pathologist", "Radiologist", "Surgeon"]


def test_triage_free_text_and_garbage():
    p = parse_triage("I would ask a dermatologist and then an ophthalmologist.")
    assert p.status == "recovered"
    assert p.specialties == ["Dermatologist", "Ophthalmologist"]
    assert parse_triage("").status == "failed"
    assert parse_triage("\x00\x01 <<<>>>").specialties == []


def test_choose_specialists_fills_distinct():
    assert choose_specialists(["Surgeon"], 3) == ["Surgeon", "Pathologist", "Radiologist"]
    assert choose_specialists(["Surgeon", "Surgeon", "Oncologist", "Radiologist", "Dermatologist"], 3) == [
        "Surgeon",
        "Oncologist",
        "Radiologist",
    ]
