"""The agent's outbox: what it has to tell the coordinator, kept across reconnects.

Created first, before the Updater that publishes into it and the session that drains it,
so every part holds the same one and none has to wait for it to exist. It opens every
session too: `hello()` is the agent's Hello as of now (its `hello` is given at creation).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

from fleet.protocol.messages import AnnouncementRejected, Hello, StatusReport
from fleet.wire import Message


class Outbox:
    """Messages for the coordinator, in order; on reconnect only the latest status matters."""

    def __init__(self, latest: StatusReport, hello: Callable[[], Hello], limit: int = 256) -> None:
        self.latest = latest
        self.hello = hello  # what opens a session: the agent's state when it is sent
        self._queue: collections.deque[Message] = collections.deque(maxlen=limit)
        self._ready = asyncio.Event()

    def put_status(self, report: StatusReport) -> None:
        self.latest = report
        self.put(report)

    def put(self, message: Message) -> None:
        self._queue.append(message)
        self._ready.set()

    def resync(self) -> None:
        """After (re)connecting: the current status first, then rejections not sent yet.

        Old status reports are dropped (only the latest matters), but a rejection is the only
        word the coordinator gets of a refused announcement, so it survives the reconnect.
        """
        kept = [m for m in self._queue if isinstance(m, AnnouncementRejected)]
        self._queue.clear()
        self.put(self.latest)
        for message in kept:
            self.put(message)

    def requeue(self, message: Message) -> None:
        """A message whose sending failed goes first again (kept by resync if it matters)."""
        self._queue.appendleft(message)
        self._ready.set()

    async def get(self) -> Message:
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()
