"""Reward functions on tricky outputs, in both the per-text and TRL list signatures."""

from __future__ import annotations

import pytest

from rl.rewards import (
    REWARD_FUNCS,
    answer_accuracy_reward,
    completion_text,
    format_reward,
    step_rewards,
    triage_accuracy_reward,
)

OPTS = ["A) Normal", "B) Nodule", "C) Fracture", "D) Mass"]


@pytest.mark.parametrize(
    ("text", "fmt", "acc"),
    [
        ("<think>round</think><answer>B</answer>", 0.5, 1.0),
        ("<think>round</think><answer>b)</answer>", 0.5, 1.0),
        ("<think>round</think><answer>Answer: B.</answer>", 0.5, 1.0),
        ("<think>round</think><answer>nodule</answer>", 0.5, 1.0),
        ("<think>x</think><answer>A</answer>", 0.5, 0.0),
        ("B", 0.0, 0.0),  # no tags: no format, and no recoverable answer line
        ("The answer: B", 0.0, 1.0),  # right but unformatted
        ("<think>x</think><answer>B or D</answer>", 0.5, 0.0),
        ("<think>x</think><answer>B</answer> trailing", 0.0, 1.0),
        ("", 0.0, 0.0),
    ],
)
def test_attending_rewards(text, fmt, acc):
    conv = [[{"role": "assistant", "content": text}]]
    assert format_reward(conv) == [fmt]
    assert answer_accuracy_reward(conv, answer=["B"], options=[OPTS]) == [acc]


@pytest.mark.parametrize(
    ("text", "acc"),
    [
        ("<think>ct</think><answer>Radiologist</answer>", 1.0),
        ("<think>ct</think><answer>radiology</answer>", 1.0),
        ("<think>ct</think><answer>Pathologist, Radiologist</answer>", 0.0),  # first one counts
        ("<think>ct</think><answer>Radiologist, Pathologist</answer>", 1.0),
        ("<think>ct</think><answer>Cardiologist</answer>", 0.0),
        ("garbage", 0.0),
    ],
)
def test_triage_accuracy(text, acc):
    assert triage_accuracy_reward([text], specialty=["Radiologist"]) == [acc]


def test_completion_text_shapes():
    assert completion_text("x") == "x"
    assert (
        completion_text(
            [{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
        )
        == "ab"
    )
    assert completion_text([]) == ""


def test_registry_and_step_rewards():
    assert set(REWARD_FUNCS) == {"triage", "attending", "specialist"}
    r = step_rewards(
        "triage",
        "<think>x</think><answer>Surgeon</answer>",
        gold_answer=None,
        options=[],
        gold_specialty="Surgeon",
    )
    assert r == {"format": 0.5, "accuracy": 1.0}
    assert step_rewards("attending", "B", gold_answer=None, options=OPTS, gold_specialty=None) == {}
    assert step_rewards(
        "specialist", "<answer>D</answer>", gold_answer="D", options=OPTS, gold_specialty=None
    ) == {
        "format": 0.0,
        "accuracy": 1.0,
    }


@pytest.mark.parametrize(
    ("text", "triage_fmt"),
    [
        ("<think>ct</think><answer> Radiologist</answer>", 0.5),
        ("<think>ct</think><answer>Radiologist, Surgeon</answer>", 0.5),
        ("<think>ct</think><answer>image</answer>", 0.0),  # well-formed, but names no specialty
        ("<think>ct</think><answer>Cardiologist</answer>", 0.0),
        ("Radiologist", 0.0),
    ],
)
def test_format_credit_needs_a_usable_answer(text, triage_fmt):
    from rl.rewards import triage_format_reward

    assert triage_format_reward([text]) == [triage_fmt]
    assert REWARD_FUNCS["triage"][0] is triage_format_reward
    assert (
        step_rewards("triage", text, gold_answer=None, options=[], gold_specialty="Surgeon")["format"]
        == triage_fmt
    )


def test_answer_format_needs_an_option_when_there_are_options():
    named, unnamed = "<think>x</think><answer>B</answer>", "<think>x</think><answer>maybe</answer>"
    assert format_reward([named, unnamed], options=[OPTS, OPTS]) == [0.5, 0.0]
    assert format_reward([unnamed]) == [0.5]  # open question: the tags are the format
    assert (
        step_rewards("attending", unnamed, gold_answer="B", options=OPTS, gold_specialty=None)["format"]
        == 0.0
    )
