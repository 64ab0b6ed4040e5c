"""User and model text on the pages and in the downloads is what was typed (issue 32).

``as_text`` is checked with a real Markdown renderer (markdown-it, CommonMark with GFM tables and
strikethrough): whatever the text, the rendered HTML shows it verbatim and holds no element of its
own. The run JSON and the parquet export keep hostile text verbatim, on SQLite and PostgreSQL.
The browser tests are in tests/test_ui_shown_as_asked.py.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pandas as pd
import pytest
from markdown_it import MarkdownIt

from app.config import Settings
from app.runtime import CaseRequest, Runtime
from data.export import ExportFilter
from data.schema import ROLES
from data.synthetic import make_case
from tests.scripted import ScriptedBackend
from ui.text import as_text
from ui.traces import run_record, run_summary
from ui.trajectories import export_download

HOSTILE = "<b>bold</b> <img src=x onerror=alert(1)> <script>alert(1)</script>"
TEXTS = [
    HOSTILE,
    "**bold** _it_ `code` ~~gone~~ [link](http://x.org) ![img](x.png) <https://x.org> user@x.org",
    "# heading\n1. one\n12) two\n- item\n+ plus\n> quote\n---\ntext\n===\n| a | b |\n|---|---|\n| c | d |",
    "back\\slash \\* &amp; &lt;b&gt; a < b > c & d $$x^2$$ \\(x\\) {braces} #tag 3.5 a=b",
    "Q: Is it A) or B)? 50% ~ 1+1=2! (yes)",
]


class _Rendered(HTMLParser):
    """The text and the element names of rendered HTML."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text, self.tags = "", []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text += data


def render(markdown: str) -> _Rendered:
    parsed = _Rendered()
    parsed.feed(MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(markdown))
    return parsed


@pytest.mark.parametrize("text", TEXTS)
def test_as_text_renders_as_the_text_itself(text):
    one_line = text.replace("\n", " ")  # a paragraph's lines: Markdown joins them
    shown = render(as_text(one_line))
    assert shown.tags == ["p"] and shown.text.strip() == one_line
    assert render(f"**Question:** {as_text(one_line)}").text.strip() == f"Question: {one_line}"


def test_as_text_keeps_lines_as_lines():
    shown = render(as_text(TEXTS[2]))
    assert shown.tags == ["p"] and shown.text.strip() == TEXTS[2]
    assert as_text(None) == "" and as_text("") == ""


def test_run_json_and_export_keep_hostile_text_verbatim(tmp_path, db_url):
    question, options = f"Is it {HOSTILE}?", [f"A) {HOSTILE}", "B) Normal"]
    said = f"<think>{HOSTILE}</think><answer>A) {HOSTILE}</answer>"
    runtime = Runtime(
        Settings(home=tmp_path / "home", db_url=db_url, model="scripted"),
        backends=dict.fromkeys(ROLES, ScriptedBackend(lambda _: said)),
    )
    try:
        request = CaseRequest.from_synthetic(make_case(0), gold=False, question=question, options=options)
        result = runtime.ask(request)
        run = json.loads(json.dumps(run_record(runtime.store, result.run_id), indent=2))
        assert (run["question"], run["options"], run["answer"]) == (question, options, f"A) {HOSTILE}")
        assert all(st["completion"] == said for st in run["steps"])
        assert HOSTILE not in run_summary(run)  # the page's Markdown holds it escaped only
        path, rows = export_download(runtime.store, ExportFilter(role="attending"), "parquet", tmp_path)
        frame = pd.read_parquet(path)
        assert rows == 1 and frame["question"].tolist() == [question]
        assert frame["options"].map(list).tolist() == [options]
    finally:
        runtime.close()
