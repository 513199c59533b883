"""Process handling of the nix layer: timeouts and cancellation leave no process behind."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fleet.nix import NixTimeout
from fleet.nix.process import Tail, run_process


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for PID 1 to reap it (killed is what matters)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def _pid_from(file: Path) -> int:
    async with asyncio.timeout(10):
        while not file.exists() or not file.read_text().strip():
            await asyncio.sleep(0.01)
    return int(file.read_text())


async def _gone(pid: int) -> bool:
    async with asyncio.timeout(10):
        while _alive(pid):
            await asyncio.sleep(0.01)
    return True


async def test_timeout_kills_the_whole_group_and_keeps_the_tail(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"echo started; sleep 60 & echo $! > {pidfile}; wait"
    with pytest.raises(NixTimeout) as caught:
        await run_process(["sh", "-c", script], env={}, timeout=0.5, merge_output=True)
    assert caught.value.stderr_tail == ("started",)
    assert "timed out after 0.5 s" in caught.value.reason
    assert await _gone(await _pid_from(pidfile))


async def test_cancellation_kills_the_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {pidfile}; wait"
    task = asyncio.create_task(run_process(["sh", "-c", script], env={}, timeout=60))
    pid = await _pid_from(pidfile)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _gone(pid)


async def test_stdout_and_stderr_are_kept_apart() -> None:
    lines: list[str] = []
    done = await run_process(
        ["sh", "-c", "echo out; echo err >&2; exit 4"], env={}, timeout=10, on_line=lines.append
    )
    assert (done.returncode, done.stdout, done.tail, lines) == (4, b"out\n", ("err",), ["err"])


def test_tail_is_bounded() -> None:
    tail = Tail(max_lines=3, max_bytes=10)
    for word in ["aaaa", "bbbb", "cccc", "dddd"]:
        tail.add(word)
    assert tail.lines() == ("cccc", "dddd")
    tail.add("x" * 50)
    assert tail.lines() == ()
