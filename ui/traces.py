"""The developers' tab: browse runs, open one to see every model call exactly as it happened."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from app.policies import listed_name
from data.difficulty import LEVELS
from data.run_view import run_report
from data.schema import RUN_STATUSES
from data.store import TrajectoryStore
from ui.policy_names import name_run_policies
from ui.queries import NO_DIFFICULTY, RunFilter, find_runs, run_difficulty
from ui.run_views import build_run_views
from ui.safety import redact_paths
from ui.text import as_text

ANY = "any"
RUN_COLUMNS = [
    "case",
    "run",
    "created (UTC)",
    "question",
    "status",
    "source",
    "difficulty",
    "specialists",
    "answer",
    "wall s",
]


class FilterError(ValueError):
    """A filter value the page cannot use; the message is worded for the page."""


def parse_day(text: str | None, what: str) -> date | None:
    """A ``YYYY-MM-DD`` filter value (blank: no bound)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise FilterError(
            f"**{what}**: {as_text(repr(text))} is not a date; write it like 2026-11-24 (year-month-day)."
        ) from None


def run_filter(status: str, policy: str, since: str | None, until: str | None, difficulty: str) -> RunFilter:
    flt = RunFilter(
        status=None if status == ANY else status,
        policy_id=None if policy in (ANY, None, "") else int(policy),
        since=parse_day(since, "From"),
        until=parse_day(until, "To"),
        difficulty=None if difficulty == ANY else difficulty,
    )
    if flt.since and flt.until and flt.until < flt.since:
        raise FilterError(f"**To** ({flt.until}) is before **From** ({flt.since}).")
    return flt


def run_rows(store: TrajectoryStore, flt: RunFilter, limit: int = 200) -> list[list[Any]]:
    """The matching runs grouped by case (newest case first), each case's turns in order."""
    cases: dict[str, list[tuple[Any, str]]] = {}
    for run, diff in find_runs(store, flt, limit):
        cases.setdefault(run.thread_id or run.id, []).append((run, diff))
    rows = []
    for thread, runs in cases.items():
        for turn, (run, diff) in enumerate(reversed(runs), start=1):
            rows.append(
                [
                    f"{thread[:8]} · {turn}/{len(runs)}",
                    run.id,
                    run.created_at.strftime("%Y-%m-%d %H:%M:%S") if run.created_at else "",
                    (run.question or "")[:80],
                    run.status,
                    run.source,
                    diff,
                    ", ".join(run.specialties or []),
                    (run.answer or redact_paths(run.error) or "")[:80],
                    round(run.wall_s or 0.0, 2),
                ]
            )
    return rows


def policy_choices(store: TrajectoryStore) -> list[tuple[str, str]]:
    choices = [("any", ANY)]
    for p in store.list_policies():
        adapter = f" + {Path(p.adapter_path).name}" if p.adapter_path else ""
        choices.append((f"{p.role} {listed_name(p)} · {Path(p.base_model).name}{adapter}", str(p.id)))
    return choices


def run_record(store: TrajectoryStore, run_id: str) -> dict[str, Any] | None:
    """A run as the JSON developers see (data.run_view.run_report) and its difficulty; no server paths."""
    data = run_report(store, run_id)
    if data is None:
        return None
    data["error"] = redact_paths(data["error"])
    data["difficulty"] = run_difficulty(store, data["run_id"])
    name_run_policies(store, data)
    for st in data["steps"]:
        st["model_id"] = redact_paths(st["model_id"])
    for p in data["policies"]:
        p["base_model"], p["adapter"] = redact_paths(p["base_model"]), redact_paths(p["adapter"])
    return data


def graph_path(run: dict[str, Any]) -> str:
    """The nodes the run went through, parallel specialists side by side."""
    parts: list[str] = []
    specialists = [st["specialty"] for st in run["steps"] if st["node"] == "specialist"]
    for st in run["steps"]:
        if st["node"] == "specialist":
            if specialists:
                parts.append("specialists (" + " ‖ ".join(specialists) + ")")
                specialists = []
        else:
            parts.append(st["node"])
    if run["status"] in ("error", "interrupted"):
        parts.append(f"✗ {run['status']}")
    return " → ".join(parts) or "(no step finished)"


