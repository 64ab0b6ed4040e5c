"""Text that users typed or models wrote, placed in Markdown: shown as written, never rendered."""

from __future__ import annotations

import html
import re

# What Markdown (CommonMark, GFM tables and strikethrough, LaTeX's $$) reads as syntax anywhere in
# a line; each is shown as itself behind a backslash. & < > become HTML entities.
_INLINE = re.compile(r"([\\`*_\[\]|~$])")
# What opens a heading, a list or a rule (or underlines a heading) at the start of a line only.
_LINE_START = re.compile(r"^([ \t]*)([#+=-]|\d+[.)])", re.MULTILINE)


def as_text(text: str | None) -> str:
    """``text`` for a Markdown component: HTML and Markdown in it are shown literally (None: "")."""
    escaped = _INLINE.sub(r"\\\1", text or "")
    escaped = _LINE_START.sub(lambda m: f"{m[1]}{m[2][:-1]}\\{m[2][-1]}", escaped)
    return html.escape(escaped, quote=False)
