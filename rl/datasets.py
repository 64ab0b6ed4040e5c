"""GRPO rows per role: from the synthetic clinic, from the trajectory store, or from an export.

A row is what TRL's GRPOTrainer (and SFTTrainer) reads: a conversational ``prompt`` rebuilt with
graph.prompts (so training sees exactly what serving sees), the ``images`` its image blocks refer
to (their stored bytes: :func:`to_dataset` decodes them only when the trainer reads a row, the
graph's normalisation applied, so preparing many rows holds no pixels), and the columns
rl/rewards.py reads (``specialty`` for triage; ``answer`` and ``options`` for the attending). Every
row also carries ``difficulty`` (easy / medium / hard by the fraction of specialists right against
the row's answer, gold or a clinician's, data/difficulty.py; None when unknown) and ``case_id``.

Stored steps are read through data/export.py's rows (the same query as ``mmedagent export``), so
``--from-db`` and ``--data DIR`` see the same rows. Prompts are rebuilt from the run's question,
options and logged opinions; follow-up history is not in an export row and is not rebuilt.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data.answers import option_letter, option_text
from data.difficulty import Level, classify
from data.images import image_from_bytes
from data.schema import TRAINABLE_ROLES
from data.specialties import SPECIALTIES
from data.synthetic import SyntheticCase, iter_cases, make_case
from graph import prompts
from rl.rewards import answer_accuracy_value
from rl.simulated import (
    CLINICS,
    Clinic,
    KnownCase,
    image_digest,
    majority_answer,
    plan_case,
    planned_opinions,
)

if TYPE_CHECKING:
    from PIL import Image

    from data.store import TrajectoryStore

log = logging.getLogger(__name__)

Row = dict[str, Any]
# Image side of the synthetic learning tasks. At 56 px an image is 4 tokens among ~190 prompt tokens
# and the tiny model barely sees it (SFT on gold labels: 0.37 held-out after 100 steps); at 112 px
# it is 16 tokens and the same SFT reaches 1.0.
LEARNING_IMAGE_SIZE = 112
# The attending's format warm-up draws this many cases of its own (iter_attending_warmup_rows).
ATTENDING_WARMUP_CASES = 2400
ATTENDING_WARMUP_SEED = 20_000


class DatasetError(ValueError):
    """The rows cannot be built (unknown role, no usable rows, missing pixels...)."""


def triage_row(
    question: str,
    options: Sequence[str],
    images: Sequence[bytes],
    specialty: str,
    *,
    case_id: str = "",
    difficulty: str | None = None,
) -> Row:
    """One triage row: the graph's triage prompt; the gold specialty is the reward label."""
    return {
        "prompt": prompts.triage_messages(question, options, len(images)),
        "images": list(images),
        "specialty": specialty,
        "case_id": case_id,
        "difficulty": difficulty,
    }


def attending_row(
    question: str,
    options: Sequence[str],
    images: Sequence[bytes],
    opinions: Sequence[tuple[str, str]],
    answer: str,
    *,
    case_id: str = "",
    difficulty: str | None = None,
) -> Row:
    """One attending row: the graph's attending prompt with the logged opinions verbatim."""
    return {
        "prompt": prompts.attending_messages(question, options, len(images), opinions),
        "images": list(images),
        "answer": answer,
        "options": list(options),
        "case_id": case_id,
        "difficulty": difficulty,
    }


# --- the synthetic clinic ----------------------------------------------------------------------


def case_images(case: SyntheticCase) -> list[Image.Image]:
    """A synthetic case's images as the models see them (the graph's normalisation)."""
    return [image_from_bytes(b) for b in case.images]


def known_case(case: SyntheticCase) -> KnownCase:
    """What the simulated specialists know about a synthetic case."""
    return KnownCase(image_digest(case_images(case)[0]), tuple(case.options), case.answer)


def synthetic_triage_rows(n: int, *, seed: int = 0, size: int = LEARNING_IMAGE_SIZE) -> list[Row]:
    """``n`` triage rows from the synthetic clinic (:func:`iter_synthetic_triage_rows`)."""
    return list(iter_synthetic_triage_rows(n, seed=seed, size=size))


