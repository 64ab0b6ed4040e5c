"""Export stored steps as an RL dataset: one row per model call, streamed in batches.

Formats (files are named by role, so one folder can hold several roles):
- ``parquet``: ``OUT/<role>.parquet``, with the Hugging Face features in its schema metadata:
  ``load_dataset("parquet", data_files=...)`` decodes ``images`` to PIL and TRL's GRPOTrainer
  takes the result as it is (conversational ``prompt`` + ``images``).
- ``hf``: a Hub-style dataset folder, one config per role: shards
  ``OUT/<role>/train-NNNNN-of-MMMMM-<export id>.parquet`` and ``OUT/README.md`` (dataset card:
  configs, features, row counts). ``load_dataset(OUT, "<role>")``; can be pushed to a Hub repo as it is.
- ``jsonl``: ``OUT/<role>.jsonl``; ``images`` holds the absolute paths of the image files, written
  once each to ``OUT/images/<sha256>.<ext>``, so ``load_dataset("json", data_files=...)`` then
  ``cast_column("images", List(Image()))`` opens them from any working directory (``datasets``
  opens a local path as it is given); ``image_sha256`` names the files too, should OUT move.

In hash-only deployments (``store_pixels = false``) the images have no bytes: their entries in
``images`` are null and only ``image_sha256`` identifies them.
Columns read by rl/rewards.py keep its names: ``answer`` (gold answer), ``options``, ``specialty``
(gold specialty); the specialty a specialist step played is ``step_specialty``. ``prompt`` and
``completion`` are both conversational (TRL's prompt-completion layout, usable by SFTTrainer too);
a plain-text ``completion`` column would make TRL take the rows for non-conversational ones.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, Select, func, select
from sqlalchemy.orm import Session

from data.difficulty import LEVELS, Level, level_of, run_scores
from data.schema import ROLES, ImageBlob, Reward, Run, Step
from data.store import latest_verdict_ids

if TYPE_CHECKING:
    from datasets import Features

    from data.store import TrajectoryStore

log = logging.getLogger(__name__)

FORMATS = ("parquet", "jsonl", "hf")
SHARD_BYTES = 500 * 1024 * 1024  # hf shards close past this much payload (the Hub's usual size)
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg"}


class ExportError(ValueError):
    """The export cannot be made as asked (bad filter, existing output, unexpected stored data)."""


@dataclass(frozen=True)
class ExportFilter:
    """Which steps to export: one role, optionally only recent / ok / gold-labelled / some levels."""

    role: str
    since: datetime | None = None
    status: str | None = None
    with_gold: bool = False
    difficulty: Collection[Level] | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ExportError(f"role must be one of {', '.join(ROLES)}, not {self.role!r}")
        if self.difficulty is not None:
            bad = [d for d in self.difficulty if d not in LEVELS]
            if bad:
                raise ExportError(f"difficulty must be easy, medium or hard, not {bad[0]!r}")
            object.__setattr__(self, "difficulty", tuple(self.difficulty))  # frozen, hashable


@dataclass
class ExportResult:
    """``path``: what ``load_dataset`` reads (the file; for hf the folder)."""

    path: Path
    rows: int = 0
    images_without_pixels: int = 0


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An ISO date/datetime (naive = UTC) or a look-back like ``36h``, ``7d``, ``2w``."""
    units = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    text = text.strip()
    if len(text) > 1 and text[-1] in units and text[:-1].isdigit():
        return (now or datetime.now(UTC)) - timedelta(**{units[text[-1]]: int(text[:-1])})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ExportError(f"--since {text!r}: expected an ISO date/datetime or e.g. 24h, 7d, 2w") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


# --- the rows -----------------------------------------------------------------------------------


