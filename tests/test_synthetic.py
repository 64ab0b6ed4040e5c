"""data.synthetic: the seeded synthetic clinic."""

from __future__ import annotations

import io
import itertools
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from data.images import load_image
from data.specialties import SPECIALTIES, specialty_for_modality
from data.synthetic import (
    MODALITY_STYLES,
    OCCLUDER,
    OCCLUDER_COLOUR,
    QUESTIONS,
    SPECIALTY_OF_MODALITY,
    SyntheticCase,
    generate_cases,
    iter_cases,
    make_case,
    mark_colour,
)


@pytest.fixture(scope="module")
def cases() -> list[SyntheticCase]:
    return generate_cases(140, seed=3)


def decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "RGB"
    return np.asarray(image)


def mark_pixels(case: SyntheticCase, image: np.ndarray) -> int:
    style = MODALITY_STYLES[case.modality]
    finding = next(f for f in style.findings if f.key == case.finding)
    colour = np.asarray(mark_colour(style, finding), dtype=int)
    return int((np.abs(image.astype(int) - colour).max(axis=-1) <= 30).sum())


def test_same_seed_gives_identical_bytes() -> None:
    assert generate_cases(30, seed=7) == generate_cases(30, seed=7)


def test_different_seed_gives_different_cases() -> None:
    a, b = generate_cases(20, seed=0), generate_cases(20, seed=1)
    assert [c.images for c in a] != [c.images for c in b]
    assert [c.answer for c in a] != [c.answer for c in b]


def test_cases_do_not_depend_on_n() -> None:
    assert generate_cases(10, seed=2) == generate_cases(25, seed=2)[:10]
    assert list(itertools.islice(iter_cases(seed=2), 25)) == generate_cases(25, seed=2)
    assert make_case(17, seed=2) == generate_cases(18, seed=2)[17]


def test_case_ids(cases: list[SyntheticCase]) -> None:
    assert cases[0].case_id == "syn-3-00000"
    assert cases[123].case_id == "syn-3-00123"
    assert len({c.case_id for c in cases}) == len(cases)


def test_answer_letter_indexes_answer_text(cases: list[SyntheticCase]) -> None:
    for case in cases:
        assert [o[:3] for o in case.options] == ["A) ", "B) ", "C) ", "D) "]
        texts = [o[3:] for o in case.options]
        assert len(set(texts)) == 4
        assert texts["ABCD".index(case.answer)] == case.answer_text
        finding = next(f for f in MODALITY_STYLES[case.modality].findings if f.key == case.finding)
        assert finding.text == case.answer_text
        assert sorted(texts) == sorted(f.text for f in MODALITY_STYLES[case.modality].findings)


def test_gold_letter_varies(cases: list[SyntheticCase]) -> None:
    counts = Counter(c.answer for c in cases)
    assert set(counts) == set("ABCD")
    assert min(counts.values()) >= len(cases) // 8


