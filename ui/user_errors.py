"""Errors that are the user's own (a mistyped run id, a missing extra): one log line, no traceback.

Gradio prints the traceback of every ``gr.Error`` unless told not to; tracebacks are kept for bugs.
Its toasts render HTML, so the message is shown escaped (a pasted ``<b>`` stays text).
"""

from __future__ import annotations

import logging
from html import escape

import gradio as gr

log = logging.getLogger(__name__)


def user_error(message: str) -> gr.Error:
    """The ``gr.Error`` to raise for ``message`` (shown as text), logged as one line."""
    log.info("refused: %s", message)
    return gr.Error(escape(message, quote=False), print_exception=False)