def features() -> Features:
    """The Hugging Face features of an exported row (one schema for every role)."""
    from datasets import Features, Image, List, Value

    text, f64, i64 = Value("string"), Value("float64"), Value("int64")
    messages = List({"role": text, "content": List({"type": text, "text": text})})
    return Features(
        {
            "run_id": text,
            "step_id": i64,
            "seq": i64,
            "role": text,
            "node": text,
            "step_specialty": text,
            "prompt": messages,
            "images": List(Image()),
            "image_sha256": List(text),
            "completion": messages,
            "completion_ids": List(i64),
            "logprobs": List(f64),
            "parsed": text,  # JSON: its keys differ by role
            "parse_status": text,
            "prompt_tokens": i64,
            "completion_tokens": i64,
            "latency_s": f64,
            "model_id": text,
            "policy_version": i64,
            "question": text,
            "options": List(text),
            "answer": text,
            "specialty": text,
            "reward_format": f64,
            "reward_accuracy": f64,
            "reward_clinician": f64,
            "clinician_answer": text,
            "clinician_note": text,
            "opinions": List(
                {"specialty": text, "completion": text, "answer": text, "correct": Value("bool")}
            ),
            "difficulty": text,
            "specialists_right": f64,
            "run_status": text,
            "source": text,
            "case_id": text,
            "eval_id": text,
            "created_at": Value("timestamp[us, tz=UTC]"),
        }
    )


def _query(flt: ExportFilter) -> Select:
    scores = run_scores()
    level = level_of(scores)
    stmt = (
        select(
            Step.id,
            Step.seq,
            Step.role,
            Step.node,
            Step.specialty,
            Step.messages,
            Step.image_refs,
            Step.completion,
            Step.token_ids,
            Step.logprobs,
            Step.parsed,
            Step.parse_status,
            Step.prompt_tokens,
            Step.completion_tokens,
            Step.latency_s,
            Step.model_id,
            Step.policy_version_id,
            Run.id.label("run_id"),
            Run.question,
            Run.options,
            Run.gold_answer,
            Run.gold_specialty,
            Run.status.label("run_status"),
            Run.source,
            Run.case_id,
            Run.eval_id,
            Run.created_at,
            scores.c.n_scored,
            scores.c.n_right,
            level.label("difficulty"),
        )
        .join(Run, Run.id == Step.run_id)
        .outerjoin(scores, scores.c.run_id == Step.run_id)
        .where(Step.role == flt.role)
    )
    if flt.since is not None:
        stmt = stmt.where(Run.created_at >= flt.since.astimezone(UTC))
    if flt.status:
        stmt = stmt.where(Run.status == flt.status)
    if flt.with_gold:
        gold = Run.gold_specialty if flt.role == "triage" else Run.gold_answer
        stmt = stmt.where(gold.is_not(None))
    if flt.difficulty is not None:
        stmt = stmt.where(level.in_(list(flt.difficulty)))
    return stmt


def count_rows(store: TrajectoryStore, flt: ExportFilter) -> int:
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(_query(flt).subquery())) or 0


def _utc(when: datetime | None) -> datetime | None:
    if when is None:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _prompt(messages: Sequence[dict[str, Any]], step_id: int) -> list[dict[str, Any]]:
    """The stored messages in the exported layout: content is always a list of type/text blocks."""
    out = []
    for m in messages:
        content = m.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for b in blocks:
            if not set(b) <= {"type", "text"}:
                raise ExportError(f"step {step_id}: unexpected content block keys {sorted(b)}")
        out.append(
            {"role": m["role"], "content": [{"type": b["type"], "text": b.get("text")} for b in blocks]}
        )
    return out


def _latest(rows: Sequence[Row], kind: str, source: str) -> Row | None:
    found = [r for r in rows if r.kind == kind and r.source == source]
    return found[-1] if found else None


def _rewards_by_step(s: Session, step_ids: list[int]) -> dict[int, list[Row]]:
    """Reward rows per step, oldest first (plain rows: no ORM objects to build per reward)."""
    out: dict[int, list[Row]] = {}
    cols = (Reward.step_id, Reward.kind, Reward.source, Reward.value, Reward.answer, Reward.note)
    for r in s.execute(select(*cols).where(Reward.step_id.in_(step_ids)).order_by(Reward.id)):
        out.setdefault(r.step_id, []).append(r)
    return out


