"""Evaluation scaling benchmark: cases/s of one evaluation split over 1, 2 and 4 `mmedagent eval`
processes on one PostgreSQL database, against the OpenAI backend with 2 model servers behind nginx.

Builds the tiny offline checkpoint, starts ``transformers serve`` on it N times (``--servers``, one
torch thread each) behind the shipped balancer (``docs/deploy/nginx-balancer.conf``, run by
``app.local_serving``), then for each process count runs ``mmedagent eval --benchmark synthetic``
that many times at once on one fresh eval id (the eval-split feature: the processes share the cases
through the database), every role on the balancer. Per process count it prints:

- cases/s while running: cases / (last run finished - first run started), from the stored runs;
  process start-up (imports) and the report are outside it
- cases/s end to end: cases / (first process launched -> last process exited)
- the ratio of each to 1 process; the mean time a request spent at a server (from nginx's log);
  the CPU seconds of the model servers and of the eval processes; how busy the machine's cores were
  (every process counted: near 100 % it is CPU-bound) and which share of that was this benchmark's

Mode ``single`` by default (one attending call per case). ``multi`` runs too, but not on the tiny
random checkpoint behind ``transformers serve``: that server keeps special tokens in its replies,
the random specialists emit ``<|video_pad|>`` among them, and the attending prompt that quotes them
makes ``transformers serve`` fail (HTTP 500, a video token without a video).

Every eval is checked: each case stored once, with a successful run. PostgreSQL is not started
here: give a database to use (its tables are created if missing), e.g. the one of docs/deploy.md
"Throughput":

    .venv/bin/python bench/eval_scale.py --db-url 'postgresql+psycopg://postgres@/bench?host=/tmp/pg' \
        [--n 24] [--processes 1,2,4] [--servers 2] [--workers 1] [--mode multi] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402

from app.local_serving import NginxBalancer, TransformersServe  # noqa: E402
from app.tiny_model import build_tiny_model  # noqa: E402
from data.store import TrajectoryStore  # noqa: E402

PROGRESS = Console(stderr=True)  # transient progress bars, kept out of the printed results
ROLES = ("TRIAGE", "SPECIALIST", "ATTENDING")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_cpu_s() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine since boot, every process counted (/proc/stat)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICK, sum(ticks) / TICK


def server_seconds(log: Path, offset: int) -> list[float]:
    """Each request's time at the server (nginx's $upstream_response_time) logged after ``offset``."""
    with log.open() as f:
        f.seek(offset)
        return [float(t) for t in re.findall(r"upstream_s=([\d.]+)$", f.read(), re.M)]


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def eval_env(home: Path, db_url: str, model: Path, base_url: str) -> dict[str, str]:
    """An `mmedagent eval` process's environment: every role on the balancer, one torch thread."""
    return {
        **os.environ,
        "MMEDAGENT_HOME": str(home),
        "MMEDAGENT_DB_URL": db_url,
        "MMEDAGENT_MODEL": str(model),  # transformers serve names its model by the checkpoint path
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        **{f"MMEDAGENT_{r}__BACKEND": "openai" for r in ROLES},
        **{f"MMEDAGENT_{r}__BASE_URL": base_url for r in ROLES},
    }


