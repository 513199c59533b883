"""Dialing the coordinator over the mesh: one QUIC connection (ALPN fleet/agent/1) whose
first bidirectional stream is the control stream."""

from __future__ import annotations

import contextlib

from fleet.mesh import Connection, Endpoint, MeshError
from fleet.mesh.connection import StreamWriter
from fleet.mesh.peer_addr import PeerAddr
from fleet.protocol import alpn
from fleet.wire import ByteReader, ByteWriter


class MeshChannel:
    def __init__(self, conn: Connection, reader: ByteReader, writer: StreamWriter) -> None:
        self._conn = conn
        self._reader = reader
        self._writer = writer

    @property
    def reader(self) -> ByteReader:
        return self._reader

    @property
    def writer(self) -> ByteWriter:
        return self._writer

    @property
    def path(self) -> str | None:
        return self._conn.path

    async def close(self) -> None:
        with contextlib.suppress(MeshError):
            self._writer.close()
        await self._conn.close(reason="agent session ended")
        with contextlib.suppress(TimeoutError):
            await self._conn.wait_closed(timeout=1.0)


class MeshDialer:
    """Connect to the coordinator by node id; address hints and home relays help find it."""

    errors: tuple[type[BaseException], ...] = (MeshError,)

    def __init__(self, endpoint: Endpoint, coordinator: PeerAddr) -> None:
        self.endpoint = endpoint
        self.coordinator = coordinator

    async def __call__(self, timeout: float) -> MeshChannel:
        conn = await self.endpoint.connect(
            self.coordinator.node_id, alpn.AGENT, addrs=self.coordinator.addrs, timeout=timeout
        )
        try:
            reader, writer = await conn.open_bi()
        except BaseException:
            await conn.close(reason="cannot open the control stream")
            raise
        return MeshChannel(conn, reader, writer)