def _verdicts(s: Session, run_ids: list[str]) -> dict[int, Row]:
    """The latest clinician verdict of each run, keyed by the (attending) step it is attached to."""
    cols = (Reward.step_id, Reward.value, Reward.answer, Reward.note)
    rows = s.execute(select(*cols).where(Reward.id.in_(latest_verdict_ids(run_ids))))
    return {r.step_id: r for r in rows if r.step_id is not None}


def _opinions(s: Session, run_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The specialists' opinions per run, in the order they were stored, with their correctness."""
    steps = s.execute(
        select(Step.id, Step.run_id, Step.specialty, Step.completion, Step.parsed)
        .where(Step.run_id.in_(run_ids), Step.role == "specialist")
        .order_by(Step.id)
    ).all()
    rewards = _rewards_by_step(s, [st.id for st in steps]) if steps else {}
    out: dict[str, list[dict[str, Any]]] = {}
    for st in steps:
        acc = _latest(rewards.get(st.id, []), "accuracy", "gold")
        out.setdefault(st.run_id, []).append(
            {
                "specialty": st.specialty,
                "completion": st.completion,
                "answer": (st.parsed or {}).get("answer"),
                "correct": None if acc is None else acc.value >= 1.0,
            }
        )
    return out


def _images(s: Session, shas: set[str]) -> dict[str, tuple[str, bytes | None]]:
    if not shas:
        return {}
    rows = s.execute(
        select(ImageBlob.sha256, ImageBlob.mime, ImageBlob.data).where(ImageBlob.sha256.in_(shas))
    )
    return {r.sha256: (r.mime, r.data) for r in rows}


def _image_entry(sha: str, mime: str, data: bytes | None) -> dict[str, Any] | None:
    """HF ``datasets.Image`` layout; the path only names the file (the bytes are what decodes)."""
    if data is None:
        return None
    return {"bytes": data, "path": f"{sha}.{_EXTENSIONS.get(mime, 'bin')}"}


def _row(
    st: Row,
    rewards: list[Row],
    opinions: list[dict[str, Any]],
    images: dict[str, tuple[str, bytes | None]],
    verdict: Row | None,
) -> dict[str, Any]:
    fmt, acc = _latest(rewards, "format", "gold"), _latest(rewards, "accuracy", "gold")
    refs = list(st.image_refs or [])
    missing = [sha for sha in refs if sha not in images]
    if missing:
        raise ExportError(f"step {st.id}: image {missing[0]} is referenced but not stored")
    return {
        "run_id": st.run_id,
        "step_id": st.id,
        "seq": st.seq,
        "role": st.role,
        "node": st.node,
        "step_specialty": st.specialty,
        "prompt": _prompt(st.messages, st.id),
        "images": [_image_entry(sha, *images[sha]) for sha in refs],
        "image_sha256": refs,
        "completion": [{"role": "assistant", "content": [{"type": "text", "text": st.completion}]}],
        "completion_ids": st.token_ids,
        "logprobs": st.logprobs,
        "parsed": json.dumps(st.parsed, ensure_ascii=False, sort_keys=True),
        "parse_status": st.parse_status,
        "prompt_tokens": st.prompt_tokens,
        "completion_tokens": st.completion_tokens,
        "latency_s": st.latency_s,
        "model_id": st.model_id,
        "policy_version": st.policy_version_id,
        "question": st.question,
        "options": list(st.options or []),
        "answer": st.gold_answer,
        "specialty": st.gold_specialty,
        "reward_format": fmt.value if fmt else None,
        "reward_accuracy": acc.value if acc else None,
        "reward_clinician": verdict.value if verdict else None,
        "clinician_answer": verdict.answer if verdict else None,
        "clinician_note": verdict.note if verdict else None,
        "opinions": opinions,
        "difficulty": st.difficulty,
        "specialists_right": st.n_right / st.n_scored if st.n_scored else None,
        "run_status": st.run_status,
        "source": st.source,
        "case_id": st.case_id,
        "eval_id": st.eval_id,
        "created_at": _utc(st.created_at),
    }


def iter_batches(
    store: TrajectoryStore, flt: ExportFilter, batch_size: int = 256, *, by_case: bool = False
) -> Iterator[list[dict[str, Any]]]:
    """The exported rows, ``batch_size`` at a time, in step order, from one consistent read.

    ``by_case``: in case order instead (case id, then when the run started, then the step), an
    order that does not depend on which of several concurrent writers stored its run first: the
    same stored runs give the same rows in the same order (what training needs to be repeatable).
    The step query streams (``yield_per``: a server-side cursor on PostgreSQL); rewards, opinions
    and image bytes are fetched per batch, so memory holds one batch, whatever the total.
    """
    order = (Run.case_id, Run.created_at, Step.seq, Step.id) if by_case else (Step.id,)
    with store.session() as s:
        result = s.execute(_query(flt).order_by(*order).execution_options(yield_per=batch_size))
        for part in result.partitions():
            rewards = _rewards_by_step(s, [st.id for st in part])
            attending = [st.run_id for st in part if st.role == "attending"]
            opinions = _opinions(s, attending) if attending else {}
            verdicts = _verdicts(s, attending) if attending else {}
            images = _images(s, {sha for st in part for sha in st.image_refs or []})
            yield [
                _row(st, rewards.get(st.id, []), opinions.get(st.run_id, []), images, verdicts.get(st.id))
                for st in part
            ]


# --- the writers --------------------------------------------------------------------------------


class _ParquetSink:
    """Row groups appended to one file; ``open`` again starts the next file (hf shards)."""

    def __init__(self) -> None:
        self.schema = features().arrow_schema  # carries the HF features as schema metadata
        self.writer: Any = None
        self.files: list[Path] = []

    def open(self, path: Path) -> None:
        import pyarrow.parquet as pq

        self.close()
        self.writer = pq.ParquetWriter(path, self.schema, compression="zstd")
        self.files.append(path)

    def write(self, rows: list[dict[str, Any]]) -> int:
        """Append one row group; returns its size in memory (bytes)."""
        import pyarrow as pa

        table = pa.Table.from_pylist(rows, schema=self.schema)
        self.writer.write_table(table)
        return table.nbytes

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _write_parquet(batches: Iterator[list[dict[str, Any]]], path: Path) -> None:
    sink = _ParquetSink()
    sink.open(path)
    for rows in batches:
        sink.write(rows)
    sink.close()


def _write_shards(batches: Iterator[list[dict[str, Any]]], folder: Path) -> None:
    """``train-NNNNN-of-MMMMM-<export id>.parquet`` shards of about SHARD_BYTES each, in ``folder``.

    The export id makes every export's file names, hence its dataset card, new: ``load_dataset``
    caches a local dataset folder by its card alone and would serve an earlier export otherwise.
    """
    export_id = uuid.uuid4().hex[:8]
    sink, size = _ParquetSink(), 0
    folder.mkdir()
    sink.open(folder / "part-0.parquet")
    for rows in batches:
        if size >= SHARD_BYTES:
            sink.open(folder / f"part-{len(sink.files)}.parquet")
            size = 0
        size += sink.write(rows)
    sink.close()
    for i, f in enumerate(sink.files):
        f.rename(folder / f"train-{i:05d}-of-{len(sink.files):05d}-{export_id}.parquet")


def _write_jsonl(batches: Iterator[list[dict[str, Any]]], path: Path, image_dir: Path) -> None:
    """JSON lines; image bytes go to ``image_dir`` (absolute) once each (content-addressed names)."""
    image_dir.mkdir(exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for rows in batches:
            for r in rows:
                paths = []
                for img in r["images"]:
                    if img is None:
                        paths.append(None)
                        continue
                    target = image_dir / img["path"]
                    if not target.exists():
                        part = target.with_suffix(".part")
                        part.write_bytes(img["bytes"])
                        os.replace(part, target)
                    paths.append(str(target))
                r["images"] = paths
                r["created_at"] = r["created_at"].isoformat() if r["created_at"] else None
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _dataset_card(root: Path) -> str:
    """README.md of an hf export: one config per role folder present, its files, the shared features.

    Written the way ``Dataset.push_to_hub`` writes its own: ``DatasetInfo`` (features, a ``train``
    split with its row count and bytes) per config, through the public card API.
    """
    import pyarrow.parquet as pq
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCard, DatasetCardData

    shards = {r: sorted((root / r).glob("train-*.parquet")) for r in ROLES}
    roles = [r for r in ROLES if shards[r]]
    infos = DatasetInfosDict()
    for r in roles:
        meta = [pq.ParquetFile(f).metadata for f in shards[r]]
        splits = SplitDict()
        splits.add(
            SplitInfo(
                name="train",
                num_examples=sum(m.num_rows for m in meta),
                num_bytes=sum(m.row_group(i).total_byte_size for m in meta for i in range(m.num_row_groups)),
            )
        )
        infos[r] = DatasetInfo(features=features(), splits=splits)
    files = {r: [f"{r}/{f.name}" for f in shards[r]] for r in roles}
    data = DatasetCardData(
        configs=[{"config_name": r, "data_files": [{"split": "train", "path": files[r]}]} for r in roles],
        tags=["medical", "vqa", "rl", "grpo", "trajectories"],
    )
    infos.to_dataset_card_data(data)
    body = (
        "# mmedagent-rl trajectories\n\n"
        "One row per model call of the triage -> specialists -> attending graph, exported by "
        "`mmedagent export --format hf`. Configs: " + ", ".join(f"`{r}`" for r in roles) + ".\n\n"
        "`prompt` (conversational) and `images` feed TRL's GRPOTrainer as they are; the reward "
        "functions of `rl/rewards.py` read `answer`, `options` and `specialty`. Stored rewards are in "
        "`reward_format`, `reward_accuracy` (gold) and `reward_clinician` (latest clinician verdict); "
        "`difficulty` is easy/medium/hard by the fraction of specialists right; `policy_version` "
        "names the weights that produced the completion.\n"
    )
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def _counted(
    batches: Iterator[list[dict[str, Any]]], res: ExportResult, on_rows: Callable[[int], None] | None
) -> Iterator[list[dict[str, Any]]]:
    for rows in batches:
        res.rows += len(rows)
        res.images_without_pixels += sum(1 for r in rows for img in r["images"] if img is None)
        yield rows
        if on_rows:
            on_rows(len(rows))


def export(
    store: TrajectoryStore,
    flt: ExportFilter,
    fmt: str,
    out: Path,
    *,
    batch_size: int = 256,
    overwrite: bool = False,
    on_rows: Callable[[int], None] | None = None,
) -> ExportResult:
    """Write the filtered steps to ``out`` as ``fmt``; ``result.path`` is what ``load_dataset`` reads.

    The output is built in a temp folder inside ``out`` and moved into place at the end, so a
    failed export leaves no partial file. ``on_rows(n)`` is called after each batch (progress).
    """
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a folder")
    target = out / {"parquet": f"{flt.role}.parquet", "jsonl": f"{flt.role}.jsonl", "hf": flt.role}[fmt]
    if target.exists() and not overwrite:
        raise ExportError(f"{target} already exists (use --overwrite to replace it)")
    out.mkdir(parents=True, exist_ok=True)
    res = ExportResult(path=out if fmt == "hf" else target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{flt.role}-", dir=out))
    try:
        batches = _counted(iter_batches(store, flt, batch_size), res, on_rows)
        built = tmp / target.name
        if fmt == "jsonl":
            _write_jsonl(batches, built, out.resolve() / "images")
        elif fmt == "parquet":
            _write_parquet(batches, built)
        else:
            _write_shards(batches, built)
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(built, target)
        if fmt == "hf":
            (out / "README.md").write_text(_dataset_card(out), encoding="utf-8")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %d %s rows to %s", res.rows, flt.role, target)
    return res
