"""The trainers' tab: what the store holds (by role, difficulty, policy), rewards, and export."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from data.difficulty import LEVELS
from data.export import FORMATS, ExportError, ExportFilter, count_rows, export, parse_since
from data.schema import FINISHED_STATUSES, ROLES
from data.store import TrajectoryStore
from ui.policy_names import policy_names
from ui.queries import reward_histogram, step_counts
from ui.text import as_text
from ui.user_errors import user_error

log = logging.getLogger(__name__)

COUNT_COLUMNS = ["role", "policy version", "difficulty", "steps", "runs"]


def counts_table(store: TrajectoryStore) -> list[list[Any]]:
    counts = step_counts(store)
    names = policy_names(store, [c["policy_version"] for c in counts])
    return [
        [
            c["role"],
            names[c["policy_version"]],
            c["difficulty"],
            c["steps"],
            c["runs"],
        ]
        for c in counts
    ]


def reward_frame(store: TrajectoryStore) -> pd.DataFrame:
    """One bar per role/kind, split by reward value, with its count."""
    rows = [
        {"value": f"{h['value']:g}", "count": h["count"], "reward": f"{h['role']} · {h['kind']}"}
        for h in reward_histogram(store)
    ]
    return pd.DataFrame(rows, columns=["value", "count", "reward"])


def overview(store: TrajectoryStore) -> str:
    counts = step_counts(store)
    hist = reward_histogram(store)
    steps = sum(c["steps"] for c in counts)
    clinician = sum(h["count"] for h in hist if h["kind"] == "clinician")
    by_role = {}
    for c in counts:
        by_role[c["role"]] = by_role.get(c["role"], 0) + c["steps"]
    roles = " · ".join(f"{r}: {n}" for r, n in sorted(by_role.items())) or "none yet"
    return f"**{steps}** stored steps ({roles}) · **{clinician}** clinician verdicts"


def export_download(
    store: TrajectoryStore,
    flt: ExportFilter,
    fmt: str,
    workdir: Path,
    on_rows: Callable[[int], None] | None = None,
) -> tuple[Path, int]:
    """Export as the CLI does, into a fresh folder; returns one downloadable file and the row count.

    parquet is one file; jsonl (rows + image files) and hf (a dataset folder) come zipped.
    """
    _prune(workdir)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    name = f"mmedagent-{flt.role}-{fmt}-{stamp}"
    out = Path(tempfile.mkdtemp(prefix="export-", dir=workdir)) / name
    result = export(store, flt, fmt, out, on_rows=on_rows)
    if fmt == "parquet":
        path = result.path.rename(out.parent / f"{name}.parquet")
    else:
        path = Path(shutil.make_archive(str(out.parent / name), "zip", root_dir=out.parent, base_dir=name))
    shutil.rmtree(out)
    return path, result.rows


def _prune(workdir: Path, max_age_s: float = 3600.0) -> None:
    """Drop exports older than an hour (Gradio has served its own copy of each by then)."""
    now = time.time()
    for old in workdir.glob("export-*"):
        if now - old.stat().st_mtime > max_age_s:
            shutil.rmtree(old, ignore_errors=True)


@dataclass
class TrajectoriesTab:
    refresh: Callable[[], tuple[Any, ...]]
    refresh_outputs: list[Any]


def build_trajectories_tab(store: TrajectoryStore, workdir: Path) -> TrajectoriesTab:
    """Render the trajectories tab's components inside the current ``gr.Tab``; exports go to ``workdir``."""
    summary = gr.Markdown(elem_id="traj-summary")
    with gr.Row():
        counts = gr.Dataframe(
            headers=COUNT_COLUMNS,
            interactive=False,
            label="Steps by role, policy version and difficulty",
            elem_id="traj-counts",
            scale=1,
        )
        plot = gr.BarPlot(
            pd.DataFrame(columns=["value", "count", "reward"]),
            x="reward",
            y="count",
            color="value",
            title="Rewards (rows per value)",
            x_title="reward (role · kind)",
            y_title="rows",
            x_label_angle=-30,
            label="Rewards",
            elem_id="traj-rewards",
            scale=1,
        )
    refresh_button = gr.Button("Refresh", elem_id="traj-refresh", scale=0)
    gr.Markdown("### Export (one row per model call, as `mmedagent export`)")
    with gr.Row():
        role = gr.Dropdown(list(ROLES), value="attending", label="Role", elem_id="export-role")
        fmt = gr.Dropdown(list(FORMATS), value="parquet", label="Format", elem_id="export-format")
        status = gr.Dropdown(["any", *FINISHED_STATUSES], value="ok", label="Run status")
        since = gr.Textbox(label="Since (ISO date, or 24h / 7d / 2w)", elem_id="export-since")
    with gr.Row():
        difficulty = gr.CheckboxGroup(list(LEVELS), label="Difficulty (none ticked: all)")
        with_gold = gr.Checkbox(label="Only cases with a gold label")
        run_export = gr.Button("Export", variant="primary", elem_id="export-run", scale=0)
    export_note = gr.Markdown(elem_id="export-status")
    download = gr.File(label="Exported dataset", interactive=False, elem_id="export-file")
    workdir.mkdir(parents=True, exist_ok=True)

    def refresh() -> tuple[Any, ...]:
        return overview(store), counts_table(store), reward_frame(store)

    def do_export(
        role_: str,
        fmt_: str,
        status_: str,
        since_: str,
        levels: list[str],
        gold: bool,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - gradio's way to inject progress
    ) -> tuple[str, str | None]:
        try:
            since = parse_since(since_) if (since_ or "").strip() else None
        except ExportError:
            return (
                f"⚠️ **Since**: {as_text(repr(since_.strip()))} is neither a date (2026-11-24) nor a "
                "look-back such as 24h, 7d or 2w. Nothing was exported.",
                None,
            )
        flt = ExportFilter(
            role=role_,
            since=since,
            status=None if status_ == "any" else status_,
            with_gold=gold,
            difficulty=levels or None,
        )
        total = count_rows(store, flt)
        if total == 0:
            return "No stored steps match these filters; nothing exported.", None
        done = 0

        def on_rows(n: int) -> None:
            nonlocal done
            done += n
            progress(done / total, desc=f"{done}/{total} rows")

        try:
            path, rows = export_download(store, flt, fmt_, workdir, on_rows)
        except ImportError as exc:  # parquet/hf need the train extra's pyarrow + datasets
            raise user_error(f"{fmt_} export needs {exc.name}: pip install 'mmedagent-rl[train]'") from None
        log.info("UI export: %d %s rows as %s", rows, role_, fmt_)
        return f"Exported **{rows}** {role_} rows as {fmt_} (`{path.name}`).", str(path)

    outputs = [summary, counts, plot]
    refresh_button.click(refresh, None, outputs, api_name="trajectory_stats")
    run_export.click(
        do_export,
        [role, fmt, status, since, difficulty, with_gold],
        [export_note, download],
        api_name="export",
        concurrency_limit=1,
    )
    return TrajectoriesTab(refresh, outputs)