def _rewards_md(rewards: list[dict[str, Any]], step: int | None = None, whole: bool = True) -> str:
    rows = [r for r in rewards if whole or r["step"] == step]
    if not rows:
        return "_no rewards_"
    lines = ["| step | role | kind | value | source | answer | at |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {'' if r['step'] is None else r['step']} | {r['role']} | {r['kind']} | {r['value']:g} | "
            f"{r['source']} | {as_text(r['answer'])} | {(r['created_at'] or '')[:19]} |"
        )
    return "\n".join(lines)


def run_summary(run: dict[str, Any]) -> str:
    options = "; ".join(as_text(o) for o in run["options"]) or "—"
    gold = as_text(run["gold_answer"]) or "—"
    answer = as_text(run["answer"]) or "—"
    lines = [
        f"### Run `{run['run_id']}` · {run['status']}",
        f"**Question:** {as_text(run['question'])}",
        f"**Options:** {options}  ·  **gold:** {gold}  ·  **difficulty:** {run['difficulty']}",
        f"**Answer:** {answer} ({run['answer_status'] or '—'})",
        f"**Graph path:** {graph_path(run)}",
        f"created {run['created_at']} · {run['wall_s'] or 0:.2f} s wall · source {run['source']} · "
        f"thread {as_text(run['thread_id'])}",
    ]
    if run["error"]:
        lines.append(f"**Error:** {as_text(run['error'])}")
    lines += ["", "**Rewards**", "", _rewards_md(run["rewards"])]
    return "\n\n".join(lines)


def step_title(st: dict[str, Any]) -> str:
    who = st["node"] + (f" · {st['specialty']}" if st["specialty"] else "")
    return (
        f"{st['seq']}. {who} — parse {st['parse_status']} — {st['latency_s']:.2f} s — "
        f"{st['prompt_tokens']}+{st['completion_tokens']} tokens"
    )


def run_images(store: TrajectoryStore, run: dict[str, Any]) -> list[tuple[Image.Image, str]]:
    out = []
    for i, sha in enumerate(run["images"]):
        data = store.image_bytes(sha)
        if data is not None:
            out.append((Image.open(io.BytesIO(data)), f"image {i + 1} · {sha[:12]}"))
    return out


@dataclass
class TracesTab:
    """What the app wires to: open a run by id, refresh the run list."""

    run_id: gr.Textbox
    open_run: Callable[[str], tuple[Any, ...]]
    open_outputs: list[Any]
    open_case: gr.Button
    search: Callable[..., tuple[Any, ...]]
    search_inputs: list[Any]
    search_outputs: list[Any]


