"""Serving benchmark: what the orchestration costs beside the model, and what batching buys.

Runs synthetic-clinic cases through the real Runtime (LangGraph + SQLite checkpointer + SQLite trajectory
store + TransformersBackend with its micro-batcher) on the tiny and the 14M-parameter ("small") offline
checkpoints, and prints, per checkpoint:

(a) graph overhead      = wall time of a case (Runtime.ask, persistence included) / time inside its
                          backend.generate calls (the 3 concurrent specialist calls counted once) - 1
(b) fan-out speedup     = 3 sequential specialist calls / one batched call of the same 3
(c) throughput scaling  = cases/s with 8 cases in flight / cases/s one at a time; beside it, the same
                          ratio on the model alone with every call carrying all 8 cases (the most
                          batching can give on this machine: a compute-bound model gains less)
(d) persistence share   = time in TrajectoryStore.save_run / wall time of a case

    .venv/bin/python bench/serving.py [--sizes tiny,small] [--threads 1]

With ``--vllm`` it compares instead the vllm backend (in-process ``vllm.LLM``, float32, one engine for
the three roles) with the transformers backend on the small checkpoint: cases/s through the whole
graph (Runtime.ask, persistence included) at 1, 8 and 32 cases in flight, and their ratios, measured
in one run (``--in-flight 1,8,32``; VLLM_CPU_KVCACHE_SPACE sizes vLLM's KV cache on CPU).

Decoding and batching use the default Settings (greedy; 64/128/192 new tokens for triage/specialist/
attending; batch gap 5 ms, max wait 50 ms). One torch thread by default: on a small machine shared with
other work, more intra-op threads than free cores slow generation down many times (README "Serving").
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import track

from app.backends.local import TransformersBackend
from app.config import Settings
from app.runtime import CaseRequest, Runtime
from app.tiny_model import build_tiny_model
from data.images import load_image
from data.schema import ROLES
from data.store import TrajectoryStore
from data.synthetic import generate_cases
from graph import prompts
from graph.protocol import ChatRequest, Completion, Sampling

PROGRESS = Console(stderr=True)  # transient progress bars, kept out of the printed results
TARGETS = {"a": ("<=", 0.05), "b": (">=", 2.0), "c": (">=", 3.0), "d": ("<=", 0.02)}


class TimedBackend:
    """Records the wall-clock interval of every ``generate`` call on the wrapped backend."""

    def __init__(self, inner: TransformersBackend) -> None:
        self.inner = inner
        self.intervals: list[tuple[float, float]] = []
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        started = time.perf_counter()
        try:
            return self.inner.generate(requests)
        finally:
            with self._lock:
                self.intervals.append((started, time.perf_counter()))


class TimedStore(TrajectoryStore):
    """The real store, timing ``save_run`` (one transaction per finished run)."""

    save_s: float = 0.0

    def save_run(self, run: Any, steps: Any, images: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return super().save_run(run, steps, images, *args, **kwargs)
        finally:
            self.save_s += time.perf_counter() - started


def union_s(intervals: Sequence[tuple[float, float]]) -> float:
    """Total length of the union of intervals (the three concurrent specialist calls count once)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def case_requests(n: int, seed: int, settings: Settings) -> list[CaseRequest]:
    return [
        CaseRequest(
            question=c.question,
            images=[load_image(b, limits=settings.image_limits()) for b in c.images],
            options=list(c.options),
            case_id=c.case_id,
            source="bench",
        )
        for c in generate_cases(n, seed=seed)
    ]


def run_sequential(rt: Runtime, timed: TimedBackend, store: TimedStore, cases: list[CaseRequest]) -> dict:
    walls, models, saves, calls, generates = [], [], [], [], []
    for req in track(cases, description="cases one at a time", console=PROGRESS, transient=True):
        timed.intervals.clear()
        save_before, calls_before = store.save_s, timed.inner.model_calls
        started = time.perf_counter()
        result = rt.ask(req)
        walls.append(time.perf_counter() - started)
        assert result.status == "ok", result.error
        models.append(union_s(timed.intervals))
        saves.append(store.save_s - save_before)
        calls.append(timed.inner.model_calls - calls_before)
        # The specialists' steps share their batch's latency: count each model.generate once.
        generates.append(sum({s["latency_s"] for s in result.steps}))
    return {"walls": walls, "models": models, "saves": saves, "calls": calls, "generates": generates}


