"""Errors that are the user's own (a mistyped run id, a missing extra): one log line, no traceback.

Gradio prints the traceback of every ``gr.Error`` unless told not to; tracebacks are kept for bugs.
"""

from __future__ import annotations

import logging

import gradio as gr

log = logging.getLogger(__name__)


def user_error(message: str) -> gr.Error:
    """The ``gr.Error`` to raise for ``message``, logged as one line."""
    log.info("refused: %s", message)
    return gr.Error(message, print_exception=False)