def iter_synthetic_triage_rows(n: int, *, seed: int = 0, size: int = LEARNING_IMAGE_SIZE) -> Iterator[Row]:
    """``n`` triage rows from the synthetic clinic (the image's colour carries the specialty), one
    at a time.

    Synthetic rows also carry the case's ``modality`` (what the image shows, for the format
    warm-up's ``<think>``, rl/sft.py); rows from the store do not know it."""
    for c in iter_cases(n, seed=seed, size=size):
        row = triage_row(c.question, c.options, c.images, c.specialty, case_id=c.case_id)
        yield {**row, "modality": c.modality}


def synthetic_attending_rows(n: int, **options: Any) -> list[Row]:
    """``n`` attending rows (:func:`iter_synthetic_attending_rows`, with its options)."""
    return list(iter_synthetic_attending_rows(n, **options))


def iter_synthetic_attending_rows(
    n: int,
    *,
    seed: int = 0,
    size: int = LEARNING_IMAGE_SIZE,
    clinic: Clinic | str = "balanced",
    mix: Mapping[str, float] | None = None,
    opinions: bool = True,
) -> Iterator[Row]:
    """``n`` attending rows whose specialists' opinions are simulated with a known ``s``.

    ``clinic`` (a :class:`rl.simulated.Clinic` or a name in ``CLINICS``) sets the share of easy /
    medium / hard cases (``mix`` overrides it), the panel's size, where images are unclear and how
    the specialists write; rl/simulated.py's ``plan_case`` draws each case's number of right
    specialists and its image clarity: on clear images the finding's mark gives the answer, so the
    attending can be right where every specialist is wrong; unclear images occur only where the
    opinions' majority is right. The consulted specialists are the gold specialty first, then
    others, as a perfect triage would choose them. ``opinions=False`` leaves them out of the prompt
    (the attending alone, ``single`` mode). Rows also carry ``clarity``, ``seen`` (what the image
    visibly shows: the modality and the finding or "unclear"), ``shown`` (the finding's option
    text on a clear image, else None) and ``said`` (the option text the specialists' majority
    names; None without opinions), for the format warm-up (rl/sft.py).
    """
    if isinstance(clinic, str) and clinic not in CLINICS:
        raise DatasetError(f"unknown clinic {clinic!r}: one of {', '.join(CLINICS)}")
    setup = CLINICS[clinic] if isinstance(clinic, str) else clinic
    if mix is not None:
        try:
            setup = setup.with_mix(dict(mix))
        except ValueError as e:
            raise DatasetError(str(e)) from e
    n_specialists = setup.n_specialists
    rng = random.Random(f"attending|{seed}")
    for index in range(n):
        plan = plan_case(rng, setup)
        case = make_case(index, seed=seed, size=size, clarity=plan.clarity)
        others = [s for s in SPECIALTIES if s != case.specialty]
        consulted = [case.specialty, *rng.sample(others, n_specialists - 1)]
        known = known_case(case)
        planned = planned_opinions(known, plan.n_right, consulted, seed=seed, wording=setup.wording)
        row = attending_row(
            case.question,
            case.options,
            case.images,
            planned if opinions else [],
            case.answer,
            case_id=case.case_id,
            difficulty=classify(plan.n_right / n_specialists),
        )
        said = majority_answer([text for _, text in planned], case.options) if opinions else None
        yield {
            **row,
            "modality": case.modality,
            "clarity": case.clarity,
            "seen": case.seen,
            "shown": case.answer_text if case.clarity == "clear" else None,
            "said": option_text(next(o for o in case.options if option_letter(o) == said)) if said else None,
        }


def iter_synthetic_specialist_rows(
    n: int, *, seed: int = 0, size: int = LEARNING_IMAGE_SIZE
) -> Iterator[Row]:
    """``n`` rows of the graph's specialist prompt on synthetic-clinic cases, each for a specialty
    drawn at random (a triage's picks are not always right), with the options, the gold answer and
    what the image shows (``modality``, ``seen``): for a format warm-up of every role the graph runs
    (app/learning_loop.py). Specialists are not trained: no reward reads these rows."""
    rng = random.Random(f"specialist|{seed}")
    for c in iter_cases(n, seed=seed, size=size):
        specialty = rng.choice(SPECIALTIES)
        yield {
            "prompt": prompts.specialist_messages(specialty, c.question, c.options, len(c.images)),
            "images": list(c.images),
            "options": list(c.options),
            "answer": c.answer,
            "case_id": c.case_id,
            "difficulty": None,
            "modality": c.modality,
            "seen": c.seen,
        }


