"""At most ``slots`` cases run at once; the others wait in arrival order and can see their place.

Gradio's own queue hides a waiting event behind a "queue 1/1" badge before its function starts,
so the chat's handler starts at once (to show the question and image) and waits here instead.
"""

from __future__ import annotations

import threading


class CaseQueue:
    """A first-come, first-served gate in front of the runtime."""

    def __init__(self, slots: int):
        self.slots = max(1, slots)
        self._cond = threading.Condition()
        self._waiting: list[object] = []
        self._running: set[object] = set()

    def enter(self) -> object:
        """Join the line; returns the ticket to pass to :meth:`place` and :meth:`leave`."""
        ticket = object()
        with self._cond:
            self._waiting.append(ticket)
        return ticket

    def place(self, ticket: object) -> int:
        """0 when the ticket may run now (it then holds a slot), else its place in line (1: next)."""
        with self._cond:
            if ticket in self._running:
                return 0
            index = self._waiting.index(ticket)
            if index == 0 and len(self._running) < self.slots:
                self._waiting.pop(0)
                self._running.add(ticket)
                return 0
            return index + 1

    def wait(self, timeout: float = 1.0) -> None:
        """Sleep until a slot frees or ``timeout`` passes."""
        with self._cond:
            self._cond.wait(timeout)

    def leave(self, ticket: object) -> None:
        """Give back the slot, or the place in line (the browser went away while waiting)."""
        with self._cond:
            self._running.discard(ticket)
            if ticket in self._waiting:
                self._waiting.remove(ticket)
            self._cond.notify_all()
