"""Trajectory store benchmark: write rate, bytes per run, export rate and export memory.

Writes N synthetic runs to a fresh SQLite file (5 steps each: triage, 3 specialists, attending;
prompts from graph.prompts, ~60-token completions with token ids and logprobs, 10 reward rows;
each run shows one of 50 synthetic-clinic images, so images are deduplicated), then exports them
in child processes and prints:

- runs/s written by one writer, and by 8 writer threads at once (same file)
- bytes per run: database size / runs, with and without the image blobs
- export rows/s and the peak RSS of the exporting process: the attending steps alone (N rows) and
  all three roles (5 N rows: 100k at the default N = 20000), next to the RSS of a process that
  imports the same libraries and opens the store without exporting. Flat memory = the two export
  peaks are close whatever the row count.

    .venv/bin/python bench/store.py [--runs 20000] [--format parquet] [--keep]
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.images import load_image  # noqa: E402
from data.store import ImageIn, RewardIn, RunIn, TrajectoryStore  # noqa: E402
from data.synthetic import generate_cases  # noqa: E402
from graph import prompts  # noqa: E402

PANEL = ("Radiologist", "Oncologist", "Pathologist")
N_IMAGES = 50


def _completion(rng: random.Random, letter: str) -> tuple[str, list[int], list[float]]:
    think = " ".join(
        rng.choice(("nodule", "opacity", "margin", "lesion", "normal", "dense")) for _ in range(50)
    )
    ids = [rng.randrange(150_000) for _ in range(60)]
    return f"<think>{think}</think><answer>{letter}</answer>", ids, [-rng.random() for _ in ids]


def _run(i: int, cases: list, images: list[ImageIn], rng: random.Random, prefix: str) -> tuple:
    case = cases[i % len(cases)]
    img = images[i % len(images)]
    q, opts = case.question, list(case.options)

    def step(node: str, role: str, messages: list, specialty: str | None = None) -> dict[str, Any]:
        text, ids, lps = _completion(rng, rng.choice("ABCD"))
        return {
            "node": node, "role": role, "specialty": specialty, "messages": messages,
            "image_refs": [img.sha256], "completion": text, "parsed": {"answer": text[-10:-9]},
            "parse_status": "ok", "token_ids": ids, "logprobs": lps, "prompt_tokens": 300,
            "completion_tokens": len(ids), "latency_s": 0.1, "model_id": "bench",
        }  # fmt: skip

    steps = [step("triage", "triage", prompts.triage_messages(q, opts, 1))]
    steps += [step("specialist", "specialist", prompts.specialist_messages(s, q, opts, 1), s) for s in PANEL]
    opinions = [(s, st["completion"]) for s, st in zip(PANEL, steps[1:], strict=True)]
    steps.append(step("attending", "attending", prompts.attending_messages(q, opts, 1, opinions)))
    rewards = [
        RewardIn(step=k, role=st["role"], kind=kind, value=float(rng.random() < 0.5))
        for k, st in enumerate(steps)
        for kind in ("format", "accuracy")
    ]
    run = RunIn(
        id=f"{prefix}{i:08d}", thread_id=f"{prefix}{i}", question=q, status="ok", options=opts,
        image_shas=[img.sha256], gold_answer=case.answer, gold_specialty=case.specialty, source="bench",
    )  # fmt: skip
    return run, steps, [img], rewards


def _write(store: TrajectoryStore, runs: list[tuple]) -> None:
    for run, steps, images, rewards in runs:
        store.save_run(run, steps, images, rewards)


def _rss_mib() -> float:
    """Current resident set size (Linux /proc)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def _export_child(url: str, out: str, fmt: str, roles: str) -> None:
    """Runs in a child process: export ``roles``; prints rows, seconds and RSS figures (MiB)."""
    import pyarrow.parquet  # noqa: F401 - imported before "RSS before", as the export will

    from data.export import ExportFilter, export, features

    store = TrajectoryStore(url)
    features()  # imports datasets
    before = peak = _rss_mib()

    def sample(_: int) -> None:
        nonlocal peak
        peak = max(peak, _rss_mib())

    rows, t0 = 0, time.perf_counter()
    for role in roles.split(","):
        rows += export(store, ExportFilter(role=role), fmt, Path(out), on_rows=sample).rows
    seconds = time.perf_counter() - t0
    print(rows, seconds, before, peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _child(url: str, out: Path, fmt: str, roles: str) -> list[float]:
    cmd = [sys.executable, __file__, "--child", url, str(out), fmt, roles]
    return [float(x) for x in subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()]


def _images() -> tuple[list, list[ImageIn]]:
    cases = generate_cases(N_IMAGES, seed=0)
    loaded = [load_image(c.images[0]) for c in cases]
    return cases, [ImageIn(i.sha256, i.mime, i.width, i.height, i.data) for i in loaded]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20_000)
    ap.add_argument("--format", default="parquet", choices=("parquet", "hf", "jsonl"))
    ap.add_argument("--keep", action="store_true", help="keep the database and exports (~0.5 GB at 20000)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _export_child(*args.child)
        return
    from rich.progress import track

    rng = random.Random(0)
    cases, images = _images()
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    url = f"sqlite:///{tmp / 'bench.db'}"
    store = TrajectoryStore(url)

    # one writer
    t0 = time.perf_counter()
    for i in track(range(args.runs), description=f"writing {args.runs} runs", transient=True):
        store.save_run(*_run(i, cases, images, rng, "r"))
    one = args.runs / (time.perf_counter() - t0)

    # 8 writers at once on another file, each with its own store (like separate UI / eval processes)
    per_thread = max(1, args.runs // 40)
    batches = [[_run(i, cases, images, rng, f"t{t}-") for i in range(per_thread)] for t in range(8)]
    stores = [TrajectoryStore(f"sqlite:///{tmp / 'concurrent.db'}") for _ in range(8)]
    threads = [threading.Thread(target=_write, args=(s, b)) for s, b in zip(stores, batches, strict=True)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    eight = 8 * per_thread / (time.perf_counter() - t0)
    with stores[0].engine.connect() as conn:
        written = conn.exec_driver_sql("SELECT COUNT(*) FROM runs").scalar()
    for s in stores:
        s.close()

    with store.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        blob_bytes = conn.exec_driver_sql("SELECT COALESCE(SUM(LENGTH(data)), 0) FROM images").scalar()
        n_steps = conn.exec_driver_sql("SELECT COUNT(*) FROM steps").scalar()
    store.close()
    db_bytes = (tmp / "bench.db").stat().st_size
    attending = _child(url, tmp / "attending", args.format, "attending")
    everything = _child(url, tmp / "all", args.format, "triage,specialist,attending")

    print(f"bench/store.py: SQLite, {args.runs} runs x 5 steps = {n_steps} steps, {N_IMAGES} distinct images")
    print(f"write, 1 writer:         {one:8.1f} runs/s")
    print(
        f"write, 8 writer threads: {eight:8.1f} runs/s  ({eight / one:.2f}x one writer; {written} of "
        f"{8 * per_thread} runs stored)"
    )
    print(
        f"bytes per run:           {db_bytes / args.runs:8.0f} B  (db {db_bytes / 2**20:.1f} MiB; "
        f"without the image blobs {(db_bytes - blob_bytes) / args.runs:.0f} B/run; "
        f"{blob_bytes} B of images in all)"
    )
    for label, (rows, secs, before, peak, maxrss) in (("attending", attending), ("all roles", everything)):
        print(
            f"export {args.format}, {label:9s} {rows:7.0f} rows {rows / secs:7.0f} rows/s  RSS before "
            f"{before:4.0f} MiB, peak during {peak:4.0f} MiB (+{peak - before:.0f}), "
            f"process max {maxrss:4.0f} MiB"
        )
    if args.keep:
        print(f"(database and exports in {tmp})")
    else:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
