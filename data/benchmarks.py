"""Loaders for the medical VQA benchmarks, reading local copies in their published layouts.

Nothing is downloaded: point a loader at the folder you have. Supported layouts:

==================  =================================================================================
``vqa-rad``         the OSF release (``VQA_RAD Dataset Public.json`` + ``VQA_RAD Image Folder/``;
                    test split = ``phrase_type`` ``test_freeform``/``test_para``), or the HF parquet
                    release (``data/{train,test}-*.parquet``: ``image``, ``question``, ``answer``)
``slake``           ``{train,validate,test}.json`` + ``imgs/<img_name>``; English (``q_lang`` en) by
                    default
``pathvqa``         HF parquet (``data/{train,validation,test}-*.parquet``: ``image``, ``question``,
                    ``answer``)
``omnimedvqa``      ``QA_information/{Open,Restricted}-access/<dataset>.json`` + ``Images/...``
                    (``image_path`` is relative to the root)
``mmmu-med``        MMMU's Health & Medicine subjects, HF parquet ``<Subject>/{dev,validation}-*.parquet``
                    (``options`` a list literal, ``<image k>`` placeholders, ``image_1``..``image_7``)
``medxpertqa-mm``   ``MM/{test,dev}.jsonl`` + ``images/``
``synthetic``       the synthetic clinic (:mod:`data.synthetic`), ``n`` cases for ``seed``
==================  =================================================================================

Every case is *closed* or *open*. Closed questions are scored by option match: multiple-choice
questions carry their options, and a yes/no question gets the options ``A) Yes`` / ``B) No``
(``A) 是`` / ``B) 否`` for a Chinese one). Answers are compared by :mod:`data.answers`. A
question the dataset marks closed whose answer is neither (``"left or right?"``) keeps no options
and is scored by exact (normalised) match. Open questions are scored separately (token F1/recall)
and never enter the accuracy. Where a dataset says which type a question is (VQA-RAD JSON, SLAKE),
its label is used; otherwise a yes/no answer makes a question closed.

Gold specialty (the triage label): from the modality where the dataset names one, through
:data:`data.specialties.MODALITY_SPECIALTY`; VQA-RAD and SLAKE are radiology sets (Radiologist),
PathVQA pathology (Pathologist); MMMU uses the image type, then the subfield, and MedXpertQA the
body system, through :func:`data.specialties.specialty_for_subject`. Cases no mapping covers get
``None``: they are left out of triage accuracy, not guessed.

Structural problems (missing files, a case whose image is not there, a gold answer that is none of
the options) raise :class:`BenchmarkError` naming the file and the case, before anything runs.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

from data.answers import has_cjk, normalize, yes_no_gold
from data.images import ImageLimits, LoadedImage, load_image
from data.specialties import specialty_for_modality, specialty_for_subject
from data.synthetic import iter_cases

log = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
YES_NO = ("A) Yes", "B) No")
YES_NO_ZH = ("A) 是", "B) 否")  # SLAKE's Chinese yes/no questions, answered in Chinese
MMMU_MEDICAL_SUBJECTS = (
    "Basic_Medical_Science",
    "Clinical_Medicine",
    "Diagnostics_and_Laboratory_Medicine",
    "Pharmacy",
    "Public_Health",
)
_MMMU_IMAGE_COLUMNS = tuple(f"image_{k}" for k in range(1, 8))
_MMMU_PLACEHOLDER = re.compile(r"<image (\d+)>")
_ANSWER_CHOICES = re.compile(r"\n\s*Answer Choices:.*\Z", re.S)


class BenchmarkError(ValueError):
    """The local copy is missing, incomplete or not in the published layout."""


@dataclass(frozen=True)
class CaseImage:
    """An image of a case: a file of the local copy, or bytes embedded in a parquet row."""

    name: str
    path: Path | None = None
    data: bytes | None = None

    def load(self, limits: ImageLimits | None = None) -> LoadedImage:
        """Validate and normalise it (raises :class:`data.images.ImageError`)."""
        source = self.data if self.data is not None else self.path
        assert source is not None, "a CaseImage has a path or data"
        return load_image(source, name=self.name, limits=limits or ImageLimits())


@dataclass(frozen=True)
class BenchmarkCase:
    """One question of a benchmark with its gold labels."""

    case_id: str
    benchmark: str
    question: str
    images: tuple[CaseImage, ...]
    options: tuple[str, ...]  # "A) text"; empty for open questions (and closed free-form ones)
    answer: str  # the gold option letter when there are options, else the gold text
    answer_text: str  # the gold answer as text
    closed: bool
    specialty: str | None
    modality: str | None = None
    subset: str | None = None  # the group a report breaks results down by (organ, subject, ...)
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "closed" if self.closed else "open"


@dataclass(frozen=True)
class LoadOptions:
    """What to read: the split, a subset (dataset/subject), the question language."""

    split: str | None = None
    subset: str | None = None
    language: str = "en"


Loader = Callable[[Path, LoadOptions], Iterator[BenchmarkCase]]


# --- helpers ------------------------------------------------------------------------------------


def _lettered(options: Sequence[str]) -> tuple[str, ...]:
    if len(options) > len(LETTERS):
        raise BenchmarkError(f"{len(options)} options; at most {len(LETTERS)} are supported")
    return tuple(f"{LETTERS[i]}) {str(o).strip()}" for i, o in enumerate(options))


def _short_answer_case(
    *,
    case_id: str,
    benchmark: str,
    question: str,
    answer: Any,
    declared: str | None,
    images: tuple[CaseImage, ...],
    specialty: str | None,
    modality: str | None = None,
    subset: str | None = None,
    meta: Mapping[str, Any] | None = None,
) -> BenchmarkCase:
    """A VQA-RAD/SLAKE/PathVQA style case (short free-text answer) with the closed/open rule."""
    text = str(answer).strip()
    declared = (declared or "").strip().upper()
    yes_no = yes_no_gold(text)
    closed = declared.startswith("CLOSE") if declared.startswith(("CLOSE", "OPEN")) else yes_no is not None
    options = (YES_NO_ZH if has_cjk(text) else YES_NO) if closed and yes_no else ()
    gold = ("A" if yes_no == "yes" else "B") if options else text
    return BenchmarkCase(
        case_id=case_id,
        benchmark=benchmark,
        question=str(question).strip(),
        images=images,
        options=options,
        answer=gold,
        answer_text=text,
        closed=closed,
        specialty=specialty,
        modality=modality,
        subset=subset,
        meta=dict(meta or {}, declared_type=declared or None),
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchmarkError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchmarkError(f"{path} is not readable JSON ({exc})") from None


def _records(path: Path) -> list[dict[str, Any]]:
    data = _read_json(path)
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise BenchmarkError(f"{path} should hold a JSON list of objects")
    return data


def _field(row: Mapping[str, Any], key: str, where: str) -> Any:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BenchmarkError(f"{where}: the field {key!r} is missing or empty")
    return value


def _image_file(root: Path, relative: str, where: str) -> CaseImage:
    path = root / relative
    if not path.is_file():
        raise BenchmarkError(f"{where}: image {relative!r} is not in {root}")
    return CaseImage(name=relative, path=path)


def _hf_image(value: Any, base: Path, where: str) -> CaseImage:
    """A cell of a Hugging Face ``Image`` column: ``{"bytes": ..., "path": ...}``."""
    if not isinstance(value, Mapping):
        raise BenchmarkError(f"{where}: not a Hugging Face Image cell ({type(value).__name__})")
    name = str(value.get("path") or where)
    if value.get("bytes"):
        return CaseImage(name=name, data=bytes(value["bytes"]))
    if value.get("path"):
        return _image_file(base, str(value["path"]), where)
    raise BenchmarkError(f"{where}: the image cell has neither bytes nor a path")


def _parquet_files(root: Path, split: str) -> list[Path]:
    """The shards of ``split`` anywhere below ``root`` (``test-00000-of-00002-….parquet``...)."""
    return sorted(p for p in root.rglob(f"{split}-*.parquet") if p.is_file())


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # an optional dependency: only parquet releases need it
        raise BenchmarkError("reading parquet needs pyarrow: pip install 'mmedagent-rl[eval]'") from exc
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=64):
            yield from batch.to_pylist()
    except OSError as exc:  # pyarrow reports corrupt files as ArrowInvalid, an OSError subclass
        raise BenchmarkError(f"{path} is not a readable parquet file ({exc})") from None


def _split(opts: LoadOptions, default: str, allowed: Mapping[str, str]) -> str:
    split = (opts.split or default).lower()
    if split not in allowed:
        raise BenchmarkError(f"unknown split {opts.split!r}; choose from {', '.join(sorted(set(allowed)))}")
    return allowed[split]


def _need_dir(root: Path) -> Path:
    if not root.is_dir():
        raise BenchmarkError(f"{root} is not a folder")
    return root


# --- VQA-RAD ------------------------------------------------------------------------------------

_VQA_RAD_JSON = "VQA_RAD Dataset Public.json"


def load_vqa_rad(root: Path, opts: LoadOptions) -> Iterator[BenchmarkCase]:
    """VQA-RAD: the OSF JSON release when its JSON file is there, else the HF parquet release."""
    _need_dir(root)
    json_files = [root / _VQA_RAD_JSON] if (root / _VQA_RAD_JSON).is_file() else []
    if json_files:
        yield from _vqa_rad_json(root, json_files[0], opts)
    else:
        yield from _hf_short_answer(root, opts, "vqa-rad", "radiology", ("train", "test"))


def _vqa_rad_json(root: Path, path: Path, opts: LoadOptions) -> Iterator[BenchmarkCase]:
    split = _split(opts, "test", {"test": "test", "train": "train", "all": "all"})
    folder = root / "VQA_RAD Image Folder"
    images = folder if folder.is_dir() else root
    for i, row in enumerate(_records(path)):
        where = f"{path.name} item {i} (qid {row.get('qid')})"
        is_test = str(row.get("phrase_type", "")).startswith("test")
        if split != "all" and is_test != (split == "test"):
            continue
        organ = str(row.get("image_organ") or "").strip() or None
        yield _short_answer_case(
            case_id=f"vqa-rad-{row.get('qid', i)}",
            benchmark="vqa-rad",
            question=_field(row, "question", where),
            answer=_field(row, "answer", where),
            declared=row.get("answer_type"),
            images=(_image_file(images, str(_field(row, "image_name", where)), where),),
            specialty=specialty_for_modality("radiology"),
            modality="radiology",
            subset=organ,
            meta={"question_type": row.get("question_type"), "organ": organ},
        )


def _hf_short_answer(
    root: Path, opts: LoadOptions, name: str, modality: str, splits: Sequence[str]
) -> Iterator[BenchmarkCase]:
    """An HF parquet release with ``image``/``question``/``answer`` columns (VQA-RAD, PathVQA)."""
    allowed = {s: s for s in splits}
    if "validation" in splits:
        allowed["val"] = "validation"
    split = _split(opts, "test", allowed)
    files = _parquet_files(root, split)
    if not files:
        raise BenchmarkError(f"no {split}-*.parquet under {root} (expected the Hugging Face release layout)")
    for path in files:
        for i, row in enumerate(_parquet_rows(path)):
            where = f"{path.name} row {i}"
            yield _short_answer_case(
                case_id=f"{name}-{split}-{path.name.split('-')[1]}-{i:06d}",
                benchmark=name,
                question=_field(row, "question", where),
                answer=_field(row, "answer", where),
                declared=None,
                images=(_hf_image(_field(row, "image", where), path.parent, where),),
                specialty=specialty_for_modality(modality),
                modality=modality,
            )


# --- SLAKE --------------------------------------------------------------------------------------


def load_slake(root: Path, opts: LoadOptions) -> Iterator[BenchmarkCase]:
    """SLAKE 1.0: ``<split>.json`` and ``imgs/``; ``language`` en (default), zh or all."""
    _need_dir(root)
    split = _split(
        opts,
        "test",
        {
            "test": "test",
            "train": "train",
            "validate": "validate",
            "validation": "validate",
            "val": "validate",
        },
    )
    if opts.language not in ("en", "zh", "all"):
        raise BenchmarkError(f"SLAKE language must be en, zh or all, not {opts.language!r}")
    path = root / f"{split}.json"
    imgs = root / "imgs"
    for i, row in enumerate(_records(path)):
        if opts.language != "all" and row.get("q_lang") != opts.language:
            continue
        where = f"{path.name} item {i} (qid {row.get('qid')})"
        modality = str(row.get("modality") or "").strip() or None
        yield _short_answer_case(
            case_id=f"slake-{row.get('qid', i)}",
            benchmark="slake",
            question=_field(row, "question", where),
            answer=_field(row, "answer", where),
            declared=row.get("answer_type"),
            images=(_image_file(imgs, str(_field(row, "img_name", where)), where),),
            # Every SLAKE image is CT, MRI or X-ray: a radiologist's, whatever the field says.
            specialty=specialty_for_modality(modality or "radiology") or "Radiologist",
            modality=modality,
            subset=modality,
            meta={k: row.get(k) for k in ("location", "content_type", "q_lang")},
        )


# --- PathVQA ------------------------------------------------------------------------------------


def load_pathvqa(root: Path, opts: LoadOptions) -> Iterator[BenchmarkCase]:
    """PathVQA, HF parquet release; yes/no questions are its closed set."""
    _need_dir(root)
    yield from _hf_short_answer(root, opts, "pathvqa", "pathology", ("train", "validation", "test"))


# --- OmniMedVQA ---------------------------------------------------------------------------------


def _modality_specialty(modality: str) -> str | None:
    """OmniMedVQA spells modalities like ``CT(Computed Tomography)`` or ``OCT (Optical Coherence
    Tomography`` (sic): try the whole name, the part before the bracket, then the part inside."""
    text = modality.strip().lower()
    head, _, inner = text.partition("(")
    for candidate in (text, head, inner.rstrip(")").replace("mag-netic", "magnetic")):
        if candidate.strip() and (found := specialty_for_modality(candidate)):
            return found
    return None


def load_omnimedvqa(root: Path, opts: LoadOptions) -> Iterator[BenchmarkCase]:
    """OmniMedVQA: every ``QA_information/*/<dataset>.json`` (``subset``: an access folder such as
    ``Open-access``, or a dataset name); options ``option_A``..``option_D``, gold ``gt_answer`` text."""
    qa = _need_dir(root) / "QA_information"
    files = sorted(qa.glob("*/*.json")) if qa.is_dir() else []
    if not files:
        raise BenchmarkError(f"no QA_information/<access>/<dataset>.json under {root}")
    if opts.subset:
        files = [p for p in files if opts.subset in (p.parent.name, p.stem)]
        if not files:
            raise BenchmarkError(f"no OmniMedVQA access folder or dataset named {opts.subset!r}")
    for path in files:
        for i, row in enumerate(_records(path)):
            where = f"{path.parent.name}/{path.name} item {i} (question_id {row.get('question_id')})"
            options = [
                str(row[k]).strip()
                for k in (f"option_{c}" for c in "ABCDEFGH")
                if row.get(k) is not None and str(row[k]).strip()
            ]
            if len(options) < 2:
                raise BenchmarkError(f"{where}: fewer than two options")
            gold = str(_field(row, "gt_answer", where)).strip()
            letter = _letter_of(gold, options, where)
            # One file of the release names the field "modality" instead of "modality_type".
            modality = str(row.get("modality_type") or row.get("modality") or "").strip() or None
            yield BenchmarkCase(
                case_id=f"omnimedvqa-{path.stem}-{row.get('question_id', i)}",
                benchmark="omnimedvqa",
                question=str(_field(row, "question", where)).strip(),
                images=(_image_file(root, str(_field(row, "image_path", where)), where),),
                options=_lettered(options),
                answer=letter,
                answer_text=gold,
                closed=True,
                specialty=_modality_specialty(modality) if modality else None,
                modality=modality,
                subset=modality,
                meta={
                    "dataset": row.get("dataset") or path.stem,
                    "question_type": row.get("question_type"),
                    "access": path.parent.name,
                },
            )


def _letter_of(gold: str, options: Sequence[str], where: str) -> str:
    exact = [i for i, o in enumerate(options) if o == gold]
    loose = [i for i, o in enumerate(options) if normalize(o) == normalize(gold)]
    hits = exact or loose
    if len(hits) != 1:
        raise BenchmarkError(f"{where}: the gold answer {gold!r} is not exactly one of the options {options}")
    return LETTERS[hits[0]]


# --- MMMU (Health & Medicine) -------------------------------------------------------------------


def _literal_list(value: Any, where: str) -> list[str]:
    """MMMU stores lists as Python literals in strings: ``"['A drug', 'B drug']"``."""
    if isinstance(value, list):
        return [str(v) for v in value]
    try:
        parsed = ast.literal_eval(str(value)) if value not in (None, "") else []
    except (ValueError, SyntaxError):
        raise BenchmarkError(f"{where}: {value!r} is not a list literal") from None
    if not isinstance(parsed, list):
        raise BenchmarkError(f"{where}: {value!r} is not a list")
    return [str(v) for v in parsed]


def load_mmmu_med(root: Path, opts: LoadOptions) -> Iterator[BenchmarkCase]:
    """MMMU's Health & Medicine subjects (``subset``: one subject, e.g. ``Clinical_Medicine``)."""
    _need_dir(root)
    split = _split(
        opts, "validation", {"validation": "validation", "val": "validation", "dev": "dev", "test": "test"}
    )
    subjects = MMMU_MEDICAL_SUBJECTS
    if opts.subset:
        if opts.subset not in subjects:
            raise BenchmarkError(f"{opts.subset!r} is not an MMMU Health & Medicine subject: {subjects}")
        subjects = (opts.subset,)
    files = [p for p in _parquet_files(root, split) if p.parent.name in subjects]
    if not files:
        raise BenchmarkError(f"no <Subject>/{split}-*.parquet for {', '.join(subjects)} under {root}")
    for path in files:
        subject = path.parent.name
        for i, row in enumerate(_parquet_rows(path)):
            where = f"{subject}/{path.name} row {i} (id {row.get('id')})"
            yield _mmmu_case(
                row, f"mmmu-{row.get('id') or f'{split}_{subject}_{i}'}", subject, path.parent, where
            )


def _mmmu_case(row: Mapping[str, Any], case_id: str, subject: str, base: Path, where: str) -> BenchmarkCase:
    images = tuple(
        _hf_image(row[col], base, f"{where} {col}") for col in _MMMU_IMAGE_COLUMNS if row.get(col) is not None
    )
    if not images:
        raise BenchmarkError(f"{where}: no image in image_1..image_7")
    answer = str(_field(row, "answer", where)).strip()
    if answer == "?":
        raise BenchmarkError(f"{where}: this split has no public answers; use validation or dev")
    options = _literal_list(row.get("options"), f"{where} options")
    closed = bool(options) and row.get("question_type") != "open"
    if closed and answer not in LETTERS[: len(options)]:
        raise BenchmarkError(f"{where}: the answer {answer!r} names none of the {len(options)} options")
    img_types = _literal_list(row.get("img_type"), f"{where} img_type")
    specialty = next((s for t in img_types if (s := specialty_for_modality(t))), None)
    specialty = (
        specialty
        or specialty_for_subject(str(row.get("subfield") or ""))
        or specialty_for_subject(subject.replace("_", " "))
    )
    # Images come first in the prompt, in order; the placeholders keep telling which is which.
    question = _MMMU_PLACEHOLDER.sub(r"[image \1]", str(_field(row, "question", where)).strip())
    return BenchmarkCase(
        case_id=case_id,
        benchmark="mmmu-med",
        question=question,
        images=images,
        options=_lettered([_MMMU_PLACEHOLDER.sub(r"[image \1]", o) for o in options]) if closed else (),
        answer=answer,
        answer_text=options[LETTERS.index(answer)] if closed else answer,
        closed=closed,
        specialty=specialty,
        modality=", ".join(img_types) or None,
        subset=subject,
        meta={"subfield": row.get("subfield"), "topic_difficulty": row.get("topic_difficulty")},
    )


# --- MedXpertQA-MM ------------------------------------------------------------------------------


def load_medxpertqa_mm(root: Path, opts: LoadOptions) -> Iterator[BenchmarkCase]:
    """MedXpertQA's multimodal subset: ``MM/<split>.jsonl`` with images in ``images/``."""
    _need_dir(root)
    split = _split(opts, "test", {"test": "test", "dev": "dev"})
    path = next((p for p in (root / "MM" / f"{split}.jsonl", root / f"{split}.jsonl") if p.is_file()), None)
    if path is None:
        raise BenchmarkError(f"no MM/{split}.jsonl under {root}")
    images = next((d for d in (root / "images", root / "MM" / "images") if d.is_dir()), root / "images")
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path.name} line {line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BenchmarkError(f"{where} is not JSON ({exc})") from None
            where += f" (id {row.get('id')})"
            raw = _field(row, "options", where)
            if not isinstance(raw, Mapping):
                raise BenchmarkError(f"{where}: options should map letters to text")
            letters = sorted(raw)
            if letters != list(LETTERS[: len(letters)]):
                raise BenchmarkError(f"{where}: option letters {letters} are not A, B, C... in order")
            label = str(_field(row, "label", where)).strip()
            if label not in letters:
                raise BenchmarkError(f"{where}: the label {label!r} names none of the options")
            body = str(row.get("body_system") or "").strip() or None
            yield BenchmarkCase(
                case_id=f"medxpertqa-{row.get('id', line_no)}",
                benchmark="medxpertqa-mm",
                # The options are listed again by the prompt; the copy in the question would double them.
                question=_ANSWER_CHOICES.sub("", str(_field(row, "question", where))).strip(),
                images=tuple(_image_file(images, str(n), where) for n in _field(row, "images", where)),
                options=_lettered([raw[k] for k in letters]),
                answer=label,
                answer_text=str(raw[label]),
                closed=True,
                specialty=specialty_for_subject(body or ""),
                subset=body,
                meta={"medical_task": row.get("medical_task"), "question_type": row.get("question_type")},
            )


# --- the synthetic clinic -----------------------------------------------------------------------


def synthetic_cases(n: int, seed: int = 0) -> Iterator[BenchmarkCase]:
    """The first ``n`` cases of the synthetic clinic for ``seed`` (all closed, 4 options)."""
    for case in iter_cases(n, seed=seed):
        yield BenchmarkCase(
            case_id=case.case_id,
            benchmark="synthetic",
            question=case.question,
            images=tuple(CaseImage(f"{case.case_id}-{i}.png", data=b) for i, b in enumerate(case.images)),
            options=case.options,
            answer=case.answer,
            answer_text=case.answer_text,
            closed=True,
            specialty=case.specialty,
            modality=case.modality,
            subset=case.modality,
            meta={"finding": case.finding},
        )


# --- registry -----------------------------------------------------------------------------------

BENCHMARKS: dict[str, Loader] = {
    "vqa-rad": load_vqa_rad,
    "slake": load_slake,
    "pathvqa": load_pathvqa,
    "omnimedvqa": load_omnimedvqa,
    "mmmu-med": load_mmmu_med,
    "medxpertqa-mm": load_medxpertqa_mm,
}
BENCHMARK_NAMES: tuple[str, ...] = (*BENCHMARKS, "synthetic")


def load_benchmark(
    name: str,
    path: str | Path | None = None,
    *,
    split: str | None = None,
    subset: str | None = None,
    language: str = "en",
    limit: int | None = None,
    n: int = 200,
    seed: int = 0,
) -> list[BenchmarkCase]:
    """The cases of benchmark ``name`` (the first ``limit`` in file order), ids made unique.

    ``synthetic`` needs no ``path`` (``n`` cases for ``seed``); every other benchmark needs the
    folder of its local copy.
    """
    if limit is not None and limit < 0:
        raise BenchmarkError(f"limit must be >= 0, got {limit}")
    if name == "synthetic":
        if n < 0 or seed < 0:
            raise BenchmarkError(f"n and seed must be >= 0, got n={n}, seed={seed}")
        cases = synthetic_cases(n if limit is None else min(n, limit), seed)
    else:
        loader = BENCHMARKS.get(name)
        if loader is None:
            raise BenchmarkError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARK_NAMES)}")
        if path is None:
            raise BenchmarkError(f"{name} needs --path: the folder of its local copy")
        cases = loader(Path(path).expanduser(), LoadOptions(split, subset, language))
    return _unique_ids(list(islice(cases, limit)))


def _unique_ids(cases: list[BenchmarkCase]) -> list[BenchmarkCase]:
    """Resuming matches cases by id, so a repeated id (a quirk of a release) gets a stable suffix."""
    seen: dict[str, int] = {}
    out = []
    for case in cases:
        count = seen.get(case.case_id, 0)
        seen[case.case_id] = count + 1
        if count:
            log.warning("case id %s repeats; renaming the repeat %s#%d", case.case_id, case.case_id, count)
            case = replace(case, case_id=f"{case.case_id}#{count}")
        out.append(case)
    return out
