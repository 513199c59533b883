"""Status watchers: admins following `fleetctl status --watch`.

Each watcher has a bounded queue that the service fills without waiting. A watcher whose
reader falls behind by more than the bound is cut off (its stream is closed and the admin
can reconnect for a fresh snapshot) rather than slowing down the coordinator or growing
memory without limit.
"""

from __future__ import annotations

import asyncio
import collections

from fleet.protocol.messages import DeviceStatus

WATCH_QUEUE = 4096


class WatcherOverflow(Exception):
    """The watcher fell too far behind and was disconnected."""


class StatusWatcher:
    def __init__(self, limit: int = WATCH_QUEUE) -> None:
        self._limit = limit
        self._queue: collections.deque[DeviceStatus] = collections.deque()
        self._wakeup = asyncio.Event()
        self.overflowed = False
        self.closed = False

    def offer(self, row: DeviceStatus) -> bool:
        """Queue one update; False (and the watcher is done) if it was already full."""
        if self.overflowed or self.closed:
            return False
        if len(self._queue) >= self._limit:
            self.overflowed = True
            self._queue.clear()
            self._wakeup.set()
            return False
        self._queue.append(row)
        self._wakeup.set()
        return True

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()

    async def next(self, timeout: float | None = None) -> DeviceStatus:
        """The next update; WatcherOverflow if cut off, EOFError once closed."""
        async with asyncio.timeout(timeout):
            while True:
                if self.overflowed:
                    raise WatcherOverflow(f"status watcher fell behind by {self._limit} updates")
                if self._queue:
                    return self._queue.popleft()
                if self.closed:
                    raise EOFError("status watch closed")
                self._wakeup.clear()
                await self._wakeup.wait()

    def __len__(self) -> int:
        return len(self._queue)
