"""A verified QUIC connection to one peer, with asyncio streams on top.

The Endpoint owns the socket and drives the sans-IO QuicConnection; a Connection turns its
events into stream readers/writers and futures. Writes only queue data in aioquic and ask the
Endpoint for a flush, so many writes in one loop turn leave in one batch of datagrams.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from aioquic.quic import events
from aioquic.quic.connection import stream_is_unidirectional

from fleet.deadline import DeadlineTimer
from fleet.identity import NodeId
from fleet.mesh.admission import HalfOpen
from fleet.mesh.paths import Path, PathChanged
from fleet.mesh.tls_hooks import PinnedQuicConnection, pending_close, send_backlog

_T = TypeVar("_T")

DRAIN_HIGH_WATER = 1 << 20  # drain() waits while more than this is unacknowledged


class MeshError(Exception):
    """Base of mesh errors."""


class ConnectError(MeshError):
    """A connection could not be established (the message says why)."""


class ConnectionLost(MeshError):
    """The connection closed; streams on it are dead."""


class StreamReset(MeshError):
    """The peer reset the stream."""


@dataclass(frozen=True, slots=True)
class CloseReason:
    error_code: int
    reason: str


class StreamWriter:
    """The sending half of a QUIC stream, shaped like asyncio.StreamWriter."""

    def __init__(self, conn: Connection, stream_id: int) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self._eof = False

    def write(self, data: bytes) -> None:
        if self._eof:
            raise RuntimeError("write after write_eof")
        self._conn._check_open()
        if data:
            self._conn._quic.send_stream_data(self.stream_id, data)
            self._conn._request_flush()

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if not self._eof:
            self._eof = True
            self._conn._check_open()
            self._conn._quic.send_stream_data(self.stream_id, b"", end_stream=True)
            self._conn._request_flush()

    async def drain(self) -> None:
        """Wait until the unacknowledged backlog is below the high-water mark."""
        conn = self._conn
        while send_backlog(conn._quic, self.stream_id) > DRAIN_HIGH_WATER:
            conn._check_open()
            await conn._wait_progress()
        conn._check_open()

    def close(self) -> None:
        if not self._eof and self._conn.closed is None:
            self.write_eof()

    def is_closing(self) -> bool:
        return self._eof

    async def wait_closed(self) -> None:
        return None


class Connection:
    """A QUIC connection whose peer proved `remote_id` in the TLS handshake."""

    def __init__(
        self,
        quic: PinnedQuicConnection,
        remote_id: NodeId,
        *,
        is_client: bool,
        request_flush: Callable[[Connection], None],
        path_of: Callable[[], Path | None],
        on_timer: Callable[[Connection], None],
    ) -> None:
        self._quic = quic
        self._remote_id = remote_id
        self.is_client = is_client
        self._request_flush_cb = request_flush
        self._path_of = path_of
        self.alpn: str | None = None
        self.verified = False  # set only when the handshake completed with the pinned peer
        self.cids: set[bytes] = set()
        self.closed: CloseReason | None = None
        self.keepalive_at = 0.0  # the next QUIC PING (MeshConfig.keepalive_interval)
        self.unacked_since: float | None = None  # data in flight without an ACK since
        self.unacked_reported = False  # ... and the path layer was told (it lasted)
        self.half_open: HalfOpen | None = None  # a server connection's admission slot
        # Where this connection's last direct datagram came from (None: via the relay).
        # Two processes may share a node id (an admin's `status --watch` and `push`): the
        # peer's path names one address, each connection replies to its own.
        self.direct_source: tuple[str, int] | None = None
        loop = asyncio.get_running_loop()
        self.timer = DeadlineTimer(loop, lambda: on_timer(self))  # follows quic.get_timer()
        self._handshake: asyncio.Future[None] = loop.create_future()
        # Server connections that fail are never awaited: mark their error as seen.
        self._handshake.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._terminated = asyncio.Event()
        self._progress = asyncio.Event()
        self._readers: dict[int, asyncio.StreamReader] = {}
        self._incoming_bi: asyncio.Queue[tuple[asyncio.StreamReader, StreamWriter] | None] = (
            asyncio.Queue()
        )
        self._incoming_uni: asyncio.Queue[asyncio.StreamReader | None] = asyncio.Queue()
        self._path_waiters: list[asyncio.Event] = []
        self.path_history: list[PathChanged] = []

    # -- public API -------------------------------------------------------------------------

    @property
    def remote_id(self) -> NodeId:
        """The peer's node id, verified by the TLS handshake (pinned certificate key)."""
        return self._remote_id

    @property
    def path(self) -> str | None:
        """ "direct" or "relay" (None before any path is known)."""
        path = self._path_of()
        return path.kind if path is not None else None

    @property
    def path_detail(self) -> Path | None:
        return self._path_of()

    async def open_bi(self) -> tuple[asyncio.StreamReader, StreamWriter]:
        self._check_open()
        stream_id = self._quic.get_next_available_stream_id(is_unidirectional=False)
        return self._reader(stream_id), StreamWriter(self, stream_id)

    async def accept_bi(
        self, timeout: float | None = None
    ) -> tuple[asyncio.StreamReader, StreamWriter]:
        return await self._take(self._incoming_bi, timeout)

    async def open_uni(self) -> StreamWriter:
        self._check_open()
        return StreamWriter(self, self._quic.get_next_available_stream_id(is_unidirectional=True))

    async def accept_uni(self, timeout: float | None = None) -> asyncio.StreamReader:
        return await self._take(self._incoming_uni, timeout)

    async def close(self, error_code: int = 0, reason: str = "") -> None:
        """Close now (CONNECTION_CLOSE is sent at once); see wait_closed()."""
        if self.closed is None:
            self._quic.close(error_code=error_code, reason_phrase=reason)
            self._request_flush()

    async def wait_closed(self, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            await self._terminated.wait()

    async def wait_path(self, kind: str, timeout: float) -> None:
        """Wait until traffic to the peer goes over `kind` ("direct" or "relay")."""
        async with asyncio.timeout(timeout):
            while self.path != kind:
                self._check_open()
                waiter = asyncio.Event()
                self._path_waiters.append(waiter)
                await waiter.wait()

    def __repr__(self) -> str:
        return f"Connection({self._remote_id.short()}, {self.alpn}, {self._path_of()})"

    # -- driven by the Endpoint -------------------------------------------------------------

    @property
    def quic(self) -> PinnedQuicConnection:
        return self._quic

    def handle_event(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            reader = self._readers.get(event.stream_id)
            if reader is None:
                reader = self._new_incoming(event.stream_id)
            if event.data:
                reader.feed_data(event.data)
            if event.end_stream:
                reader.feed_eof()
                del self._readers[event.stream_id]
        elif isinstance(event, events.HandshakeCompleted):
            self.alpn = event.alpn_protocol
            verified = self._quic.verified_peer
            if verified is None or verified != self._remote_id:
                self._quic.close(error_code=0x1, reason_phrase="peer not authenticated")
                self._fail_handshake(0x1, "peer not authenticated")
            else:
                self.verified = True
                if not self._handshake.done():
                    self._handshake.set_result(None)
        elif isinstance(event, events.StreamReset):
            reader = self._readers.get(event.stream_id)
            if reader is not None:
                reader.set_exception(StreamReset(f"stream reset, code {event.error_code}"))
        elif isinstance(event, events.ConnectionTerminated):
            self._terminate(event.error_code, event.reason_phrase)

    def after_batch(self) -> None:
        """Called after received datagrams were fed: wake writers, notice a close early."""
        if self._progress.is_set() is False:
            self._progress.set()
        if self.closed is None:
            closing = pending_close(self._quic)
            if closing is not None:
                self._fail_handshake(closing.error_code, closing.reason_phrase)

    def path_changed(self, change: PathChanged) -> None:
        self.path_history.append(change)
        waiters, self._path_waiters = self._path_waiters, []
        for waiter in waiters:
            waiter.set()

    def abandon(self, reason: str) -> None:
        """The endpoint is going away: wake everything waiting on this connection."""
        self._terminate(0, reason)

    def _terminate(self, error_code: int, reason: str) -> None:
        if self.closed is not None:
            return
        self._fail_handshake(error_code, reason)
        self.closed = CloseReason(error_code, reason)
        lost = ConnectionLost(f"connection closed: {reason or 'no reason'} (code {error_code})")
        for reader in self._readers.values():
            if not reader.at_eof():
                reader.set_exception(lost)
        self._progress.set()
        self._terminated.set()
        self._incoming_bi.put_nowait(None)
        self._incoming_uni.put_nowait(None)
        for waiter in self._path_waiters:
            waiter.set()
        self.timer.cancel()

    def _fail_handshake(self, error_code: int, reason: str) -> None:
        if not self._handshake.done():
            self._handshake.set_exception(
                ConnectError(
                    f"handshake with {self._remote_id.short()} failed: "
                    f"{reason or 'closed'} (code {error_code:#x})"
                )
            )

    async def wait_handshake(self) -> None:
        await asyncio.shield(self._handshake)

    # -- internals --------------------------------------------------------------------------

    def _request_flush(self) -> None:
        self._request_flush_cb(self)

    def _check_open(self) -> None:
        if self.closed is not None:
            raise ConnectionLost(f"connection closed: {self.closed.reason or 'no reason'}")

    async def _wait_progress(self) -> None:
        self._progress.clear()
        await self._progress.wait()

    def _reader(self, stream_id: int) -> asyncio.StreamReader:
        reader = asyncio.StreamReader(limit=1 << 24)
        self._readers[stream_id] = reader
        return reader

    def _new_incoming(self, stream_id: int) -> asyncio.StreamReader:
        reader = self._reader(stream_id)
        if stream_is_unidirectional(stream_id):
            self._incoming_uni.put_nowait(reader)
        else:
            self._incoming_bi.put_nowait((reader, StreamWriter(self, stream_id)))
        return reader

    async def _take(self, queue: asyncio.Queue[_T | None], timeout: float | None) -> _T:
        async with asyncio.timeout(timeout):
            item = await queue.get()
        if item is None:
            queue.put_nowait(None)  # wake the next taker too
            self._check_open()
            raise ConnectionLost("connection closed")
        return item
