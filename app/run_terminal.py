"""Stored runs in the terminal (rich): the whole run, its timeline, two runs side by side."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from data.run_view import Bar, DiffRow, run_mode, timeline

BAR_WIDTH = 48
# Colours per batch in the timeline (cycled): calls of one batched generate share a colour.
BATCH_STYLES = ("cyan", "magenta", "yellow", "green", "blue", "bright_red")


def _rewards_of(report: dict[str, Any], seq: int | None) -> str:
    rows = [r for r in report["rewards"] if r["step"] == seq]
    return ", ".join(f"{r['kind']}={r['value']:g} ({r['source']})" for r in rows) or "—"


def print_run(console: Console, report: dict[str, Any]) -> None:
    """A run with every step: prompt-free summary, completion, parse, policy version, rewards."""
    console.print(
        f"[bold]run {report['run_id']}[/bold] {report['status']} {report['error'] or ''}", highlight=False
    )
    console.print(f"question: {report['question']}  options: {report['options']}", highlight=False)
    console.print(
        f"mode: {run_mode(report)}  gold answer: {report['gold_answer'] or '—'}  "
        f"gold specialty: {report['gold_specialty'] or '—'}",
        highlight=False,
    )
    for st in report["steps"]:
        who = st["node"] + (f" ({st['specialty']})" if st["specialty"] else "")
        console.print(
            f"\n[bold]{who}[/bold] model={st['model_id']} policy version={st['policy_version_id'] or '—'} "
            f"parse={st['parse_status']} tokens={st['prompt_tokens']}+{st['completion_tokens']} "
            f"{st['latency_s']:.3f}s",
            highlight=False,
        )
        console.print(st["completion"], highlight=False, markup=False)
        console.print(f"rewards: {_rewards_of(report, st['seq'])}", highlight=False)
    run_rewards = [r for r in report["rewards"] if r["step"] is None]
    if run_rewards:
        console.print(f"\nrun rewards: {_rewards_of(report, None)}", highlight=False)
    console.print(
        f"\nanswer: {report['answer']} ({report['answer_status']})  gold: {report['gold_answer'] or '—'}",
        highlight=False,
    )


def _bar_cells(bar: Bar, scale: float, style: str) -> Text:
    """The bar: ``·`` for the wait, ``█`` for the model call, from the call's start."""
    start = round(bar.start_s * scale)
    wait = round((bar.start_s + bar.wait_s) * scale) - start
    model = max(1, round(bar.end_s * scale) - start - wait)
    text = Text(" " * start)
    text.append("·" * wait, style="dim")
    text.append("█" * model, style=style)
    return text


def timeline_table(report: dict[str, Any], width: int = BAR_WIDTH) -> Group:
    """The run's model calls on one time axis (``width`` characters), calls of one batched
    generate in one colour."""
    bars = timeline(report)
    total = max([b.end_s for b in bars] + [report.get("wall_s") or 0.0, 1e-9])
    scale = width / total
    styles: dict[str, str] = {}
    table = Table(title=f"timeline of run {report['run_id']} ({total:.2f} s)", title_justify="left")
    for col in ("#", "call", "batch", "start s", "wait s", "model s", "tokens in/out"):
        numeric = col.endswith(("s", "out"))
        table.add_column(col, justify="right" if numeric else "left", no_wrap=numeric, min_width=len(col))
    table.add_column(f"0 … {total:.2f} s", no_wrap=True, min_width=width)
    for bar in bars:
        style = "white"
        if bar.batch:
            style = styles.setdefault(bar.batch, BATCH_STYLES[len(styles) % len(BATCH_STYLES)])
        if bar.parse_status == "failed":
            style = "red"
        batch = f"{bar.batch} ({bar.batch_size})" if bar.batch else "—"
        table.add_row(
            str(bar.seq),
            bar.label,
            Text(batch, style=style if bar.batch else ""),
            f"{bar.start_s:.3f}",
            f"{bar.wait_s:.3f}",
            f"{bar.model_s:.3f}",
            f"{bar.prompt_tokens}/{bar.completion_tokens}",
            _bar_cells(bar, scale, style),
        )
    shared = [b for b in {b.batch for b in bars if b.batch} if sum(x.batch == b for x in bars) > 1]
    together = [f"{b}: {', '.join(x.label for x in bars if x.batch == b)}" for b in sorted(shared)]
    legend = Text(
        "· wait (queueing, batching, pre/post-processing)  █ model call"
        + "".join(f"\n{line}" for line in together)
        + "\nbatch (n): n requests in that batched generate, other runs' included",
        style="dim",
    )
    return Group(table, legend)


def diff_table(a: dict[str, Any], b: dict[str, Any], rows: list[DiffRow]) -> Table:
    """Two runs side by side; changed rows marked ``≠`` and highlighted."""
    table = Table(title="run comparison (≠ marks a difference)", title_justify="left")
    table.add_column("", no_wrap=True)
    table.add_column("field", no_wrap=True)
    table.add_column(f"A {a['run_id'][:12]}", overflow="fold")
    table.add_column(f"B {b['run_id'][:12]}", overflow="fold")
    for r in rows:
        style = "bold yellow" if r.changed else ""
        table.add_row("≠" if r.changed else "", r.field, Text(r.a, style=style), Text(r.b, style=style))
    return table