def run_split(
    store: TrajectoryStore,
    servers: list[TransformersServe],
    env: dict[str, str],
    args: argparse.Namespace,
    processes: int,
    root: Path,
    access_log: Path,
) -> dict[str, Any]:
    """One eval id shared by ``processes`` `mmedagent eval` processes; its timings and CPU."""
    eval_id = f"scale-{processes}p-{uuid.uuid4().hex[:8]}"
    command = [str(Path(sys.executable).with_name("mmedagent")), "eval", "--benchmark", "synthetic"]
    command += ["--n", str(args.n), "--seed", "0", "--mode", args.mode, "--workers", str(args.workers)]
    command += ["--eval-id", eval_id, "--lease", "30"]
    pids = [s.process.pid for s in servers if s.process is not None]
    server_cpu_before = sum(cpu_s(pid) for pid in pids)
    children_before, machine_before = children_cpu_s(), machine_cpu_s()
    log_offset = access_log.stat().st_size
    started = time.perf_counter()
    logs = [root / f"{eval_id}-{i}.log" for i in range(processes)]
    procs = [
        subprocess.Popen(
            [*command, "--out", str(root / f"{eval_id}-{i}")],
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        for i, log in enumerate(logs)
    ]
    with Progress(console=PROGRESS, transient=True) as progress:
        task = progress.add_task(f"{processes} process(es)", total=args.n)
        while any(p.poll() is None for p in procs):
            progress.update(task, completed=len(store.list_runs(eval_id=eval_id, limit=None)))
            time.sleep(0.5)
    wall = time.perf_counter() - started
    for p, log in zip(procs, logs, strict=True):
        if p.returncode != 0:
            raise SystemExit(f"mmedagent eval exited {p.returncode}:\n{log.read_text()[-3000:]}")
    eval_cpu = children_cpu_s() - children_before
    server_cpu = sum(cpu_s(pid) for pid in pids) - server_cpu_before
    machine = [after - before for after, before in zip(machine_cpu_s(), machine_before, strict=True)]
    at_server = server_seconds(access_log, log_offset)
    runs = store.list_runs(eval_id=eval_id, limit=None)
    cases = [r.case_id for r in runs]
    if len(cases) != args.n or len(set(cases)) != args.n or any(r.status != "ok" for r in runs):
        errors = sorted({r.error or "" for r in runs if r.status != "ok"})
        tails = "\n".join(s.log.read_text()[-2000:] for s in servers)
        raise SystemExit(
            f"{eval_id}: {len(runs)} runs for {len(set(cases))} of {args.n} cases; errors: {errors}\n{tails}"
        )
    running = max(r.finished_at for r in runs) - min(r.created_at for r in runs)  # type: ignore[type-var,operator]
    return {
        "processes": processes,
        "eval_id": eval_id,
        "cases": args.n,
        "running_s": running.total_seconds(),
        "wall_s": wall,
        "running_cases_per_s": args.n / running.total_seconds(),
        "wall_cases_per_s": args.n / wall,
        "server_cpu_s": server_cpu,
        "eval_cpu_s": eval_cpu,
        "machine_busy": machine[0] / machine[1],
        "ours": (server_cpu + eval_cpu) / machine[0],
        "requests": len(at_server),
        "server_s_per_request": sum(at_server) / max(1, len(at_server)),
    }


def report(results: list[dict[str, Any]], args: argparse.Namespace, cores: int) -> None:
    base = results[0]
    print(
        f"bench/eval_scale.py: {args.n} synthetic cases, mode {args.mode}, --workers {args.workers} per "
        f"process; {args.servers} transformers serve (tiny checkpoint, 1 torch thread each) behind nginx "
        f"(least_conn); PostgreSQL; {cores} CPU cores"
    )
    print(
        f"  {'processes':>9}  {'cases/s running':>15}  {'ratio':>6}  {'cases/s end to end':>18}"
        f"  {'ratio':>6}  {'s/request at server':>19}  {'CPU s: servers':>14}  {'evals':>6}"
        f"  {'machine busy':>12}  {'ours':>5}"
    )
    for r in results:
        print(
            f"  {r['processes']:>9}  {r['running_cases_per_s']:>15.3f}  "
            f"{r['running_cases_per_s'] / base['running_cases_per_s']:>5.2f}x  "
            f"{r['wall_cases_per_s']:>18.3f}  {r['wall_cases_per_s'] / base['wall_cases_per_s']:>5.2f}x"
            f"  {r['server_s_per_request']:>19.3f}  {r['server_cpu_s']:>14.1f}  {r['eval_cpu_s']:>6.1f}"
            f"  {r['machine_busy']:>12.0%}  {r['ours']:>5.0%}"
        )
    print(
        "  s/request at server: nginx's upstream response time (queueing in the server included), mean;\n"
        "  CPU s: the model servers' and the eval processes' over the run (start-up included);\n"
        "  machine busy: all cores, every process on the machine counted; ours: the servers' and evals'\n"
        "  share of that"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db-url", required=True, help="a PostgreSQL database (SQLAlchemy URL)")
    parser.add_argument("--n", type=int, default=24, help="cases per eval")
    parser.add_argument("--processes", default="1,2,4", help="process counts, the first is the baseline")
    parser.add_argument("--servers", type=int, default=2, help="transformers serve processes behind nginx")
    parser.add_argument("--workers", type=int, default=1, help="cases in flight per eval process")
    parser.add_argument(
        "--mode", default="single", help="single | vote-N | static | multi (see the module doc)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    store = TrajectoryStore(args.db_url)  # the schema, before the processes start
    with tempfile.TemporaryDirectory(prefix="bench-eval-scale-") as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "model", size="tiny", seed=0)
        servers = [TransformersServe(model, root / f"server{i}.log") for i in range(args.servers)]
        try:
            with PROGRESS.status(f"starting {args.servers} transformers serve"):
                for server in servers:
                    server.start()
                for server in servers:
                    server.wait_ready()
            with NginxBalancer([s.address for s in servers]) as balancer:
                env = eval_env(root / "home", args.db_url, model, balancer.base_url)
                results = [
                    run_split(store, servers, env, args, int(p), root, balancer.access_log)
                    for p in args.processes.split(",")
                ]
                answered = [s.answered() for s in servers]
        finally:
            for server in servers:
                server.kill()
            store.close()
    if args.json:
        print(json.dumps({"results": results, "answered_per_server": answered, "cores": cores}, indent=2))
        return
    report(results, args, cores)
    print(f"  chat completions answered per server, all runs: {answered}")


if __name__ == "__main__":
    main()
