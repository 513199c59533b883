"""Running a daemon until SIGTERM or SIGINT, the same way for the relay, coordinator and agent.

A signal is logged once as `<role>_signal` and ends the daemon in one of two ways: it cancels
the daemon (the relay and coordinator unwind through their TaskGroups), or, for a daemon that
must wind down itself (the agent lets an activation finish), it sets the daemon's `stop` event.
Either way the daemon then returns normally and the command exits 0. Whatever else the daemon
raises reaches the caller as itself, so the CLI can name the cause in one line.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any

from fleet.log import get_logger

SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def run_until_signal(
    daemon: Coroutine[Any, Any, None], role: str, *, stop: asyncio.Event | None = None
) -> None:
    """Await `daemon` until it ends, or until SIGTERM/SIGINT ends it (see the module)."""
    task = asyncio.current_task()
    assert task is not None  # a coroutine always runs in a task
    loop = asyncio.get_running_loop()
    signalled = False

    def on_signal() -> None:
        nonlocal signalled
        if signalled:
            return  # the daemon is already stopping; a second signal must not cut it short
        signalled = True
        get_logger(f"fleet.{role}").info(f"{role}_signal", action="shutdown")
        if stop is None:
            task.cancel()
        else:
            stop.set()

    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    try:
        await daemon
    except asyncio.CancelledError:
        if not signalled or stop is not None:
            raise  # cancelled by someone else: not ours to swallow
        task.uncancel()
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
