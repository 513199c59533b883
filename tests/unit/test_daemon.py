"""Running a daemon until SIGTERM/SIGINT: a real signal to this process ends it cleanly,
the agent's way (it winds down itself) or by cancellation, and its own errors pass as such."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterable, Mapping
from typing import Any

import pytest
import structlog

from fleet.daemon import run_until_signal

WAIT = 5.0


def shutdown_events(logs: Iterable[Mapping[str, Any]]) -> list[Any]:
    return [e["event"] for e in logs if e.get("action") == "shutdown"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_cancels_the_daemon_and_returns_normally(sig: signal.Signals) -> None:
    started = asyncio.Event()
    unwound: list[str] = []

    async def daemon() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            unwound.append("cleanup ran")

    async def send() -> None:
        await started.wait()
        os.kill(os.getpid(), sig)

    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tasks:
            tasks.create_task(send())
            await run_until_signal(daemon(), "relay")
    assert unwound == ["cleanup ran"]
    assert shutdown_events(logs) == ["relay_signal"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers are removed again
    assert signal.getsignal(signal.SIGINT) == signal.default_int_handler


async def test_with_a_stop_event_the_daemon_winds_down_itself() -> None:
    stop = asyncio.Event()
    steps: list[str] = []

    async def daemon() -> None:
        await stop.wait()
        steps.append("stop seen")
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal while winding down
        await asyncio.sleep(0.05)  # e.g. an activation finishing: not cut short
        steps.append("finished")

    async def send() -> None:
        await asyncio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tasks:
            tasks.create_task(send())
            await run_until_signal(daemon(), "agent", stop=stop)
    assert steps == ["stop seen", "finished"]
    assert shutdown_events(logs) == ["agent_signal"]  # once, however many signals


async def test_the_daemons_own_error_reaches_the_caller_as_itself() -> None:
    async def daemon() -> None:
        raise OSError(98, "Address already in use")

    with pytest.raises(OSError, match="Address already in use"):
        await run_until_signal(daemon(), "coordinator")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


async def test_a_cancellation_that_is_not_a_signal_is_not_swallowed() -> None:
    started = asyncio.Event()

    async def daemon() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(run_until_signal(daemon(), "relay"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
