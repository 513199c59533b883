"""A real pseudo-terminal for CLI tests: the process sees a tty of a known size, and what it
wrote is replayed on a terminal emulator (pyte) to get the screen a person would see."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import signal
import struct
import subprocess
import termios

import pyte

COLUMNS, ROWS = 160, 40


class Terminal:
    """One process on its own pty (stdin, stdout and stderr), read as it writes."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.output = bytearray()
        self._leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
        self.proc = subprocess.Popen(
            argv, stdin=follower, stdout=follower, stderr=follower, env=env, start_new_session=True
        )
        os.close(follower)
        self._eof = asyncio.Event()
        self._more = asyncio.Event()
        asyncio.get_running_loop().add_reader(self._leader, self._read)

    def _read(self) -> None:
        try:
            chunk = os.read(self._leader, 65536)
        except OSError:  # EIO: every process holding the terminal has exited
            chunk = b""
        if not chunk:
            asyncio.get_running_loop().remove_reader(self._leader)
            self._eof.set()
        self.output += chunk
        self._more.set()

    async def wait_for(self, text: bytes, timeout: float) -> None:
        """Until the output contains `text`."""
        async with asyncio.timeout(timeout):
            while text not in self.output:
                if self._eof.is_set():
                    raise AssertionError(f"ended before {text!r}: {bytes(self.output)!r}")
                self._more.clear()
                await self._more.wait()

    def interrupt(self) -> None:
        """Ctrl-C, as the terminal sends it (SIGINT to the process)."""
        self.proc.send_signal(signal.SIGINT)

    async def finish(self, timeout: float) -> int:
        """The exit code, once the process ended and all its output was read."""
        try:
            async with asyncio.timeout(timeout):
                await self._eof.wait()
                while self.proc.poll() is None:
                    await asyncio.sleep(0.05)
        finally:
            self.close()
        return self.proc.returncode

    def close(self) -> None:
        """Kill the process if it still runs and let go of the terminal (idempotent)."""
        if self._leader < 0:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self._eof.is_set():
            asyncio.get_running_loop().remove_reader(self._leader)
            self._eof.set()
        os.close(self._leader)
        self._leader = -1

    def screen(self) -> list[str]:
        """The screen after everything written so far, lines without trailing blanks."""
        screen = pyte.Screen(COLUMNS, ROWS)
        pyte.ByteStream(screen).feed(bytes(self.output))
        return [line.rstrip() for line in screen.display]
