"""Driving a sans-IO machine's timer from asyncio: one loop timer that follows `get_timer()`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class DeadlineTimer:
    """Calls `callback` at the machine's next deadline; re-armed only when the deadline moves.

    Sans-IO cores (QUIC connections, relay sessions) say when they next need `handle_timer`;
    the adapter calls `set(machine.get_timer())` after feeding them and this keeps exactly one
    `call_at` handle for it, so a busy connection does not churn the event loop's heap.
    """

    __slots__ = ("_at", "_callback", "_handle", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._at: float | None = None

    @property
    def at(self) -> float | None:
        return self._at

    def set(self, at: float | None) -> None:
        if at == self._at:
            return
        self.cancel()
        self._at = at
        if at is not None:
            self._handle = self._loop.call_at(at, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._at = None

    def _fire(self) -> None:
        self._handle = None
        self._at = None
        self._callback()
