"""Running one Nix (or activation) process: bounded output, a hard timeout, no orphans.

Every process starts in its own session so that a timeout or a cancelled agent task kills
the whole process group (Nix's builders, an activation script's children) and reaps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fleet.nix.errors import NixNotInstalled, NixTimeout, classify, strip_ansi
from fleet.nix.store import NixStore

LineCallback = Callable[[str], None]
StartCallback = Callable[[int], None]  # called with the pid once the process exists

MAX_LINE = 64 * 1024
TAIL_LINES = 200
TAIL_BYTES = 64 * 1024
MAX_STDOUT = 256 * 1024 * 1024


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    tail: tuple[str, ...]  # last lines of stderr (or of the merged output), ANSI stripped


class Tail:
    """The last lines of a stream, bounded both in lines and in bytes."""

    def __init__(self, max_lines: int = TAIL_LINES, max_bytes: int = TAIL_BYTES) -> None:
        self._lines: deque[str] = deque()
        self._bytes = 0
        self._max_lines = max_lines
        self._max_bytes = max_bytes

    def add(self, line: str) -> None:
        self._lines.append(line)
        self._bytes += len(line) + 1
        while self._lines and (len(self._lines) > self._max_lines or self._bytes > self._max_bytes):
            self._bytes -= len(self._lines.popleft()) + 1

    def lines(self) -> tuple[str, ...]:
        return tuple(self._lines)

    def text(self) -> str:
        return "\n".join(self._lines)


def nix_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise NixNotInstalled(
            f"{name} not found on PATH: install Nix (Debian: apt-get install nix-bin)",
            command=(name,),
        )
    return path


async def _lines(stream: asyncio.StreamReader, on_line: Callable[[str], None]) -> None:
    """Split a stream into lines, cutting any single line at MAX_LINE characters."""
    pending = b""
    while chunk := await stream.read(65536):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            on_line(raw[:MAX_LINE].decode(errors="replace"))
        if len(pending) > MAX_LINE:
            on_line(pending[:MAX_LINE].decode(errors="replace"))
            pending = b""
    if pending:
        on_line(pending[:MAX_LINE].decode(errors="replace"))


async def _read_all(stream: asyncio.StreamReader) -> bytes:
    data = bytearray()
    while chunk := await stream.read(65536):
        data += chunk
        if len(data) > MAX_STDOUT:
            raise ValueError("nix printed more than 256 MiB on stdout")
    return bytes(data)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


async def run_process(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    timeout: float,
    on_line: LineCallback | None = None,
    merge_output: bool = False,
    cwd: str | None = None,
    on_start: StartCallback | None = None,
) -> Completed:
    """Run argv; stream stderr (or stdout+stderr if merge_output) lines to on_line.

    Raises NixTimeout (with the output tail) when `timeout` seconds pass; the process group
    is killed and reaped also when the caller is cancelled. `on_start(pid)` is called once
    the process exists (its pid is also its process group id).
    """
    tail = Tail()

    def line(text: str) -> None:
        tail.add(strip_ansi(text))
        if on_line is not None:
            on_line(text)

    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_output else asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    assert proc.stdout is not None
    stdout = b""
    try:
        if on_start is not None:
            on_start(proc.pid)
        async with asyncio.timeout(timeout):
            if merge_output:
                await _lines(proc.stdout, line)
            else:
                assert proc.stderr is not None
                async with asyncio.TaskGroup() as tg:
                    out = tg.create_task(_read_all(proc.stdout))
                    tg.create_task(_lines(proc.stderr, line))
                stdout = out.result()
            returncode = await proc.wait()
    except TimeoutError:
        raise NixTimeout(
            f"{os.path.basename(argv[0])} timed out after {timeout:g} s",
            command=argv,
            stderr_tail=tail.lines(),
        ) from None
    finally:
        _kill_group(proc)
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                await asyncio.shield(proc.wait())
    return Completed(tuple(argv), returncode, stdout, tail.lines())


async def run_nix(
    store: NixStore,
    program: str,
    args: Sequence[str],
    *,
    timeout: float = 60.0,
    on_line: LineCallback | None = None,
    check: bool = True,
) -> Completed:
    """Run a Nix program (nix, nix-store, nix-env) in `store`'s environment.

    With check, a non-zero exit becomes the most specific NixError for its stderr.
    """
    argv = [nix_binary(program), *args]
    if program == "nix":
        argv[1:1] = ["--extra-experimental-features", "nix-command"]
    done = await run_process(argv, env=store.env.environ(), timeout=timeout, on_line=on_line)
    if check and done.returncode != 0:
        raise classify(done.tail, command=argv, returncode=done.returncode)
    return done