def test_specialties_balanced_and_consistent(cases: list[SyntheticCase]) -> None:
    counts = Counter(c.specialty for c in cases)
    assert set(counts) == set(SPECIALTIES)
    assert set(counts.values()) == {len(cases) // len(SPECIALTIES)}  # 140 = 7 × 20: exact
    for case in cases:
        assert specialty_for_modality(case.modality) == case.specialty
    prefix = Counter(c.specialty for c in cases[:10])
    assert max(prefix.values()) - min(prefix[s] for s in SPECIALTIES) <= 1


def test_modalities_cover_specialties_one_to_one() -> None:
    assert len(MODALITY_STYLES) == len(SPECIALTIES)
    assert sorted(SPECIALTY_OF_MODALITY.values()) == sorted(SPECIALTIES)  # type: ignore[type-var]
    for modality, style in MODALITY_STYLES.items():
        assert style.modality == modality
        assert specialty_for_modality(modality) == SPECIALTY_OF_MODALITY[modality]
        assert len(style.findings) == 4 and style.findings[0].mark == "none"
        # The finding must be readable from the image: one mark shape per finding.
        assert len({f.mark for f in style.findings}) == 4


def test_questions_do_not_give_away_the_specialty(cases: list[SyntheticCase]) -> None:
    words = [*SPECIALTIES, *MODALITY_STYLES, "patholog", "radiolog", "retina", "skin", "thyroid"]
    assert {c.question for c in cases} <= {q.format(this="this image") for q in QUESTIONS}
    for question in QUESTIONS:
        for word in words:
            assert not re.search(word, question, re.IGNORECASE), (word, question)


def test_images_decode_at_requested_size(cases: list[SyntheticCase]) -> None:
    for case in cases[:14]:
        assert len(case.images) == 1
        assert decode(case.images[0]).shape == (56, 56, 3)
        loaded = load_image(case.images[0])  # the synthetic clinic feeds the same loader as uploads
        assert loaded.data == case.images[0] and loaded.image.size == (56, 56)
    big = make_case(0, seed=0, size=112)
    assert decode(big.images[0]).shape == (112, 112, 3)


def test_two_image_cases() -> None:
    for case in generate_cases(14, seed=5, image_count=2):
        assert len(case.images) == 2
        assert case.images[0] != case.images[1]  # two views, not a copy
        assert "these images" in case.question
        for png in case.images:
            # Both views show the same finding: a mark exactly when the finding is abnormal.
            assert (mark_pixels(case, decode(png)) > 0) == (case.finding != "normal")


def border(pixels: np.ndarray) -> np.ndarray:
    """The pixels outside the square where marks (and an unclear image's artefact) are drawn."""
    lo, hi = (round(f * pixels.shape[0]) for f in OCCLUDER)
    keep = np.ones(pixels.shape[:2], dtype=bool)
    keep[lo : hi + 1, lo : hi + 1] = False
    return pixels[keep]


def test_border_colour_identifies_the_modality(cases: list[SyntheticCase]) -> None:
    means = {c.case_id: border(decode(c.images[0])).mean(axis=0) for c in cases}
    centroids = {
        m: np.mean([means[c.case_id] for c in cases if c.modality == m], axis=0) for m in MODALITY_STYLES
    }
    for a, b in itertools.combinations(centroids, 2):
        assert np.linalg.norm(centroids[a] - centroids[b]) > 30, (a, b)
    # A nearest-centroid classifier on mean colour alone gets every case right.
    for case in cases:
        nearest = min(centroids, key=lambda m: np.linalg.norm(means[case.case_id] - centroids[m]))
        assert nearest == case.modality


def test_marks_present_exactly_for_abnormal_findings(cases: list[SyntheticCase]) -> None:
    seen_normal = seen_abnormal = False
    for case in cases:
        marked = mark_pixels(case, decode(case.images[0]))
        if case.finding == "normal":
            seen_normal = True
            assert marked == 0, case.case_id
        else:
            seen_abnormal = True
            assert marked >= 9, case.case_id
    assert seen_normal and seen_abnormal


def test_large_marks_are_larger_than_small_ones(cases: list[SyntheticCase]) -> None:
    area: dict[str, list[int]] = {"small_disc": [], "large_disc": []}
    for case in cases:
        mark = next(f.mark for f in MODALITY_STYLES[case.modality].findings if f.key == case.finding)
        if mark in area:
            area[mark].append(mark_pixels(case, decode(case.images[0])))
    assert area["small_disc"] and area["large_disc"]
    assert max(area["small_disc"]) < min(area["large_disc"])


@pytest.mark.parametrize(
    "kwargs",
    [{"n": -1}, {"n": 1, "seed": -1}, {"n": 1, "size": 50}, {"n": 1, "size": 0}, {"n": 1, "image_count": 0}],
)
def test_invalid_arguments(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        generate_cases(**kwargs)


def test_unclear_image_hides_the_finding_but_not_the_modality() -> None:
    for index in range(28):
        clear, unclear = (make_case(index, seed=4, size=112, clarity=c) for c in ("clear", "unclear"))
        # Same case but for the pixels over the finding (and the id).
        assert (unclear.question, unclear.options, unclear.answer) == (
            clear.question,
            clear.options,
            clear.answer,
        )
        assert unclear.case_id == clear.case_id + "-unclear" and unclear.clarity == "unclear"
        assert clear.seen == f"{clear.modality}: {clear.answer_text}"
        assert unclear.seen == f"{clear.modality}: unclear"
        pixels = decode(unclear.images[0])
        assert mark_pixels(unclear, pixels) == 0  # no trace of the mark, whatever the finding
        lo, hi = (round(f * 112) for f in OCCLUDER)
        assert (pixels[lo : hi + 1, lo : hi + 1] == OCCLUDER_COLOUR).all()
        # Outside the artefact the image is the clear one's: the modality still shows.
        outside = np.ones((112, 112), dtype=bool)
        outside[lo : hi + 1, lo : hi + 1] = False
        assert (pixels[outside] == decode(clear.images[0])[outside]).all()
    with pytest.raises(ValueError, match="clarity"):
        make_case(0, clarity="blurry")


def test_attending_clinic_needs_both_the_image_and_the_opinions() -> None:
    from graph.parse import parse_think_answer
    from rl.datasets import synthetic_attending_rows
    from rl.simulated import majority_answer

    rows = synthetic_attending_rows(300, seed=6, size=56)
    assert {(r["difficulty"], r["clarity"]) for r in rows} == {
        ("easy", "clear"), ("easy", "unclear"), ("medium", "clear"), ("hard", "clear")
    }  # fmt: skip
    for row in rows:
        text = row["prompt"][1]["content"][-1]["text"].split("Specialist opinions:\n", 1)[1]
        opinions = [line.split("] ", 1)[1] for line in text.splitlines()]
        majority_right = majority_answer(opinions, row["options"]) == row["answer"]
        # Every case is answerable: an unclear image only where every specialist is right...
        assert row["difficulty"] == "easy" or row["clarity"] == "clear"
        assert majority_right or row["clarity"] == "clear"
        # ... and on hard cases the majority is wrong (every specialist names one decoy).
        assert not majority_right or row["difficulty"] != "hard"
        # Opinions answer with the option text, so it can be taken over verbatim.
        answers = {parse_think_answer(o).answer.strip() for o in opinions}
        assert answers <= {o[3:] for o in row["options"]}
    single = synthetic_attending_rows(30, seed=6, size=56, opinions=False)
    assert all("No specialist opinions" in r["prompt"][1]["content"][-1]["text"] for r in single)
    assert [r["case_id"] for r in single] == [r["case_id"] for r in rows[:30]]


def _opinions(row: dict) -> list[str]:
    text = row["prompt"][1]["content"][-1]["text"].split("Specialist opinions:\n", 1)[1]
    return [line.split("] ", 1)[1] for line in text.splitlines()]


def test_realistic_clinic_has_rare_hard_cases_and_a_noisy_own_reading() -> None:
    """The paper's setting: mostly easy, few hard; unclear images wherever the majority is right
    (2-to-1 medium cases too), never where it is wrong, so every case stays answerable."""
    from rl.datasets import synthetic_attending_rows
    from rl.simulated import majority_answer

    rows = synthetic_attending_rows(600, seed=3, size=56, clinic="realistic")
    shares = Counter(r["difficulty"] for r in rows)
    assert 0.54 < shares["easy"] / 600 < 0.66 and 0.25 < shares["medium"] / 600 < 0.35
    assert 0.06 < shares["hard"] / 600 < 0.14
    unclear_medium = 0
    for row in rows:
        opinions = _opinions(row)
        assert len(opinions) == 3
        majority_right = majority_answer(opinions, row["options"]) == row["answer"]
        assert majority_right or row["clarity"] == "clear"
        unclear_medium += row["difficulty"] == "medium" and row["clarity"] == "unclear"
    assert unclear_medium > 10
    unclear = [r for r in rows if majority_answer(_opinions(r), r["options"]) == r["answer"]]
    assert 0.4 < sum(r["clarity"] == "unclear" for r in unclear) / len(unclear) < 0.6
    # A stratified test set of the same clinic: a third of each level.
    held = synthetic_attending_rows(
        300, seed=3, size=56, clinic="realistic", mix=dict.fromkeys(("easy", "medium", "hard"), 1)
    )
    assert all(80 < n < 120 for n in Counter(r["difficulty"] for r in held).values())


def test_shifted_clinic_changes_the_panel_not_the_cases() -> None:
    """Five specialists worded otherwise, answering by letter; the same cases and options, and the
    majority and difficulty still read right from the opinions."""
    from graph.parse import parse_think_answer
    from rl.datasets import synthetic_attending_rows
    from rl.simulated import majority_answer

    shifted = synthetic_attending_rows(200, seed=4, size=56, clinic="shifted")
    realistic = synthetic_attending_rows(200, seed=4, size=56, clinic="realistic")
    assert {r["difficulty"] for r in shifted} == {"easy", "medium", "hard"}
    assert [(r["options"], r["answer"]) for r in shifted] == [(r["options"], r["answer"]) for r in realistic]
    for row in shifted:
        opinions = _opinions(row)
        assert len(opinions) == 5
        assert all(o.startswith("<think>Findings favour option ") for o in opinions)
        answers = [parse_think_answer(o).answer.strip() for o in opinions]
        assert set(answers) <= set(row["options"])  # the option as listed, letter first
        gold = next(x for x in row["options"] if x[0] == row["answer"])
        right = answers.count(gold)
        assert row["difficulty"] == {5: "easy", 0: "hard"}.get(right, "medium")
        majority_right = majority_answer(opinions, row["options"]) == row["answer"]
        assert majority_right == (2 * right > 5)
        assert majority_right or row["clarity"] == "clear"
        assert (row["said"] == gold[3:]) == majority_right
    # The realistic clinic's opinions answer with the option's text, never its letter.
    texts = {o[3:] for r in realistic for o in r["options"]}
    assert all(parse_think_answer(o).answer.strip() in texts for r in realistic for o in _opinions(r))


def test_clinic_settings_are_checked() -> None:
    from rl.datasets import DatasetError, synthetic_attending_rows
    from rl.simulated import Clinic

    for bad in ({"mix": (("impossible", 1.0),)}, {"unclear_on": "sometimes"}, {"wording": "emoji"},
                {"unclear_share": 1.5}, {"n_specialists": 1}, {"n_specialists": 8}):  # fmt: skip
        with pytest.raises(ValueError):
            Clinic("bad", **bad)
    with pytest.raises(DatasetError, match="mix must weigh"):
        synthetic_attending_rows(3, clinic="realistic", mix={"easy": -1.0})
    with pytest.raises(DatasetError, match="unknown clinic 'nowhere': one of balanced, realistic, shifted"):
        synthetic_attending_rows(3, clinic="nowhere")
