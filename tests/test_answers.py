"""Answer matching, table-driven: every row is checked by data.answers, by the TRL reward function
the trainer optimises and by the evaluation report's scorer, which must all agree with the table.

Rows follow the answer styles of VQA-RAD (yes/no, closed free-form, counts), SLAKE (English and
Chinese), PathVQA, OmniMedVQA (option text) and MMMU (lettered options, numbers, stages).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.evaluation.report import RunRecord, score_run
from data.answers import (
    answer_key,
    exact_match,
    is_correct,
    match_option,
    normalize,
    token_f1,
    token_recall,
    yes_no,
)
from data.benchmarks import YES_NO, YES_NO_ZH
from rl.rewards import answer_accuracy_reward, format_reward

OMNI = ("A) Cataract", "B) No, It's normal.", "C) Glaucoma", "D) Myopia")
SIZES = ("A) 3 cm", "B) 4 cm", "C) 12 mm", "D) 2 mm")
EFFUSION = ("A) Effusion", "B) No effusion", "C) Pneumothorax")
COUNTS = ("A) 2", "B) 12", "C) 20", "D) 22")
STAGES = ("A) Stage I", "B) Stage II", "C) Stage III", "D) Stage IV")
LEVELS = ("A) C4-C5", "B) C5-C6", "C) C6-C7")
SEQUENCES = ("A) T1", "B) T2", "C) FLAIR")
SKIN = ("A) Café-au-lait spots", "B) Ash-leaf macules")
NODULE = ("A) Normal", "B) Nodule", "C) Mass")

# (style, answer, gold, options, right): closed questions.
CLOSED = [
    # VQA-RAD: yes/no (options A) Yes / B) No, gold a letter), closed free-form, numbers
    ("vqa-rad", "Yes", "A", YES_NO, True),
    ("vqa-rad", "yes.", "A", YES_NO, True),
    ("vqa-rad", "Yes, there is a pneumothorax", "A", YES_NO, True),
    ("vqa-rad", "No", "A", YES_NO, False),
    ("vqa-rad", "no evidence of pneumothorax", "B", YES_NO, True),
    ("vqa-rad", "Absent", "B", YES_NO, True),
    ("vqa-rad", "present", "A", YES_NO, True),
    ("vqa-rad", "There is no effusion", "B", YES_NO, True),
    ("vqa-rad", "(a)", "A", YES_NO, True),
    ("vqa-rad", "**B**", "B", YES_NO, True),
    ("vqa-rad", "Option B", "A", YES_NO, False),
    ("vqa-rad", "maybe", "A", YES_NO, False),
    ("vqa-rad", "", "A", YES_NO, False),
    ("vqa-rad", "Right.", "right", (), True),
    ("vqa-rad", "the right side", "right", (), False),
    ("vqa-rad", "left", "right", (), False),
    ("vqa-rad", "T1", "T1", (), True),
    ("vqa-rad", "t1", "T1", (), True),
    ("vqa-rad", "T2", "T1", (), False),
    ("vqa-rad", "3", "3", (), True),
    ("vqa-rad", "2", "12", (), False),
    ("vqa-rad", "12", "2", (), False),
    ("vqa-rad", "4cm", "4 cm", (), True),
    ("vqa-rad", "4.0 cm", "4 cm", (), True),
    ("vqa-rad", "5 cm", "4 cm", (), False),
    ("vqa-rad", "C5", "C6", (), False),
    ("vqa-rad", "C5–C6", "C5-C6", (), True),
    ("vqa-rad", "stage III", "stage II", (), False),
    ("vqa-rad", "Stage 2", "stage II", (), True),
    ("vqa-rad", "Yes", "yes", (), True),  # a closed yes/no stored without options
    ("vqa-rad", "No, it is normal", "no", (), True),
    # SLAKE (English): closed free-form; articles do not matter, negation does
    ("slake-en", "The left lung", "Left Lung", (), True),
    ("slake-en", "no effusion", "effusion", (), False),
    ("slake-en", "Effusion", "No effusion", (), False),
    ("slake-en", "Answer: MRI", "MRI", (), True),
    # SLAKE (Chinese): yes/no options in Chinese, character tokens, full-width forms
    ("slake-zh", "是", "A", YES_NO_ZH, True),
    ("slake-zh", "是的", "A", YES_NO_ZH, True),
    ("slake-zh", "否", "A", YES_NO_ZH, False),
    ("slake-zh", "没有", "B", YES_NO_ZH, True),
    ("slake-zh", "Yes", "A", YES_NO_ZH, True),
    ("slake-zh", "答案：否", "B", YES_NO_ZH, True),
    ("slake-zh", "左肺", "左 肺", (), True),
    ("slake-zh", "右肺", "左肺", (), False),
    ("slake-zh", "ＣＴ", "CT", (), True),
    ("slake-zh", "是", "是", (), True),  # a Chinese yes/no stored without options
    # PathVQA: yes/no, accents
    ("pathvqa", "yes", "A", YES_NO, True),
    ("pathvqa", "No.", "B", YES_NO, True),
    ("pathvqa", "negative", "A", YES_NO, False),
    ("pathvqa", "Ménétrier disease", "menetrier disease", (), True),
    # OmniMedVQA: option text, letters in every form, numbers with units, negation
    ("omnimedvqa", "B", "B", OMNI, True),
    ("omnimedvqa", "No, it's normal", "B", OMNI, True),
    ("omnimedvqa", "Glaucoma", "C", OMNI, True),
    ("omnimedvqa", "The answer is (C) Glaucoma", "C", OMNI, True),
    ("omnimedvqa", "cataract and glaucoma", "A", OMNI, False),
    ("omnimedvqa", "Answer: D.", "D", OMNI, True),
    ("omnimedvqa", "4 cm", "B", SIZES, True),
    ("omnimedvqa", "4cm", "B", SIZES, True),
    ("omnimedvqa", "4", "B", SIZES, True),
    ("omnimedvqa", "2 mm", "C", SIZES, False),
    ("omnimedvqa", "12mm", "C", SIZES, True),
    ("omnimedvqa", "about 12 mm across", "C", SIZES, True),
    ("omnimedvqa", "no effusion", "B", EFFUSION, True),
    ("omnimedvqa", "There is no effusion", "B", EFFUSION, True),
    ("omnimedvqa", "effusion", "A", EFFUSION, True),
    ("omnimedvqa", "no effusion", "A", EFFUSION, False),
    ("omnimedvqa", "Pneumothorax is absent", "C", EFFUSION, False),
    # MMMU: lettered options; numbers, levels, stages, sequences; accents
    ("mmmu", "12", "B", COUNTS, True),
    ("mmmu", "2", "B", COUNTS, False),
    ("mmmu", "(B)", "B", COUNTS, True),
    ("mmmu", "The correct answer is B.", "B", COUNTS, True),
    ("mmmu", "b", "B", COUNTS, True),
    ("mmmu", "Ｂ", "B", COUNTS, True),
    ("mmmu", "[B]", "B", COUNTS, True),
    ("mmmu", "Ｏｐｔｉｏｎ　Ｂ", "B", COUNTS, True),
    ("mmmu", "E", "B", COUNTS, False),
    ("mmmu", "Stage II", "B", STAGES, True),
    ("mmmu", "stage 2", "B", STAGES, True),
    ("mmmu", "Stage III", "B", STAGES, False),
    ("mmmu", "C5-C6", "B", LEVELS, True),
    ("mmmu", "C5/C6", "B", LEVELS, True),
    ("mmmu", "C6-C7", "B", LEVELS, False),
    ("mmmu", "T2", "A", SEQUENCES, False),
    ("mmmu", "T1", "A", SEQUENCES, True),
    ("mmmu", "cafe au lait spots", "A", SKIN, True),
    ("mmmu", "B) Ash-leaf macules", "A", SKIN, False),
    ("mmmu", "B. Nodule", "Nodule", NODULE, True),  # gold given as option text
    ("mmmu", "B - Nodule", "B", NODULE, True),
]

# (style, answer, gold, exact, recall, f1): open questions.
OPEN = [
    ("vqa-rad", "4cm", "4 cm", True, 1.0, 1.0),
    ("vqa-rad", "Two", "2", True, 1.0, 1.0),
    ("vqa-rad", "2 lesions", "2", False, 1.0, 2 / 3),
    ("vqa-rad", "12", "2", False, 0.0, 0.0),
    ("vqa-rad", "T2", "T1", False, 0.0, 0.0),
    ("vqa-rad", "C5–C6", "C5-C6", True, 1.0, 1.0),
    ("vqa-rad", "C6-C7", "C5-C6", False, 0.5, 0.5),
    ("slake-en", "the left lung", "left lung", True, 1.0, 1.0),
    ("slake-en", "right lung", "left lung", False, 0.5, 0.5),
    ("slake-en", "no effusion", "effusion", False, 0.0, 0.0),
    ("slake-en", "effusion", "no effusion", False, 0.0, 0.0),
    ("slake-en", "1,000", "1000", True, 1.0, 1.0),
    ("slake-en", "50%", "50 percent", True, 1.0, 1.0),
    ("slake-zh", "在左肺", "左肺", False, 1.0, 0.8),
    ("slake-zh", "右肾", "左肺", False, 0.0, 0.0),
    ("slake-zh", "2个", "2", False, 1.0, 2 / 3),
    ("slake-zh", "3.50cm", "3.5 cm", True, 1.0, 1.0),
    ("pathvqa", "Ménétrier's disease", "menetrier disease", False, 1.0, 0.8),
    ("pathvqa", "Stage 2", "stage II", True, 1.0, 1.0),
    ("pathvqa", "stage III", "stage II", False, 0.5, 0.5),
    ("mmmu", "ＣＴ", "CT", True, 1.0, 1.0),
    ("mmmu", "MRI", "CT", False, 0.0, 0.0),
    ("mmmu", "", "CT", False, 0.0, 0.0),
]


def _completion(answer: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": f"<think>looked</think><answer>{answer}</answer>"}]


def _record(answer: str, gold: str, options, kind: str) -> RunRecord:
    return RunRecord(
        run_id="r",
        case_id="c",
        status="ok",
        created_at=datetime.now(UTC),
        options=list(options),
        gold_answer=gold,
        gold_specialty=None,
        specialties=[],
        answer=answer,
        answer_status="ok",
        wall_s=0.0,
        meta={"kind": kind, "answer_text": gold},
    )


def test_the_table_is_big_enough_and_covers_every_style():
    assert len(CLOSED) + len(OPEN) >= 60
    styles = {row[0] for row in CLOSED + OPEN}
    assert styles == {"vqa-rad", "slake-en", "slake-zh", "pathvqa", "omnimedvqa", "mmmu"}
    assert {right for *_, right in CLOSED} == {True, False}


@pytest.mark.parametrize(("style", "answer", "gold", "options", "right"), CLOSED)
def test_closed_answers(style, answer, gold, options, right):
    assert is_correct(answer, gold, options) is right
    assert answer_accuracy_reward([_completion(answer)], answer=[gold], options=[list(options)]) == [
        float(right)
    ]
    assert score_run(_record(answer, gold, options, "closed"))["correct"] is right


@pytest.mark.parametrize(("style", "answer", "gold", "exact", "recall", "f1"), OPEN)
def test_open_answers(style, answer, gold, exact, recall, f1):
    assert exact_match(answer, gold) is exact
    assert token_recall(answer, gold) == pytest.approx(recall)
    assert token_f1(answer, gold) == pytest.approx(f1)
    # The reward for a question without options is the exact match the report counts.
    assert answer_accuracy_reward([_completion(answer)], answer=[gold], options=[[]]) == [float(exact)]
    entry = score_run(_record(answer, gold, (), "open"))
    assert (entry["exact"], entry["recall"], entry["f1"]) == (exact, pytest.approx(recall), pytest.approx(f1))


def test_format_credit_needs_an_answer_naming_an_option():
    """Format reward: the answer must name an option, in any of the forms accuracy accepts."""
    got = format_reward([_completion(a) for a in ("4cm", "Option B", "5 cm")], options=[SIZES] * 3)
    assert got == [0.5, 0.5, 0.0]


@pytest.mark.parametrize(
    ("text", "polarity"),
    [
        ("Yes, there is", "yes"),
        ("yes.", "yes"),
        ("present", "yes"),
        ("There are two nodules", "yes"),
        ("no evidence of a mass", "no"),
        ("absent", "no"),
        ("The lesion is not seen", "no"),
        ("是的", "yes"),
        ("没有", "no"),
        ("不是", "no"),
        ("the left lung", None),
        ("", None),
    ],
)
def test_yes_no_polarity(text, polarity):
    assert yes_no(text) == polarity


def test_normal_forms():
    assert normalize("The 4.0cm  MASS.") == "4 cm mass"
    assert normalize("Ｔ１ ＷＩ") == "t1 wi"
    assert normalize("stage IV") == normalize("Stage 4") != normalize("stage VI")
    assert normalize("vitamin A") == "vitamin a" and normalize("a nodule") == "nodule"
    assert normalize("左 肺") == normalize("左肺") == "左 肺"
    assert normalize("Ménétrier") == "menetrier" and normalize("ガ") == "ガ"  # kana keep their marks


def test_vote_keys():
    assert answer_key("4cm", SIZES) == answer_key("(b)", SIZES) == "B"
    assert answer_key("stage II", ()) == answer_key("Stage 2.", ()) != answer_key("stage III", ())
    assert answer_key("...", ()) is None and answer_key("nothing", SIZES) is None


@pytest.mark.parametrize(("answer", "letter"), [("A mass", "B"), ("I think so", None), ("a) Normal", "A")])
def test_letters_need_a_delimiter(answer, letter):
    """An English word that starts with a letter is not that letter (``A mass`` is not option A)."""
    assert match_option(answer, ("A) Normal", "B) Mass")) == letter
