"""Benchmark loaders on small fixture folders written in each published layout (no downloads)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from data.benchmarks import YES_NO, YES_NO_ZH, BenchmarkError, load_benchmark


def _image_bytes(colour: tuple[int, int, int], fmt: str = "PNG", size: tuple[int, int] = (40, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def _parquet(path: Path, columns: dict[str, list], image_columns: tuple[str, ...] = ("image",)) -> Path:
    """A parquet file as the Hugging Face hub serves it (Image features as {"bytes", "path"})."""
    import datasets

    features = datasets.Features(
        {k: datasets.Image() if k in image_columns else datasets.Value("string") for k in columns}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(path))
    return path


def _hf_image(colour: tuple[int, int, int], name: str) -> dict:
    return {"bytes": _image_bytes(colour, "JPEG"), "path": name}


# --- VQA-RAD ------------------------------------------------------------------------------------


@pytest.fixture
def vqa_rad_json(tmp_path: Path) -> Path:
    root = tmp_path / "vqa_rad"
    folder = root / "VQA_RAD Image Folder"
    _write(folder / "synpic100.jpg", _image_bytes((200, 200, 200), "JPEG"))
    _write(folder / "synpic200.jpg", _image_bytes((50, 50, 50), "JPEG"))
    items = [
        {
            "qid": 1,
            "image_name": "synpic100.jpg",
            "image_organ": "CHEST",
            "answer": "Yes",
            "answer_type": "CLOSED",
            "question_type": "PRES",
            "question": "Is there a pneumothorax?",
            "phrase_type": "test_freeform",
        },
        {
            "qid": 2,
            "image_name": "synpic100.jpg",
            "image_organ": "CHEST",
            "answer": "right",
            "answer_type": "CLOSED ",
            "question_type": "POS",
            "question": "Is the mass on the left or right?",
            "phrase_type": "test_para",
        },
        {
            "qid": 3,
            "image_name": "synpic200.jpg",
            "image_organ": "HEAD",
            "answer": "MRI",
            "answer_type": "OPEN",
            "question_type": "MODALITY",
            "question": "What modality is used?",
            "phrase_type": "test_freeform",
        },
        {
            "qid": 4,
            "image_name": "synpic200.jpg",
            "image_organ": "HEAD",
            "answer": 2,
            "answer_type": "OPEN",
            "question_type": "COUNT",
            "question": "How many lesions are seen?",
            "phrase_type": "test_freeform",
        },
        {
            "qid": 5,
            "image_name": "synpic200.jpg",
            "image_organ": "HEAD",
            "answer": "no",
            "answer_type": "CLOSED",
            "question_type": "ABN",
            "question": "Is the brain normal?",
            "phrase_type": "freeform",
        },
    ]
    _write(root / "VQA_RAD Dataset Public.json", json.dumps(items))
    return root


def test_vqa_rad_json_release(vqa_rad_json: Path):
    cases = load_benchmark("vqa-rad", vqa_rad_json)  # test split by default
    assert [c.case_id for c in cases] == ["vqa-rad-1", "vqa-rad-2", "vqa-rad-3", "vqa-rad-4"]
    yes, side, modality, count = cases
    assert yes.closed and yes.options == YES_NO and yes.answer == "A" and yes.answer_text == "Yes"
    # closed by the dataset's label, but not yes/no: no options, scored by exact match
    assert side.closed and side.options == () and side.answer == "right"
    assert not modality.closed and modality.kind == "open" and modality.answer == "MRI"
    assert count.answer == "2" and not count.closed
    assert {c.specialty for c in cases} == {"Radiologist"}
    assert yes.subset == "CHEST" and modality.subset == "HEAD"
    expected = (vqa_rad_json / "VQA_RAD Image Folder" / "synpic100.jpg").read_bytes()
    loaded = yes.images[0].load()
    assert loaded.data == expected and loaded.image.size == (40, 32)
    assert [c.case_id for c in load_benchmark("vqa-rad", vqa_rad_json, split="train")] == ["vqa-rad-5"]
    assert len(load_benchmark("vqa-rad", vqa_rad_json, split="all")) == 5
    assert len(load_benchmark("vqa-rad", vqa_rad_json, limit=2)) == 2


def test_vqa_rad_missing_image_is_a_clear_error(vqa_rad_json: Path):
    (vqa_rad_json / "VQA_RAD Image Folder" / "synpic200.jpg").unlink()
    with pytest.raises(BenchmarkError, match=r"qid 3.*synpic200\.jpg"):
        load_benchmark("vqa-rad", vqa_rad_json)


def test_vqa_rad_parquet_release(tmp_path: Path):
    root = tmp_path / "vqa-rad-hf"
    _parquet(
        root / "data" / "test-00000-of-00001-abc.parquet",
        {
            "image": [
                _hf_image((10, 10, 10), "a.jpg"),
                _hf_image((20, 20, 20), "b.jpg"),
                _hf_image((30, 30, 30), "c.jpg"),
            ],
            "question": ["is there a fracture?", "are the lungs clear?", "where is the lesion?"],
            "answer": ["no", "yes", "left upper lobe"],
        },
    )
    _parquet(
        root / "data" / "train-00000-of-00001-abc.parquet",
        {"image": [_hf_image((1, 1, 1), "t.jpg")], "question": ["q?"], "answer": ["yes"]},
    )
    cases = load_benchmark("vqa-rad", root)
    assert len(cases) == 3
    no, yes, where = cases
    assert no.closed and no.options == YES_NO and no.answer == "B"
    assert yes.answer == "A"
    assert not where.closed and where.options == () and where.answer == "left upper lobe"
    assert no.images[0].load().image.getpixel((5, 5)) == pytest.approx((10, 10, 10), abs=3)
    assert len({c.case_id for c in cases}) == 3
    assert len(load_benchmark("vqa-rad", root, split="train")) == 1


# --- SLAKE --------------------------------------------------------------------------------------


def _slake_row(qid: int, lang: str, answer: str, answer_type: str, modality: str = "CT") -> dict:
    return {
        "img_id": 0,
        "img_name": "xmlab0/source.jpg",
        "question": f"question {qid}?",
        "answer": answer,
        "q_lang": lang,
        "location": "Lung",
        "modality": modality,
        "answer_type": answer_type,
        "base_type": "vqa",
        "content_type": "Abnormality",
        "triple": ["vhead", "_", "_"],
        "qid": qid,
    }


def test_slake_english_by_default(tmp_path: Path):
    root = tmp_path / "Slake1.0"
    _write(root / "imgs" / "xmlab0" / "source.jpg", _image_bytes((90, 90, 90), "JPEG"))
    rows = [
        _slake_row(1, "en", "Yes", "CLOSED"),
        _slake_row(2, "en", "Left Lung", "OPEN", modality="X-Ray"),
        _slake_row(3, "zh", "是", "CLOSED"),
        _slake_row(4, "en", "No", "CLOSED", modality="MRI"),
    ]
    _write(root / "test.json", json.dumps(rows, ensure_ascii=False))
    _write(root / "validate.json", json.dumps(rows[:1]))
    _write(root / "train.json", json.dumps(rows[:2]))
    cases = load_benchmark("slake", root)
    assert [c.case_id for c in cases] == ["slake-1", "slake-2", "slake-4"]
    assert cases[0].options == YES_NO and cases[0].answer == "A"
    assert cases[2].answer == "B" and cases[2].subset == "MRI"
    assert cases[1].kind == "open" and cases[1].answer == "Left Lung" and cases[1].modality == "X-Ray"
    assert {c.specialty for c in cases} == {"Radiologist"}
    assert cases[0].meta["location"] == "Lung" and cases[0].meta["content_type"] == "Abnormality"
    zh = load_benchmark("slake", root, language="zh")
    assert [c.case_id for c in zh] == ["slake-3"] and zh[0].closed
    assert zh[0].options == YES_NO_ZH and zh[0].answer == "A" and zh[0].answer_text == "是"
    assert len(load_benchmark("slake", root, language="all")) == 4
    assert len(load_benchmark("slake", root, split="validation")) == 1
    assert len(load_benchmark("slake", root, split="train")) == 2
    with pytest.raises(BenchmarkError, match="unknown split"):
        load_benchmark("slake", root, split="dev")


# --- PathVQA ------------------------------------------------------------------------------------


def test_pathvqa_parquet_shards(tmp_path: Path):
    root = tmp_path / "path-vqa"
    for shard, answers in enumerate((["yes", "no"], ["hyperplasia"])):
        _parquet(
            root / "data" / f"test-0000{shard}-of-00002-x.parquet",
            {
                "image": [_hf_image((shard * 40 + i, 0, 0), f"{shard}{i}.jpg") for i in range(len(answers))],
                "question": [f"q {shard} {i}?" for i in range(len(answers))],
                "answer": answers,
            },
        )
    _parquet(
        root / "data" / "validation-00000-of-00001-x.parquet",
        {"image": [_hf_image((5, 5, 5), "v.jpg")], "question": ["v?"], "answer": ["yes"]},
    )
    cases = load_benchmark("pathvqa", root)
    assert [c.answer for c in cases] == ["A", "B", "hyperplasia"]  # shard order kept
    assert [c.closed for c in cases] == [True, True, False]
    assert {c.specialty for c in cases} == {"Pathologist"}
    assert len({c.case_id for c in cases}) == 3
    assert len(load_benchmark("pathvqa", root, split="val")) == 1
    with pytest.raises(BenchmarkError, match="no train-"):
        load_benchmark("pathvqa", root, split="train")


# --- OmniMedVQA ---------------------------------------------------------------------------------


def _omni_row(dataset: str, qid: str, image: str, modality: str, gt: str, options: list[str], **kw) -> dict:
    row = {
        "dataset": dataset,
        "question_id": qid,
        "question_type": "Disease Diagnosis",
        "question": "What is the diagnosis?",
        "gt_answer": gt,
        "image_path": image,
        "modality_type": modality,
    }
    row.update({f"option_{'ABCD'[i]}": o for i, o in enumerate(options)})
    row.update(kw)
    return row


@pytest.fixture
def omnimedvqa(tmp_path: Path) -> Path:
    root = tmp_path / "OmniMedVQA"
    for name in ("ACRIMA/Im001.png", "Chest CT/ct1.png", "Derm/d1.jpg"):
        _write(root / "Images" / name, _image_bytes((120, 30, 30)))
    qa = root / "QA_information"
    rows = [
        _omni_row(
            "ACRIMA",
            "ACRIMA_0",
            "Images/ACRIMA/Im001.png",
            "Fundus Photography",
            "Glaucoma",
            ["Normal", "Glaucoma"],
        ),
        _omni_row(
            "ACRIMA",
            "ACRIMA_1",
            "Images/ACRIMA/Im001.png",
            "OCT (Optical Coherence Tomography",
            "No, It's normal.",
            ["Cataract", "No, It's normal.", "Glaucoma", "Myopia"],
        ),
    ]
    _write(qa / "Open-access" / "ACRIMA.json", json.dumps(rows))
    # one file of the release names the field "modality"
    ct = _omni_row(
        "Chest CT Scan",
        "CT_0",
        "Images/Chest CT/ct1.png",
        "",
        "adenocarcinoma",
        ["Adenocarcinoma", "normal", "squamous cell carcinoma"],
    )
    del ct["modality_type"]
    ct["modality"] = "CT(Computed Tomography)"
    _write(qa / "Open-access" / "Chest CT Scan.json", json.dumps([ct]))
    derm = _omni_row("Derm", "D_0", "Images/Derm/d1.jpg", "Dermoscopy", "melanoma", ["nevus", "melanoma"])
    _write(qa / "Restricted-access" / "Derm.json", json.dumps([derm]))
    return root


def test_omnimedvqa_layout(omnimedvqa: Path):
    cases = {c.case_id: c for c in load_benchmark("omnimedvqa", omnimedvqa)}
    assert len(cases) == 4
    fundus = cases["omnimedvqa-ACRIMA-ACRIMA_0"]
    assert fundus.options == ("A) Normal", "B) Glaucoma") and fundus.answer == "B"
    assert fundus.closed and fundus.specialty == "Ophthalmologist" and fundus.subset == "Fundus Photography"
    oct_case = cases["omnimedvqa-ACRIMA-ACRIMA_1"]
    assert len(oct_case.options) == 4 and oct_case.answer == "B" and oct_case.specialty == "Ophthalmologist"
    ct = cases["omnimedvqa-Chest CT Scan-CT_0"]
    assert ct.answer == "A" and ct.specialty == "Radiologist"  # case-insensitive gold, typo'd modality
    assert cases["omnimedvqa-Derm-D_0"].specialty == "Dermatologist"
    assert fundus.images[0].load().data == (omnimedvqa / "Images/ACRIMA/Im001.png").read_bytes()
    assert len(load_benchmark("omnimedvqa", omnimedvqa, subset="Open-access")) == 3
    assert [c.case_id for c in load_benchmark("omnimedvqa", omnimedvqa, subset="Derm")] == [
        "omnimedvqa-Derm-D_0"
    ]


def test_omnimedvqa_gold_not_among_options(omnimedvqa: Path):
    bad = _omni_row("X", "X_0", "Images/Derm/d1.jpg", "Dermoscopy", "psoriasis", ["nevus", "melanoma"])
    _write(omnimedvqa / "QA_information" / "Open-access" / "X.json", json.dumps([bad]))
    with pytest.raises(BenchmarkError, match=r"X\.json item 0.*'psoriasis'"):
        load_benchmark("omnimedvqa", omnimedvqa)


# --- MMMU ---------------------------------------------------------------------------------------


def _mmmu_file(path: Path, rows: list[dict]) -> Path:
    columns: dict[str, list] = {
        k: [r.get(k) for r in rows]
        for k in (
            "id",
            "question",
            "options",
            "explanation",
            "img_type",
            "answer",
            "topic_difficulty",
            "question_type",
            "subfield",
        )
    }
    for k in range(1, 8):
        columns[f"image_{k}"] = [r.get(f"image_{k}") for r in rows]
    return _parquet(path, columns, image_columns=tuple(f"image_{k}" for k in range(1, 8)))


def test_mmmu_health_and_medicine(tmp_path: Path):
    root = tmp_path / "MMMU"
    _mmmu_file(
        root / "Clinical_Medicine" / "validation-00000-of-00001.parquet",
        [
            {
                "id": "validation_Clinical_Medicine_1",
                "question": "Compare <image 1> with <image 2>: what changed?",
                "options": "['Tumour growth', 'Infarct', 'No change']",
                "answer": "B",
                "img_type": "['Body Scans: MRI, CT scans, and PET scans']",
                "question_type": "multiple-choice",
                "subfield": "Clinical Neurology",
                "topic_difficulty": "Medium",
                "image_1": _hf_image((10, 200, 10), "1.png"),
                "image_2": _hf_image((200, 10, 10), "2.png"),
            },
            {
                "id": "validation_Clinical_Medicine_2",
                "question": "How many cells in <image 1>?",
                "options": "[]",
                "answer": "12",
                "img_type": "['Microscopic Images']",
                "question_type": "open",
                "subfield": "Dermatology",
                "image_1": _hf_image((1, 2, 3), "x.png"),
            },
        ],
    )
    _mmmu_file(
        root / "Diagnostics_and_Laboratory_Medicine" / "validation-00000-of-00001.parquet",
        [
            {
                "id": "validation_Diagnostics_and_Laboratory_Medicine_1",
                "question": "Which stain? <image 1>",
                "options": "['H&E', 'PAS', '<image 2>']",
                "answer": "A",
                "img_type": "['Photographs']",
                "question_type": "multiple-choice",
                "subfield": "Pathology",
                "image_1": _hf_image((5, 5, 5), "p.png"),
            }
        ],
    )
    _mmmu_file(  # not a Health & Medicine subject: ignored
        root / "Art" / "validation-00000-of-00001.parquet",
        [
            {
                "id": "validation_Art_1",
                "question": "q",
                "options": "['a', 'b']",
                "answer": "A",
                "image_1": _hf_image((9, 9, 9), "a.png"),
            }
        ],
    )
    _mmmu_file(
        root / "Clinical_Medicine" / "test-00000-of-00001.parquet",
        [
            {
                "id": "test_Clinical_Medicine_1",
                "question": "q <image 1>",
                "options": "['a', 'b']",
                "answer": "?",
                "image_1": _hf_image((9, 9, 9), "t.png"),
            }
        ],
    )
    cases = load_benchmark("mmmu-med", root)
    assert [c.case_id for c in cases] == [
        "mmmu-validation_Clinical_Medicine_1",
        "mmmu-validation_Clinical_Medicine_2",
        "mmmu-validation_Diagnostics_and_Laboratory_Medicine_1",
    ]
    two, open_q, stain = cases
    assert two.options == ("A) Tumour growth", "B) Infarct", "C) No change") and two.answer == "B"
    assert two.answer_text == "Infarct" and two.closed
    assert two.question == "Compare [image 1] with [image 2]: what changed?"
    assert [img.load().image.getpixel((0, 0)) for img in two.images] == [
        pytest.approx((10, 200, 10), abs=4),
        pytest.approx((200, 10, 10), abs=4),
    ]
    assert two.specialty == "Radiologist" and two.subset == "Clinical_Medicine"  # from the image type
    assert not open_q.closed and open_q.options == () and open_q.answer == "12"
    assert open_q.specialty == "Pathologist"  # microscopic images, before the subfield
    assert stain.specialty == "Pathologist"  # from the subfield
    assert stain.options[2] == "C) [image 2]"
    assert len(load_benchmark("mmmu-med", root, subset="Clinical_Medicine")) == 2
    with pytest.raises(BenchmarkError, match="no public answers"):
        load_benchmark("mmmu-med", root, split="test")
    with pytest.raises(BenchmarkError, match="not an MMMU Health & Medicine subject"):
        load_benchmark("mmmu-med", root, subset="Art")


# --- MedXpertQA-MM ------------------------------------------------------------------------------


def test_medxpertqa_mm(tmp_path: Path):
    root = tmp_path / "MedXpertQA"
    _write(root / "images" / "MM-0-a.jpeg", _image_bytes((100, 60, 40), "JPEG"))
    _write(root / "images" / "MM-1-a.png", _image_bytes((10, 60, 40)))
    _write(root / "images" / "MM-1-b.png", _image_bytes((10, 60, 140)))
    rows = [
        {
            "id": "MM-0",
            "question": "A 30-year-old with a pigmented lesion. What next?\n"
            "Answer Choices: (A) Excision (B) Reassure (C) Biopsy (D) Laser (E) Observe",
            "options": {"A": "Excision", "B": "Reassure", "C": "Biopsy", "D": "Laser", "E": "Observe"},
            "label": "C",
            "images": ["MM-0-a.jpeg"],
            "medical_task": "Treatment",
            "body_system": "Integumentary",
            "question_type": "Reasoning",
        },
        {
            "id": "MM-1",
            "question": "Which vessel is occluded?\nAnswer Choices: (A) LAD (B) RCA",
            "options": {"A": "LAD", "B": "RCA"},
            "label": "B",
            "images": ["MM-1-a.png", "MM-1-b.png"],
            "medical_task": "Diagnosis",
            "body_system": "Cardiovascular",
            "question_type": "Understanding",
        },
    ]
    _write(root / "MM" / "test.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    cases = load_benchmark("medxpertqa-mm", root)
    assert [c.case_id for c in cases] == ["medxpertqa-MM-0", "medxpertqa-MM-1"]
    first, second = cases
    assert first.question == "A 30-year-old with a pigmented lesion. What next?"
    assert first.options[2] == "C) Biopsy" and len(first.options) == 5 and first.answer == "C"
    assert first.specialty == "Dermatologist" and second.specialty is None  # no one specialty owns it
    assert len(second.images) == 2 and second.answer_text == "RCA"
    with pytest.raises(BenchmarkError, match=r"no MM/dev\.jsonl"):
        load_benchmark("medxpertqa-mm", root, split="dev")


# --- synthetic and errors -----------------------------------------------------------------------


def test_synthetic_benchmark():
    cases = load_benchmark("synthetic", n=6, seed=3)
    assert len(cases) == 6 and all(c.closed and len(c.options) == 4 for c in cases)
    assert cases[0].case_id == "syn-3-00000" and cases[0].answer in "ABCD"
    assert [c.case_id for c in load_benchmark("synthetic", n=6, seed=3, limit=2)] == [
        "syn-3-00000",
        "syn-3-00001",
    ]


def test_bad_requests_are_clear_errors(tmp_path: Path):
    with pytest.raises(BenchmarkError, match="unknown benchmark 'nope'"):
        load_benchmark("nope", tmp_path)
    with pytest.raises(BenchmarkError, match="needs --path"):
        load_benchmark("slake")
    with pytest.raises(BenchmarkError, match="is not a folder"):
        load_benchmark("slake", tmp_path / "missing")
    with pytest.raises(BenchmarkError, match=r"test\.json does not exist"):
        load_benchmark("slake", tmp_path)
    _write(tmp_path / "test.json", "{not json")
    with pytest.raises(BenchmarkError, match="not readable JSON"):
        load_benchmark("slake", tmp_path)
    with pytest.raises(BenchmarkError, match="QA_information"):
        load_benchmark("omnimedvqa", tmp_path)


def test_repeated_case_ids_get_stable_suffixes(omnimedvqa: Path):
    row = _omni_row("Dup", "Q_0", "Images/Derm/d1.jpg", "Dermoscopy", "nevus", ["nevus", "melanoma"])
    _write(omnimedvqa / "QA_information" / "Open-access" / "Dup.json", json.dumps([row, row, row]))
    ids = [c.case_id for c in load_benchmark("omnimedvqa", omnimedvqa, subset="Dup")]
    assert ids == ["omnimedvqa-Dup-Q_0", "omnimedvqa-Dup-Q_0#1", "omnimedvqa-Dup-Q_0#2"]