def run_concurrent(rt: Runtime, cases: list[CaseRequest], workers: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        running = pool.map(rt.ask, cases)
        description = f"cases {workers} at a time"
        results = list(track(running, description, total=len(cases), console=PROGRESS, transient=True))
    elapsed = time.perf_counter() - started
    assert all(r.status == "ok" for r in results), [r.error for r in results if r.error]
    return elapsed


SPECIALTIES = ("Radiologist", "Pathologist", "Oncologist")
OPINION = "<think>The image shows the finding of option A.</think><answer>A</answer>"


def case_calls(case: CaseRequest, settings: Settings) -> list[list[ChatRequest]]:
    """A case's 3 model calls as the graph makes them: triage, the 3 specialists, the attending
    (here with fixed opinions)."""
    images, n = [img.image for img in case.images], len(case.images)
    q, options = case.question, list(case.options)
    opinions = [(s, OPINION) for s in SPECIALTIES]
    triage, specialist, attending = settings.triage, settings.specialist, settings.attending
    return [
        [ChatRequest(prompts.triage_messages(q, options, n), images, triage.sampling())],
        [
            ChatRequest(prompts.specialist_messages(s, q, options, n), images, specialist.sampling())
            for s in SPECIALTIES
        ],
        [ChatRequest(prompts.attending_messages(q, options, n, opinions), images, attending.sampling())],
    ]


def fanout_speedup(
    model_dir: Path, settings: Settings, case: CaseRequest, reps: int
) -> tuple[float, float, float]:
    """Medians over ``reps`` of (3 sequential calls) and (1 batched call) on the same 3 specialist
    prompts, and of the 3 prompts' prefill alone (1 new token each, sequentially): the part of the
    work that batching cannot share on a compute-bound CPU.

    A backend without a batching window, so neither side waits for companions.
    """
    backend = TransformersBackend(str(model_dir), batch_wait_s=0.0)
    requests = case_calls(case, settings)[1]
    backend.generate(requests[:1])  # warm-up
    prefill_only = [ChatRequest(r.messages, r.images, Sampling(max_new_tokens=1)) for r in requests]
    sequential, batched, prefill = [], [], []
    for _ in range(reps):
        started = time.perf_counter()
        for r in prefill_only:
            backend.generate([r])
        prefill.append(time.perf_counter() - started)
        started = time.perf_counter()
        alone = [backend.generate([r])[0] for r in requests]
        sequential.append(time.perf_counter() - started)
        started = time.perf_counter()
        together = backend.generate(requests)
        batched.append(time.perf_counter() - started)
        assert [c.token_ids for c in alone] == [c.token_ids for c in together], "greedy batch != sequential"
    backend.close()
    return statistics.median(sequential), statistics.median(batched), statistics.median(prefill)


def batching_ceiling(model_dir: Path, settings: Settings, cases: list[CaseRequest]) -> tuple[float, float]:
    """Seconds per case on the model alone (no graph, no batching window): each case's 3 calls one
    case at a time, and each call of all ``cases`` as one batch. Their ratio is what (c) would be
    with perfect batching on this machine."""
    backend = TransformersBackend(str(model_dir), batch_wait_s=0.0, max_batch=len(SPECIALTIES) * len(cases))
    calls = [case_calls(case, settings) for case in cases]
    backend.generate(calls[0][0])  # warm-up
    started = time.perf_counter()
    for per_case in calls:
        for call in per_case:
            backend.generate(call)
    alone = (time.perf_counter() - started) / len(cases)
    started = time.perf_counter()
    for stage in range(3):
        backend.generate([request for per_case in calls for request in per_case[stage]])
    together = (time.perf_counter() - started) / len(cases)
    backend.close()
    return alone, together


def bench_size(size: str, root: Path, n_seq: int, n_conc: int, workers: int, reps: int) -> dict[str, Any]:
    model_dir = build_tiny_model(root / f"model-{size}", size=size)
    settings = Settings(home=root / f"home-{size}", model=str(model_dir))
    backend = TransformersBackend(
        str(model_dir), batch_wait_s=settings.batch_wait_ms / 1000, max_batch=settings.max_batch
    )
    timed = TimedBackend(backend)
    store = TimedStore(settings.database_url, store_pixels=settings.store_pixels)
    rt = Runtime(settings, backends=dict.fromkeys(ROLES, timed), store=store)
    try:
        run_sequential(rt, timed, store, case_requests(1, 99, settings))  # warm-up
        seq_cases = case_requests(n_seq, 1, settings)
        seq = run_sequential(rt, timed, store, seq_cases)
        calls_before = backend.model_calls
        conc_s = run_concurrent(rt, case_requests(n_conc, 2, settings), workers)
        conc_calls = backend.model_calls - calls_before
        seq_b, batch_b, prefill_b = fanout_speedup(model_dir, settings, seq_cases[0], reps)
        ceiling = batching_ceiling(model_dir, settings, case_requests(workers, 2, settings))
    finally:
        rt.close()
        backend.close()
    wall, model = sum(seq["walls"]), sum(seq["models"])
    return {
        "size": size,
        "params": sum(p.numel() for p in backend.model.parameters()),
        "s_per_case": wall / n_seq,
        "calls_per_case": statistics.mean(seq["calls"]),
        "a": wall / model - 1,
        "b": seq_b / batch_b,
        "b_detail": (seq_b, batch_b, prefill_b),
        "c": (n_conc / conc_s) / (n_seq / wall),
        "c_detail": (n_seq / wall, n_conc / conc_s, 5 * n_conc / conc_calls),
        "c_ceiling": ceiling[0] / ceiling[1],
        "d": sum(seq["saves"]) / wall,
        "save_ms": 1000 * statistics.mean(seq["saves"]),
        "overhead_ms": 1000 * (wall - model) / n_seq,
        "generate_share": sum(seq["generates"]) / model,
    }


def backend_throughput(settings: Settings, backends: Mapping[str, Any], levels: Sequence[int]) -> list[float]:
    """Cases/s through ``Runtime.ask`` at each number of cases in flight (2 x that many cases, and 4
    at 1 in flight), after one warm-up case."""
    rt = Runtime(settings, backends=backends)
    try:
        run_concurrent(rt, case_requests(1, 99, settings), 1)
        return [
            (n := max(4, 2 * level)) / run_concurrent(rt, case_requests(n, 3, settings), level)
            for level in levels
        ]
    finally:
        rt.close()


def bench_vllm(root: Path, levels: Sequence[int], threads: int) -> None:
    """vllm vs transformers backend on the small checkpoint (see the module doc)."""
    from app.backends.factory import build_backends
    from app.config import VLLMSettings

    model_dir = build_tiny_model(root / "model-small", size="small")
    base = Settings(home=root / "home-transformers", model=str(model_dir))
    local = TransformersBackend(
        str(model_dir), batch_wait_s=base.batch_wait_ms / 1000, max_batch=base.max_batch
    )
    try:
        local_tp = backend_throughput(base, dict.fromkeys(ROLES, local), levels)
    finally:
        local.close()
    settings = base.model_copy(
        update={
            "home": root / "home-vllm",
            "vllm": VLLMSettings(max_model_len=2048),
            **{r: base.role(r).model_copy(update={"backend": "vllm"}) for r in ROLES},
        }
    )
    started = time.perf_counter()
    backends = build_backends(settings)
    start_s = time.perf_counter() - started
    try:
        vllm_tp = backend_throughput(settings, backends, levels)
    finally:
        backends["triage"].close()  # one engine: closing one role shuts it down
    engine = backends["triage"].engine  # type: ignore[attr-defined]
    print(
        f"\n== vllm vs transformers backend, small checkpoint ({threads} torch thread(s); "
        f"vLLM {engine.llm.llm_engine.vllm_config.model_config.dtype}, started in {start_s:.0f} s) =="
    )
    print(f"  {'in flight':>9}  {'transformers':>12}  {'vllm':>8}  {'vllm / transformers':>19}")
    for level, t, v in zip(levels, local_tp, vllm_tp, strict=True):
        print(f"  {level:>9}  {t:>8.3f} c/s  {v:>4.3f} c/s  {v / t:>18.2f}x")


def _verdict(key: str, value: float) -> str:
    op, target = TARGETS[key]
    met = value <= target if op == "<=" else value >= target
    return f"target {op} {target:g}: {'met' if met else 'MISSED'}"


def report(r: Mapping[str, Any], workers: int) -> None:
    seq_b, batch_b, prefill_b = r["b_detail"]
    tp1, tp8, per_call = r["c_detail"]
    print(f"\n== {r['size']} checkpoint ({r['params'] / 1e6:.2f}M params) ==")
    print(f"  one case: {r['s_per_case']:.3f} s, 5 model calls in {r['calls_per_case']:.1f} model.generate")
    print(f"      backend.generate time: {r['generate_share']:.1%} in model.generate, the rest in")
    print("      prompt/image preprocessing, logprobs, decoding and batching gaps")
    print(f"  (a) graph overhead     {r['a']:8.4f}   {_verdict('a', r['a'])}")
    print(f"      = {r['overhead_ms']:.1f} ms per case outside backend.generate")
    print(f"  (b) fan-out speedup    {r['b']:8.2f}   {_verdict('b', r['b'])}")
    print(f"      = 3 sequential calls {seq_b:.3f} s / one batched call {batch_b:.3f} s")
    print(
        f"      prefill (prompt encoding, not shared by batching) is {prefill_b / seq_b:.0%} of the 3 calls"
    )
    print(f"  (c) throughput scaling {r['c']:8.2f}   {_verdict('c', r['c'])}")
    print(
        f"      = {tp8:.3f} cases/s at {workers} in flight / {tp1:.3f} cases/s at 1 "
        f"({per_call:.1f} requests per model.generate at {workers})"
    )
    print(
        f"      the model alone, {workers} cases per call vs one at a time (same prompts, no graph): "
        f"{r['c_ceiling']:.2f}"
    )
    print(f"  (d) persistence share  {r['d']:8.4f}   {_verdict('d', r['d'])}")
    print(f"      = {r['save_ms']:.1f} ms per case in save_run")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: see README)")
    parser.add_argument("--sequential-cases", type=int, default=4)
    parser.add_argument("--concurrent-cases", type=int, default=16)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5, help="repetitions of the fan-out comparison")
    parser.add_argument("--vllm", action="store_true", help="compare the vllm and transformers backends")
    parser.add_argument("--in-flight", default="1,8,32", help="cases in flight for --vllm")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.vllm:
        with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
            bench_vllm(Path(tmp), [int(n) for n in args.in_flight.split(",")], args.threads)
        return
    settings = Settings()
    print(
        f"bench/serving.py: torch {torch.__version__}, {args.threads} CPU thread(s); "
        f"{args.sequential_cases} cases one at a time, "
        f"{args.concurrent_cases} cases {args.workers} at a time; "
        f"batch gap {settings.batch_gap_ms:g} ms, max wait {settings.batch_wait_ms:g} ms"
    )
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        for size in args.sizes.split(","):
            result = bench_size(
                size, Path(tmp), args.sequential_cases, args.concurrent_cases, args.workers, args.reps
            )
            report(result, args.workers)


if __name__ == "__main__":
    main()