def iter_attending_warmup_rows(
    seed: int = 0, n: int = ATTENDING_WARMUP_CASES, clinic: Clinic | str = "balanced"
) -> Iterator[Row]:
    """The synthetic ``clinic``'s cases for the attending's format warm-up (rl/sft.py): its own
    draw (seed ``ATTENDING_WARMUP_SEED + seed``), apart from the training rows (``seed``) and the
    held-out ones that bench/learning.py and the tests draw (``10_000 + seed``).

    The warm-up stands in for what a pretrained VLM brings: reading the image and the opinions.
    On the 384 training rows, cycled 25 times in 600 steps, the tiny model partly learned those
    rows by heart instead (seed 0, held-out: the think named the image's finding right on 0.883 of
    clear images and the unclear cases' majority on 0.757); on 2,400 cases of its own, 0.981 and
    1.000."""
    return iter_synthetic_attending_rows(n, seed=ATTENDING_WARMUP_SEED + seed, clinic=clinic)


# --- stored trajectories -----------------------------------------------------------------------


def rows_from_export(records: Iterable[Mapping[str, Any]], role: str) -> Iterator[Row]:
    """Rows for ``role`` from exported step records (data/export.py's layout).

    Records without a gold label or without pixels are skipped (logged): they cannot be rewarded
    or shown to the model.
    """
    _check_role(role)
    skipped = 0
    for rec in records:
        images = [_image_bytes(img) for img in rec.get("images") or []]
        gold = rec.get("specialty") if role == "triage" else rec.get("answer")
        if gold is None or not images or any(img is None for img in images):
            skipped += 1
            continue
        common = {
            "case_id": rec.get("case_id") or rec.get("run_id") or "",
            "difficulty": rec.get("difficulty"),
        }
        if role == "triage":
            yield triage_row(rec["question"], rec.get("options") or [], images, gold, **common)
        else:
            opinions = [(o["specialty"], o["completion"]) for o in rec.get("opinions") or []]
            yield attending_row(rec["question"], rec.get("options") or [], images, opinions, gold, **common)
    if skipped:
        log.warning("skipped %d %s records without a gold label or image pixels", skipped, role)


REWARD_SOURCES = ("gold", "clinician", "both")


def rows_from_store(
    store: TrajectoryStore, role: str, *, since: Any = None, reward_source: str = "gold"
) -> list[Row]:
    """Rows for ``role`` from every finished, labelled run in the store (:func:`iter_rows_from_store`)."""
    return list(iter_rows_from_store(store, role, since=since, reward_source=reward_source))


def iter_rows_from_store(
    store: TrajectoryStore, role: str, *, since: Any = None, reward_source: str = "gold"
) -> Iterator[Row]:
    """Rows for ``role`` from every finished, labelled run in the store, one at a time, in case
    order (data/export.py ``iter_batches``).

    ``reward_source``: ``gold`` (the run's gold label), ``clinician`` (the answer by the latest
    clinician verdict on the run) or ``both`` (gold, else the clinician's). Clinicians judge the
    final answer, so their verdicts label the attending only. A row's difficulty is its specialists'
    against the answer it is labelled with: the stored gold scores, else the logged opinions scored
    against the clinician's answer (:func:`opinions_difficulty`).
    """
    from data.export import ExportFilter, iter_batches

    _check_role(role)
    if reward_source not in REWARD_SOURCES:
        raise DatasetError(f"reward source must be one of {', '.join(REWARD_SOURCES)}, not {reward_source!r}")
    if reward_source != "gold" and role != "attending":
        raise DatasetError("clinician verdicts judge the final answer: they label the attending only")
    flt = ExportFilter(role=role, since=since, status="ok", with_gold=reward_source == "gold")
    # Case order: the same stored runs train the same way, however concurrent writers stored them.
    records: Iterable[dict[str, Any]] = (r for batch in iter_batches(store, flt, by_case=True) for r in batch)
    if reward_source != "gold":
        records = _clinician_labelled(records, store.clinician_answers(), keep_gold=reward_source == "both")
    yield from rows_from_export(records, role)


