"""Poisoning the audit log from outside (docs/attacks.md): a real coordinator, fleetctl against
it, and an attacker on the mesh with a key nobody certified that sends raw frames."""

from __future__ import annotations

import sqlite3
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from fleet.identity import Identity
from fleet.mesh import Endpoint
from fleet.protocol import alpn
from fleet.protocol.messages import ErrorReply
from fleet.protocol.stream import recv_message
from harness.cli import cli_env, fleetctl_argv
from harness.coordinator_process import CoordinatorProcess, Lab

PER_REFUSAL = 2048  # bytes an audit entry of a refusal may take at most (content)


@dataclass
class Attacked:
    lab: Lab
    coord: CoordinatorProcess

    @property
    def db(self) -> Path:
        return self.lab.state_dir / "coordinator.db"

    def fleetctl(
        self, *args: str, key: Path | None = None, cert: Path | None = None
    ) -> tuple[subprocess.CompletedProcess[str], float]:
        host, port = self.coord.address
        who = ["--key", str(key or self.lab.admin_key)]
        if cert is not None:
            who += ["--cert", str(cert)]
        argv = fleetctl_argv(
            "--coordinator", f"{self.coord.node_id}@{host}:{port}", *who, "--timeout", "20", *args
        )
        started = time.monotonic()
        done = subprocess.run(argv, capture_output=True, text=True, env=cli_env(), timeout=90)
        return done, time.monotonic() - started

    def stored(self) -> tuple[int, int]:
        """(entries, bytes of their request and detail) in the audit table, read-only."""
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            count, size = conn.execute(
                "SELECT count(*), coalesce(sum(length(request) + length(detail)), 0) FROM audit"
            ).fetchone()
        finally:
            conn.close()
        return int(count), int(size)


async def send_raw(
    coord: CoordinatorProcess, attacker: Identity, frames: list[bytes], timeout: float = 30
) -> list[ErrorReply]:
    """Each frame on its own stream of one connection; the coordinator's reply to each."""
    replies = []
    async with Endpoint(attacker, bind=("127.0.0.1", 0)) as ep:
        conn = await ep.connect(coord.node_id, alpn.ADMIN, addrs=[coord.address], timeout=10)
        try:
            for frame in frames:
                reader, writer = await conn.open_bi()
                writer.write(frame)
                reply = await recv_message(reader, timeout=timeout)
                assert isinstance(reply, ErrorReply), reply
                replies.append(reply)
                writer.close()
        finally:
            await conn.close()
    return replies


def framed(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload
