"""A TaskGroup for an object's own background tasks that leaves its caller's errors alone.

`async with asyncio.TaskGroup()` wraps an exception raised in its body in an ExceptionGroup,
so a context manager that runs background tasks in one (the mesh Endpoint, test stand-ins)
would hand its caller `ExceptionGroup([the caller's own error])`. `BackgroundTasks` tells
the group of a cancellation only: a failed background task still cancels the body and
then fails it as a TaskGroup does, but an error the body raised reaches the caller as itself
(with background failures found while closing attached as a note). The owner cancels its
long-running tasks before the block ends (the group waits for them, as a TaskGroup does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

_T = TypeVar("_T")


class BackgroundTasks:
    """`async with BackgroundTasks() as tasks: tasks.create_task(...)` (see the module doc)."""

    def __init__(self) -> None:
        self._group = asyncio.TaskGroup()

    def create_task(
        self, coro: Coroutine[Any, Any, _T], *, name: str | None = None
    ) -> asyncio.Task[_T]:
        return self._group.create_task(coro, name=name)

    async def __aenter__(self) -> BackgroundTasks:
        await self._group.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, asyncio.CancelledError):
            await self._group.__aexit__(exc_type, exc, tb)
            return
        try:
            await self._group.__aexit__(None, None, None)
        except BaseExceptionGroup as group:
            exc.add_note(f"background tasks failed too: {group!r}")