def _clinician_labelled(
    records: Iterable[dict[str, Any]], clinician: Mapping[str, str], *, keep_gold: bool
) -> Iterator[dict[str, Any]]:
    """Export records labelled by the clinicians' answers (``keep_gold``: only those without a gold
    answer), each with the difficulty its logged opinions have against that answer."""
    for rec in records:
        if keep_gold and rec["answer"]:
            yield rec
            continue
        answer = clinician.get(rec["run_id"])
        difficulty = opinions_difficulty(rec["opinions"], answer, rec["options"]) if answer else None
        yield {**rec, "answer": answer, "difficulty": difficulty}


def opinions_difficulty(
    opinions: Sequence[Mapping[str, Any]], answer: str, options: Sequence[str]
) -> Level | None:
    """data/difficulty.py's level of a run whose right answer is ``answer``: its specialists'
    opinions (export layout) scored by the gold accuracy reward's own function; None without any."""
    if not opinions:
        return None
    right = sum(answer_accuracy_value(o["completion"], answer, options) for o in opinions)
    return classify(right / len(opinions))


def iter_rows_from_dir(path: str | Path, role: str) -> Iterator[Row]:
    """Rows for ``role`` from a ``mmedagent export`` folder (parquet, hf or jsonl), one at a time."""
    _check_role(role)
    root = Path(path)
    records: Iterable[Mapping[str, Any]]
    if (root / f"{role}.parquet").is_file():
        from datasets import load_dataset

        records = _undecoded(load_dataset("parquet", data_files=str(root / f"{role}.parquet"), split="train"))
    elif (root / role).is_dir():
        from datasets import load_dataset

        records = _undecoded(load_dataset(str(root), role, split="train"))
    elif (root / f"{role}.jsonl").is_file():
        records = _jsonl_records(root, root / f"{role}.jsonl")
    else:
        raise DatasetError(f"{root} holds no {role} export ({role}.parquet, {role}/ or {role}.jsonl)")
    yield from rows_from_export(records, role)


def _jsonl_records(root: Path, path: Path) -> Iterator[dict[str, Any]]:
    import json

    with path.open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            rec["images"] = [None if p is None else (root / p).read_bytes() for p in rec.get("images") or []]
            yield rec


def _undecoded(dataset: Any) -> Any:
    """An export dataset whose images stay bytes (decoded later, by :func:`to_dataset`)."""
    from datasets import Image as ImageFeature
    from datasets import List

    return (
        dataset.cast_column("images", List(ImageFeature(decode=False)))
        if "images" in dataset.features
        else dataset
    )


def _image_bytes(image: Any) -> bytes | None:
    """An exported image entry (HF ``{"bytes": …}`` dict, raw bytes or a PIL image) as bytes."""
    from PIL import Image

    from data.images import encode_png

    if image is None:
        return None
    if isinstance(image, Image.Image):
        return encode_png(image.convert("RGB"))
    data = image.get("bytes") if isinstance(image, Mapping) else image
    return None if data is None else bytes(data)


def row_images(row: Row) -> list[Image.Image]:
    """A row's images as the models see them (the graph's normalisation of the stored bytes)."""
    return [image_from_bytes(b) for b in row["images"]]


def _check_role(role: str) -> None:
    if role not in TRAINABLE_ROLES:
        raise DatasetError(f"role must be one of {', '.join(TRAINABLE_ROLES)}, not {role!r}")


