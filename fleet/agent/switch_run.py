"""One run of switch-to-configuration as the agent records it: before it starts, when it ends.

The record (kept in the state file, fleet/agent/state.py) is what recovery after a crash
relies on: a run recorded as started but not finished was interrupted, whatever the profile
link says. It names the process (pid, its start time in clock ticks since boot, and the boot
id), so that after a restart the agent can tell whether the switch outlived it (a kill of the
agent alone, or a switch outside the agent's cgroup) without mistaking a reused pid for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class Purpose(enum.StrEnum):
    ACTIVATE = "activate"  # the announced system
    ROLLBACK = "rollback"  # re-activating the previous system after a failure


@dataclass(frozen=True)
class SwitchRun:
    sequence: int  # the announcement this run belongs to
    system: str  # the store path whose switch-to-configuration runs
    action: str
    purpose: Purpose
    attempt: int  # 1, or 2 when recovery re-ran it
    started_at: float
    boot_id: str
    reason: str | None = None  # for a rollback: why (the error being undone)
    pid: int | None = None  # known once the process exists
    pid_start: int | None = None  # /proc/PID/stat starttime: a reused pid has another
    finished_at: float | None = None
    exit_code: int | None = None  # None when finished without an exit code (timeout)

    @property
    def finished(self) -> bool:
        return self.finished_at is not None


def boot_id() -> str:
    """This boot's id (a process of another boot is certainly gone); "" if unknown."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of process `pid`, if any."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may hold spaces and ")"
    try:
        return fields[0], int(fields[19])  # fields 3 and 22 of proc(5)
    except (IndexError, ValueError):
        return None


def process_start(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot, None if there is none."""
    stat = _stat(pid)
    return stat[1] if stat is not None else None


def is_running(run: SwitchRun) -> bool:
    """The recorded process is still alive (same boot, same pid, same start time, and not a
    zombie waiting to be reaped)."""
    if run.finished or run.pid is None or run.pid_start is None:
        return False
    if run.boot_id != boot_id():
        return False
    stat = _stat(run.pid)
    return stat is not None and stat[0] not in ("Z", "X") and stat[1] == run.pid_start


async def wait_until_gone(run: SwitchRun, timeout: float, poll: float = 0.1) -> bool:
    """Wait up to `timeout` for the recorded process to end; False if it is still running."""
    deadline = time.monotonic() + timeout
    while is_running(run):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll)
    return True


def kill(run: SwitchRun) -> None:
    """SIGKILL the recorded process's group (it was started in its own session)."""
    if run.pid is not None and is_running(run):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.pid, signal.SIGKILL)
