"""A stored run as developers read it: the whole record, its timeline, and how two runs differ.

Plain data shared by the terminal (app/run_terminal.py) and the web app (ui/): no rendering here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from data.store import TrajectoryStore, row_to_dict, run_to_dict


def run_report(store: TrajectoryStore, run_id: str) -> dict[str, Any] | None:
    """A run with its steps (each naming its policy version), its reward rows and those policies."""
    run = store.get_run(run_id.strip())
    if run is None:
        return None
    data = run_to_dict(run)
    step_seq = {st.id: st.seq for st in run.steps}
    data["rewards"] = [
        {"step": step_seq.get(r.step_id), **row_to_dict(r, skip=("id", "run_id", "step_id"))}
        for r in store.rewards(run.id)
    ]
    policies: dict[int, dict[str, Any]] = {}
    for st in data["steps"]:
        pid = st.get("policy_version_id")
        if pid is not None and pid not in policies and (p := store.get_policy(pid)) is not None:
            policies[pid] = {
                "id": p.id,
                "role": p.role,
                "base_model": p.base_model,
                "adapter": p.adapter_path,
                "weights_hash": p.weights_hash[:16],
                "parent_id": p.parent_id,
            }
    data["policies"] = list(policies.values())
    return data


def run_mode(run: dict[str, Any]) -> str:
    """The graph that answered: as recorded, else inferred from the nodes that ran (older runs)."""
    if run.get("mode"):
        return run["mode"]
    nodes = {st["node"] for st in run["steps"]}
    if "vote" in nodes:
        return "vote"
    if "triage" in nodes or not run["steps"]:
        return "multi"
    return "static" if "specialist" in nodes else "single"


# --- timeline -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    """One model call on the run's time axis (seconds from the run's start)."""

    seq: int
    label: str
    role: str
    start_s: float
    wait_s: float  # outside the model: image loading, queueing, batching, pre/post-processing
    model_s: float  # the model call itself
    batch: str | None  # "batch 2" for calls that shared one batched generate, per run
    batch_size: int | None  # requests in that generate, other runs' included
    prompt_tokens: int
    completion_tokens: int
    parse_status: str
    policy_version_id: int | None

    @property
    def end_s(self) -> float:
        return self.start_s + self.wait_s + self.model_s

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "end_s": self.end_s}


def _seconds_between(start: str | None, later: str | None) -> float:
    if not start or not later:
        return 0.0
    return (datetime.fromisoformat(later) - datetime.fromisoformat(start)).total_seconds()


def step_label(st: dict[str, Any]) -> str:
    return st["node"] + (f" · {st['specialty']}" if st.get("specialty") else "")


def timeline(run: dict[str, Any]) -> list[Bar]:
    """One bar per model call of ``run`` (a ``run_to_dict``/``run_report`` dict), in step order.

    Calls that shared a batched generate get the same ``batch`` label, numbered in order of first
    appearance in the run.
    """
    batches: dict[str, str] = {}
    bars = []
    for st in run["steps"]:
        batch_id = st.get("batch_id")
        if batch_id and batch_id not in batches:
            batches[batch_id] = f"batch {len(batches) + 1}"
        bars.append(
            Bar(
                seq=st["seq"],
                label=step_label(st),
                role=st["role"],
                start_s=max(0.0, _seconds_between(run["created_at"], st["started_at"])),
                wait_s=st.get("wait_s") or 0.0,
                model_s=st.get("latency_s") or 0.0,
                batch=batches.get(batch_id) if batch_id else None,
                batch_size=st.get("batch_size"),
                prompt_tokens=st.get("prompt_tokens") or 0,
                completion_tokens=st.get("completion_tokens") or 0,
                parse_status=st["parse_status"],
                policy_version_id=st.get("policy_version_id"),
            )
        )
    return bars


# --- comparing two runs -------------------------------------------------------------------------


@dataclass(frozen=True)
class DiffRow:
    """One aspect of two runs side by side; ``changed`` marks a difference."""

    field: str
    a: str
    b: str
    changed: bool


def _reward(run: dict[str, Any], kind: str, role: str = "attending") -> str:
    values = [r["value"] for r in run.get("rewards", []) if r["kind"] == kind and r["role"] == role]
    return f"{values[-1]:g}" if values else "—"


def _opinions(run: dict[str, Any]) -> dict[str, str]:
    return {
        st["specialty"]: (st.get("parsed") or {}).get("answer") or f"({st['parse_status']})"
        for st in run["steps"]
        if st["role"] == "specialist" and st.get("specialty")
    }


def _policies(run: dict[str, Any]) -> dict[str, str]:
    """Each role's policy version: by its ``name`` where the caller added one, else ``#id``."""
    names = {p["id"]: p["name"] for p in run.get("policies", []) if p.get("name")}
    out: dict[str, str] = {}
    for st in run["steps"]:
        pid = st.get("policy_version_id")
        out.setdefault(st["role"], "—" if pid is None else names.get(pid, f"#{pid}"))
    return out


def diff_runs(a: dict[str, Any], b: dict[str, Any]) -> list[DiffRow]:
    """Two runs (``run_report`` dicts, typically the same case before and after a policy version)
    side by side: what was asked, who was consulted, each opinion, the answer, its reward, the cost."""

    def row(name: str, va: Any, vb: Any) -> DiffRow:
        def text(v: Any) -> str:
            return "—" if v in (None, "") else str(v)

        return DiffRow(name, text(va), text(vb), va != vb)

    def tokens(run: dict[str, Any], key: str) -> int:
        return sum(st.get(key) or 0 for st in run["steps"])

    rows = [
        row("case", a.get("case_id"), b.get("case_id")),
        row("question", a["question"], b["question"]),
        row("mode", run_mode(a), run_mode(b)),
        row("status", a["status"], b["status"]),
        row("specialists", ", ".join(a["specialties"] or []), ", ".join(b["specialties"] or [])),
    ]
    op_a, op_b = _opinions(a), _opinions(b)
    for specialty in dict.fromkeys([*op_a, *op_b]):
        rows.append(row(f"opinion · {specialty}", op_a.get(specialty), op_b.get(specialty)))
    rows += [
        row("answer", a["answer"], b["answer"]),
        row("gold answer", a.get("gold_answer"), b.get("gold_answer")),
        row("reward · accuracy", _reward(a, "accuracy"), _reward(b, "accuracy")),
        row("reward · format", _reward(a, "format"), _reward(b, "format")),
        row("reward · clinician", _reward(a, "clinician"), _reward(b, "clinician")),
    ]
    pol_a, pol_b = _policies(a), _policies(b)
    for role in dict.fromkeys([*pol_a, *pol_b]):
        rows.append(row(f"policy · {role}", pol_a.get(role), pol_b.get(role)))
    wall_a, wall_b = a.get("wall_s") or 0.0, b.get("wall_s") or 0.0
    rows += [
        DiffRow("latency (wall s)", f"{wall_a:.2f}", f"{wall_b:.2f}", f"{wall_a:.2f}" != f"{wall_b:.2f}"),
        row("model calls", len(a["steps"]), len(b["steps"])),
        row("tokens in", tokens(a, "prompt_tokens"), tokens(b, "prompt_tokens")),
        row("tokens out", tokens(a, "completion_tokens"), tokens(b, "completion_tokens")),
    ]
    return rows
