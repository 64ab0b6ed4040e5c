"""Two runs side by side as an HTML table, differences marked (data.run_view.diff_runs)."""

from __future__ import annotations

from html import escape
from typing import Any

from data.run_view import diff_runs

STYLE = """
<style>
#run-diff table { border-collapse: collapse; width: 100%; font-size: 0.9em; }
#run-diff th, #run-diff td { border: 1px solid #e5e7eb; padding: 4px 8px; text-align: left;
  vertical-align: top; overflow-wrap: anywhere; }
#run-diff tr.changed td { background: #fef3c7; }
#run-diff tr.changed td.mark { color: #b45309; font-weight: bold; }
</style>
"""


def _named_case(run: dict[str, Any]) -> dict[str, Any]:
    """The run with the case it belongs to: its benchmark case id, else its chat case (thread)."""
    return {**run, "case_id": run.get("case_id") or run.get("thread_id")}


def diff_html(a: dict[str, Any], b: dict[str, Any]) -> str:
    """The comparison table; changed rows have class ``changed`` and a ≠ mark."""
    rows = diff_runs(_named_case(a), _named_case(b))
    n_changed = sum(r.changed for r in rows)
    body = "".join(
        f'<tr class="{"changed" if r.changed else "same"}" data-field="{escape(r.field)}">'
        f'<td class="mark">{"≠" if r.changed else ""}</td><td>{escape(r.field)}</td>'
        f"<td>{escape(r.a)}</td><td>{escape(r.b)}</td></tr>"
        for r in rows
    )
    return (
        f'{STYLE}<div id="run-diff"><p>{n_changed} of {len(rows)} fields differ (≠).</p><table>'
        f"<thead><tr><th></th><th>field</th><th>A <code>{escape(a['run_id'])}</code></th>"
        f"<th>B <code>{escape(b['run_id'])}</code></th></tr></thead><tbody>{body}</tbody></table></div>"
    )