def build_traces_tab(store: TrajectoryStore, downloads: Path) -> TracesTab:
    """Render the traces tab's components inside the current ``gr.Tab``; run downloads go to ``downloads``."""
    downloads.mkdir(parents=True, exist_ok=True)
    with gr.Row(elem_id="traces-filters"):
        status = gr.Dropdown([ANY, *RUN_STATUSES], value=ANY, label="Status", scale=1)
        policy = gr.Dropdown([("any", ANY)], value=ANY, label="Policy version", scale=2)
        since = gr.Textbox(
            label="From (YYYY-MM-DD)", placeholder="2026-11-24", scale=1, elem_id="traces-from"
        )
        until = gr.Textbox(label="To (YYYY-MM-DD)", placeholder="2026-11-24", scale=1, elem_id="traces-to")
        difficulty = gr.Dropdown([ANY, *LEVELS, NO_DIFFICULTY], value=ANY, label="Difficulty", scale=1)
        search = gr.Button("Search", variant="primary", scale=0, elem_id="traces-search")
    filter_note = gr.Markdown(elem_id="traces-error", elem_classes=["inline-error"])
    table = gr.Dataframe(
        headers=RUN_COLUMNS,
        interactive=False,
        max_height=320,
        elem_id="runs-table",
        wrap=True,
        column_widths=["110px", "150px", "110px", "260px", "60px", "60px", "80px", "140px", "160px", "60px"],
    )
    with gr.Row():
        run_id = gr.Textbox(
            label="Run id", placeholder="click a row, or paste a run id", scale=4, elem_id="trace-run-id"
        )
        open_button = gr.Button("Open run", scale=0, elem_id="trace-open")
        open_case = gr.Button("Open case in Chat", scale=0, elem_id="trace-open-case")
    summary = gr.Markdown(elem_id="trace-summary")
    gallery = gr.Gallery(
        label="Images of the case",
        columns=8,
        height=180,
        fit_columns=False,
        object_fit="contain",
        preview=False,
        visible=False,
    )
    views = build_run_views(store)  # timeline, graph picture, comparison (ui/run_views.py)
    record = gr.State(None)

    @gr.render(inputs=[record])
    def _steps(run: dict[str, Any] | None) -> None:
        if not run:
            return
        gr.Markdown("#### Steps (each model call, in order)")
        for st in run["steps"]:
            with gr.Accordion(step_title(st), open=False, elem_classes=["trace-step"]):
                gr.Markdown(
                    f"model {as_text(st['model_id'])} · policy {as_text(st['policy'])} · images "
                    f"{', '.join(h[:12] for h in st['image_refs']) or '—'} · started {st['started_at']}"
                )
                gr.JSON(
                    st["messages"],
                    label="Exact prompt (image blocks = the case's images, in order)",
                    open=True,
                )
                gr.Textbox(st["completion"], label="Raw completion", lines=3, max_lines=15, buttons=["copy"])
                gr.JSON(st["parsed"], label="Parsed result")
                gr.Markdown(_rewards_md(run["rewards"], st["seq"], whole=False))

    with gr.Accordion("Run as JSON", open=False):
        download = gr.DownloadButton("Download run JSON", visible=False, elem_id="trace-download")
        as_json = gr.JSON(label="run")

    def do_search(st: str, pol: str, a: str, b: str, diff: str) -> tuple[Any, ...]:
        policies = gr.Dropdown(choices=policy_choices(store), value=pol)
        try:
            flt = run_filter(st, pol, a, b, diff)
        except FilterError as exc:  # the table keeps what it showed; the message says what to fix
            return gr.skip(), policies, f"⚠️ {exc} The list below is unchanged."
        return run_rows(store, flt), policies, ""

    def do_open(rid: str) -> tuple[Any, ...]:
        run = run_record(store, rid or "") if (rid or "").strip() else None
        if run is None:
            message = f"No run “{as_text(rid.strip())}”." if (rid or "").strip() else "Pick a run first."
            return message, gr.Gallery(visible=False), None, None, gr.DownloadButton(visible=False)
        path = downloads / f"run-{run['run_id']}.json"
        path.write_text(json.dumps(run, indent=2))
        images = run_images(store, run)
        hashes_only = (
            "\n\n_Images stored as hashes only (no pixels)._" if run["images"] and not images else ""
        )
        return (
            run_summary(run) + hashes_only,
            gr.Gallery(value=images, visible=bool(images)),
            run,
            run,
            gr.DownloadButton(value=str(path), visible=True),
        )

    def do_select(evt: gr.SelectData) -> str:
        return str(evt.row_value[RUN_COLUMNS.index("run")]) if evt.row_value else ""

    filters = [status, policy, since, until, difficulty]
    open_outputs = [summary, gallery, record, as_json, download]
    search_outputs = [table, policy, filter_note]
    search.click(do_search, filters, search_outputs, api_name="search_runs")
    for box in (since, until):
        box.submit(do_search, filters, search_outputs, api_visibility="private")
    table.select(do_select, None, run_id, api_visibility="private").then(
        do_open, run_id, open_outputs, api_visibility="private"
    )
    open_button.click(do_open, run_id, open_outputs, api_name="open_run")
    record.change(views.show, record, views.outputs, api_visibility="private")
    run_id.submit(do_open, run_id, open_outputs, api_visibility="private")
    return TracesTab(run_id, do_open, open_outputs, open_case, do_search, filters, search_outputs)
