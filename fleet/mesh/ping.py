"""The ping service (ALPN `fleet/ping/1`): every fleet daemon answers `fleet ping`.

A client opens one bidirectional stream and writes 16-byte records (sequence number and an
opaque client timestamp); the server writes each record back unchanged. Round-trip times
are measured by the client over the connection's current path, so `fleet ping` shows what
the application really gets (relay or direct), not an ICMP-like side channel.

Daemons enable it by serving `PING_ALPN` on their Endpoint and running `serve_ping(ep)` in
their task group (the coordinator and agent do so; `fleet relay` is not a mesh endpoint).
"""

from __future__ import annotations

import asyncio
import struct
import time

from fleet.log import get_logger
from fleet.mesh.connection import Connection, MeshError, StreamWriter
from fleet.mesh.endpoint import Endpoint

log = get_logger(__name__)

PING_ALPN = "fleet/ping/1"
RECORD = struct.Struct(">QQ")
IDLE_TIMEOUT = 60.0  # a ping connection silent this long is closed by the server
MAX_CONNECTIONS = 64  # concurrent ping clients per daemon; more are refused


async def serve_ping(endpoint: Endpoint, *, max_connections: int = MAX_CONNECTIONS) -> None:
    """Answer pings on `endpoint` (which must serve PING_ALPN) until cancelled or closed."""
    active: set[Connection] = set()
    async with asyncio.TaskGroup() as tasks:
        while True:
            try:
                conn = await endpoint.accept(PING_ALPN)
            except MeshError:
                return  # the endpoint closed
            if len(active) >= max_connections:
                await conn.close(error_code=0x2, reason="too many ping clients")
                continue
            active.add(conn)
            tasks.create_task(_serve_connection(conn, active), name="ping-connection")


async def _serve_connection(conn: Connection, active: set[Connection]) -> None:
    try:
        while True:
            reader, writer = await conn.accept_bi(timeout=IDLE_TIMEOUT)
            await _echo(reader, writer)
    except (MeshError, TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        active.discard(conn)
        await conn.close(reason="ping done")


async def _echo(reader: asyncio.StreamReader, writer: StreamWriter) -> None:
    while True:
        async with asyncio.timeout(IDLE_TIMEOUT):
            try:
                record = await reader.readexactly(RECORD.size)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise
                writer.write_eof()
                return
        writer.write(record)


class PingClient:
    """Pings over one stream of an open connection to a node serving PING_ALPN."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._stream: tuple[asyncio.StreamReader, StreamWriter] | None = None
        self._seq = 0

    async def ping(self, timeout: float) -> float:
        """One round trip in seconds; TimeoutError if no answer within `timeout`."""
        if self._stream is None:
            self._stream = await self.conn.open_bi()
        reader, writer = self._stream
        self._seq += 1
        seq = self._seq
        start = time.perf_counter()
        writer.write(RECORD.pack(seq, time.monotonic_ns()))
        async with asyncio.timeout(timeout):
            while True:
                got, _ = RECORD.unpack(await reader.readexactly(RECORD.size))
                if got == seq:
                    return time.perf_counter() - start
                # an answer to an earlier ping that timed out: skip it

    async def close(self) -> None:
        if self._stream is not None:
            self._stream[1].write_eof()
        await self.conn.close(reason="ping done")
