"""A real daemon under systemd's journal stream logs `<N>key=value` lines with priorities."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cli import cli_env, fleet_argv, run_fleet

LINE = re.compile(r"<(?P<priority>[0-7])>(?P<pairs>event=\S+( [a-z_]+=(\"[^\"]*\"|\S*))*)")


class LogPipe:
    """The read end of a pipe a child writes its stderr to, read line by line with deadlines."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        st = os.fstat(self.write_fd)
        self.dev_ino = f"{st.st_dev}:{st.st_ino}"
        self._buffer = b""
        self.lines: list[str] = []

    def wait_for(self, pattern: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if pattern in line:
                    return line
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"no log line with {pattern!r}: {self.lines}")

    def drain(self, timeout: float = 10) -> list[str]:
        deadline = time.monotonic() + timeout
        while self._read(max(0.0, deadline - time.monotonic())):
            pass
        return self.lines

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.read_fd], [], [], timeout)
        if not ready:
            return False
        chunk = os.read(self.read_fd, 65536)
        if not chunk:
            return False
        self._buffer += chunk
        *complete, self._buffer = self._buffer.split(b"\n")
        self.lines += [line.decode() for line in complete]
        return True

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                os.close(fd)


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "relay.key"
    assert run_fleet("keygen", str(path)).returncode == 0
    return path


def start_relay(key: Path, pipe: LogPipe, journal_stream: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        fleet_argv(
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--key",
            str(key),
            "--insecure-no-tls",
            "--max-clients",
            "0",  # every connection is refused with a warning
            "--log-level",
            "debug",
        ),
        stdout=subprocess.DEVNULL,
        stderr=pipe.write_fd,
        env=cli_env({"JOURNAL_STREAM": journal_stream}),
    )
    os.close(pipe.write_fd)
    pipe.write_fd = -1
    return proc


@pytest.fixture
def pipe() -> Iterator[LogPipe]:
    p = LogPipe()
    yield p
    p.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0


def test_under_the_journal_lines_carry_priorities_and_key_values(key: Path, pipe: LogPipe) -> None:
    proc = start_relay(key, pipe, pipe.dev_ino)
    try:
        listening = pipe.wait_for("event=relay_listening")
        assert listening.startswith("<6>event=relay_listening "), listening
        assert "timestamp=" not in listening  # the journal stamps lines itself
        url = re.search(r"url=(\S+)", listening)
        assert url is not None
        port = int(url.group(1).rpartition(":")[2])
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            refused = pipe.wait_for("event=relay_connection_refused")
        assert refused.startswith("<4>"), refused
        assert "reason=server_full" in refused
    finally:
        stop(proc)
    lines = [line for line in pipe.drain() if line]
    assert any(line.startswith("<6>event=relay_stopped") for line in lines), lines
    for line in lines:
        assert LINE.fullmatch(line), f"not a journal key=value line: {line!r}"


def test_a_journal_stream_of_another_file_is_not_ours(
    key: Path, pipe: LogPipe, tmp_path: Path
) -> None:
    # JOURNAL_STREAM is inherited by children whose stderr goes elsewhere: JSON then.
    other = tmp_path / "other"
    other.touch()
    st = os.stat(other)
    proc = start_relay(key, pipe, f"{st.st_dev}:{st.st_ino}")
    try:
        line = pipe.wait_for("relay_listening")
    finally:
        stop(proc)
    assert json.loads(line)["event"] == "relay_listening"
