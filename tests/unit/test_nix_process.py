"""Process handling of the nix layer: timeouts and cancellation leave no process behind."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fleet.nix import NixStore, NixTimeout
from fleet.nix.process import Tail, run_process
from fleet.vocabulary import InvalidStorePath, check_store_path

GOOD = "/nix/store/bfjfx9wh33i70s2zls876qnp1k4d2sn9-nixos-system-test-1"


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


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "--option",
        "/nix/store/bfjfx9wh33i70s2zls876qnp1k4d2sn9",
        GOOD + "/bin/switch-to-configuration",
        GOOD + "\n",
        "/nix/store/efjfx9wh33i70s2zls876qnp1k4d2sn9-e-has-no-e",  # 'e' is not base32 here
        "/nix/store/bfjfx9wh33i70s2zls876qnp1k4d2sn9-.hidden",
        "/etc/passwd",
    ],
)
def test_store_paths_are_validated(bad: str) -> None:
    with pytest.raises(InvalidStorePath):
        check_store_path(bad)


def test_store_descriptions(tmp_path: Path) -> None:
    assert check_store_path(GOOD) == GOOD
    system = NixStore()
    assert system.store_args() == []
    assert str(system.real_path(GOOD)) == GOOD
    assert str(system.system_profile) == "/nix/var/nix/profiles/system"
    chroot = NixStore.chroot(tmp_path)
    assert chroot.store_args() == ["--store", str(tmp_path)]
    assert chroot.real_path(GOOD) == tmp_path / GOOD.lstrip("/")
    assert chroot.system_profile == tmp_path / "nix/var/nix/profiles/system"
    cache = NixStore.at_uri("http://127.0.0.1:1")
    assert cache.store_args() == ["--store", "http://127.0.0.1:1"]
    with pytest.raises(ValueError, match="no local files"):
        cache.real_path(GOOD)