def _decode_images(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return {**batch, "images": [[image_from_bytes(b) for b in imgs] for imgs in batch["images"]]}


def as_table(rows: Iterable[Row] | Any) -> Any:
    """``rows`` as a memory-mapped table: a table (:func:`write_rows`, or a selection of one) as it
    is, any other iterable written by :func:`write_rows`."""
    from datasets import Dataset

    return rows if isinstance(rows, Dataset) else write_rows(rows)


def write_rows(rows: Iterable[Row], *, batch: int = 512, folder: Path | None = None) -> Any:
    """``rows`` (any iterable: a generator keeps them out of memory) as a memory-mapped table.

    The rows are written ``batch`` at a time to an Arrow file in ``folder`` (a new temporary one by
    default; removed with the table) and memory-mapped, never held together in memory
    (``Dataset.from_list`` held several copies: +350 MiB for 5,000 attending rows); images stay
    their stored bytes. Reading a row gives it back as written; :func:`to_dataset` adds the
    decoding the trainers need. :func:`read_rows` opens the table of ``folder`` in another process.
    """
    import itertools

    from datasets import Dataset, Value

    it = iter(rows)
    head = list(itertools.islice(it, 64))
    if not head:
        return Dataset.from_list([])
    features = Dataset.from_list(head).features
    for name, feature in features.items():
        if feature == Value("null"):  # None in every sampled row (e.g. no difficulty): text
            features[name] = Value("string")
    file = _ArrowFile(features, batch, folder)
    with file as writer:
        for row in itertools.chain(head, it):
            writer.write(row)
    return file.dataset


def staged(table: Any, order: Sequence[tuple[int, str]], *, mixed: str | None = None) -> Any:
    """The rows of ``table`` (:func:`write_rows`, or a selection of it) in ``order``'s row indices,
    decoded as :func:`to_dataset`'s, each with its ``stage``: ``mixed`` for every row, else the
    stage ``order`` gives it.

    Nothing is copied while every row's stage is its difficulty (curriculum stages are named by
    difficulty): the order is an index mapping over the memory-mapped rows and the stage is added
    when a row is read. A stage that replays earlier stages' rows (``Stage.replay``) gives rows
    another stage than their difficulty: the stages then become a column, written beside the
    memory-mapped rows."""
    dataset = table.select([i for i, _ in order])
    if mixed is None and any(s != d for (_, s), d in zip(order, dataset["difficulty"], strict=True)):
        dataset = dataset.add_column("stage", [s for _, s in order])
    dataset.set_transform(functools.partial(_decode_staged, stage=mixed))
    return dataset


def _decode_staged(batch: dict[str, list[Any]], *, stage: str | None) -> dict[str, list[Any]]:
    batch = _decode_images(batch) if "images" in batch else batch
    n = len(next(iter(batch.values())))
    if stage:
        return {**batch, "stage": [stage] * n}
    return batch if "stage" in batch else {**batch, "stage": list(batch["difficulty"])}


ROWS_FILE = "rows.arrow"


def read_rows(folder: Path) -> Any:
    """The table :func:`write_rows` wrote into ``folder`` (by another process), memory-mapped."""
    from datasets import Dataset

    return Dataset.from_file(str(folder / ROWS_FILE))


class _ArrowFile:
    """A context: an ArrowWriter to a temporary file; ``dataset`` is that file memory-mapped once
    written (the folder goes with the dataset, or at once on an error)."""

    def __init__(self, features: Any, batch: int, folder: Path | None):
        import shutil
        import tempfile

        from datasets.arrow_writer import ArrowWriter

        if folder is None:
            self.folder = tempfile.mkdtemp(prefix="mmedagent-rows-")
        else:
            shutil.rmtree(folder, True)  # what an earlier, crashed launch left
            folder.mkdir(parents=True)
            self.folder = str(folder)
        self.path = str(Path(self.folder) / ROWS_FILE)
        self.writer = ArrowWriter(features=features, path=self.path, writer_batch_size=batch)
        self.dataset: Any = None

    def __enter__(self) -> Any:
        return self.writer

    def __exit__(self, *exc: object) -> None:
        import shutil
        import weakref

        from datasets import Dataset

        if exc[0] is not None:
            self.writer.close()
            shutil.rmtree(self.folder, True)
            return
        self.writer.finalize()
        self.dataset = Dataset.from_file(self.path)
        weakref.finalize(self.dataset, shutil.rmtree, self.folder, True)


def _decoded(dataset: Any) -> Any:
    if "images" in dataset.column_names:
        dataset.set_transform(_decode_images)
    return dataset


def to_dataset(rows: Iterable[Row], *, batch: int = 512) -> Any:
    """A ``datasets.Dataset`` of rows, as GRPOTrainer and SFTTrainer take it: :func:`write_rows`'s
    memory-mapped table whose images are decoded (normalised as the graph does) when a row is read.
    """
    return _decoded(write_rows(rows, batch=batch))
