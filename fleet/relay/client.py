"""Relay client: keeps one login to a relay alive and moves packets through it.

The mesh uses this as one of its paths: `send()` never blocks (a full buffer drops the packet,
as UDP would), received packets are handed to `on_packet` synchronously in arrival order, and
`run()` reconnects with jittered backoff until it is cancelled.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from fleet.deadline import DeadlineTimer
from fleet.identity import Identity, NodeId
from fleet.log import get_logger
from fleet.relay.protocol import (
    Authenticated,
    ClientSessionConfig,
    ClientState,
    PacketReceived,
    PeerGone,
    RelayClientSession,
    RelayProtocolError,
    ServerClosed,
)
from fleet.relay.tls import (
    RelayPinningError,
    TlsChannel,
    TlsError,
    check_relay_certificate,
    client_context,
)
from fleet.relay.url import RelayUrl

log = get_logger("fleet.relay.client")

PacketHandler = Callable[[NodeId, bytes], None]
PeerGoneHandler = Callable[[NodeId], None]


class RelayConnectionLost(Exception):
    """The relay connection ended (closed by the relay, reset, or timed out)."""

    reason = "connection_lost"


_ConnectionErrors = (
    OSError,
    TimeoutError,
    RelayProtocolError,
    RelayPinningError,
    TlsError,
    RelayConnectionLost,
)


class _Link(asyncio.Protocol):
    """One TCP connection to the relay: socket <-> TLS <-> RelayClientSession."""

    def __init__(self, client: RelayClient) -> None:
        self.client = client
        self.loop = asyncio.get_running_loop()
        self.session = RelayClientSession(
            client._identity, client.url.node_id, self.loop.time(), client._session_config
        )
        self.tls = None if client.url.insecure else TlsChannel(client._tls, server_side=False)
        self.transport: asyncio.Transport | None = None
        self.authenticated: asyncio.Future[None] = self.loop.create_future()
        self.finished: asyncio.Future[None] = self.loop.create_future()
        self._pinned = False
        self._flush_scheduled = False
        self._timer = DeadlineTimer(self.loop, self._on_timer)

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.flush()
        self._reschedule()

    def data_received(self, data: bytes) -> None:
        if self.finished.done():
            return
        tls = self.tls
        try:
            if tls is not None:
                data = tls.receive(data)
                if tls.handshake_complete and not self._pinned:
                    check_relay_certificate(tls.peer_certificate(), self.client.url.node_id)
                    self._pinned = True
                if tls.eof:
                    raise RelayConnectionLost("relay closed the TLS session")
                if not data:
                    self.flush()
                    return
            session = self.session
            session.receive_data(data, self.loop.time())
        except _ConnectionErrors as exc:
            self.fail(exc)
            return
        on_packet = self.client._on_packet
        next_event = session.next_event
        while (event := next_event()) is not None:
            if type(event) is PacketReceived:
                try:
                    on_packet(event.src, event.data)
                except Exception:
                    log.exception("relay_on_packet_failed", src=event.src.short())
            elif type(event) is PeerGone:
                handler = self.client._on_peer_gone
                if handler is not None:
                    try:
                        handler(event.node_id)
                    except Exception:
                        log.exception("relay_on_peer_gone_failed", node=event.node_id.short())
            elif type(event) is Authenticated:
                if not self.authenticated.done():
                    self.authenticated.set_result(None)
            elif type(event) is ServerClosed:
                self.fail(RelayConnectionLost(f"relay closed the connection: {event.reason}"))
                return
        self.flush()
        self._reschedule()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RelayConnectionLost(f"connection lost: {exc or 'closed by the relay'}"))

    # output

    def send(self, dst: NodeId, data: bytes) -> bool:
        transport = self.transport
        if (
            transport is None
            or self.session.state is not ClientState.CONNECTED
            or transport.get_write_buffer_size() + self.session.pending_bytes
            > self.client._write_high_water
        ):
            return False
        try:
            self.session.send_packet(dst, data)
        except ValueError:
            return False
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._scheduled_flush)
        return True

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        tls = self.tls
        if tls is None:
            data = self.session.data_to_send()
        else:
            if tls.handshake_complete and self._pinned:
                plain = self.session.data_to_send()
                if plain:
                    try:
                        tls.send(plain)
                    except TlsError as exc:
                        self.fail(exc)
                        return
            data = tls.data_to_send()
        if data:
            transport.write(data)

    # ending

    def fail(self, exc: BaseException) -> None:
        self._timer.cancel()
        if not self.authenticated.done():
            self.authenticated.set_exception(exc)
        if not self.finished.done():
            self.finished.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def abort(self) -> None:
        self.fail(RelayConnectionLost("closed by the client"))
        for fut in (self.authenticated, self.finished):
            if fut.done() and not fut.cancelled():
                fut.exception()  # mark retrieved: the caller saw or ignored it on purpose

    # time

    def _reschedule(self) -> None:
        if not self.finished.done():
            self._timer.set(self.session.get_timer())

    def _on_timer(self) -> None:
        try:
            self.session.handle_timer(self.loop.time())
        except RelayProtocolError as exc:
            self.fail(exc)
            return
        self.flush()
        self._reschedule()


class RelayClient:
    """A node's connection to one relay, re-established until `run()` is cancelled."""

    def __init__(
        self,
        url: RelayUrl,
        identity: Identity,
        on_packet: PacketHandler,
        on_peer_gone: PeerGoneHandler | None = None,
        *,
        connect_timeout: float = 10.0,
        ping_interval: float = 15.0,
        ping_timeout: float = 10.0,
        write_high_water: int = 1024 * 1024,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self._url = url
        self._identity = identity
        self._on_packet = on_packet
        self._on_peer_gone = on_peer_gone
        self._connect_timeout = connect_timeout
        self._write_high_water = write_high_water
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._session_config = ClientSessionConfig(
            handshake_timeout=connect_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
        )
        self._tls = client_context()
        self._link: _Link | None = None
        self._connected = asyncio.Event()
        self._logged_in = False
        self.last_error: str | None = None

    @property
    def url(self) -> RelayUrl:
        return self._url

    @property
    def connected(self) -> bool:
        return self._link is not None

    async def wait_connected(self, timeout: float) -> None:
        """Return once logged in to the relay; raise TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    def send(self, dst: NodeId, data: bytes) -> bool:
        """Queue a packet for `dst` without blocking; False if it was dropped."""
        link = self._link
        if link is None:
            return False
        return link.send(dst, data)

    async def run(self) -> None:
        """Connect, serve and reconnect with jittered exponential backoff until cancelled."""
        delay = self._backoff_initial
        while True:
            try:
                await self._connect_and_serve()
            except _ConnectionErrors as exc:
                self.last_error = str(exc) or type(exc).__name__
            if self._logged_in:
                delay = self._backoff_initial
            wait = random.uniform(delay / 2, delay)  # noqa: S311 - jitter, not crypto
            log.warning(
                "relay_disconnected" if self._logged_in else "relay_connect_failed",
                relay=self._url.node_id.short(),
                address=f"{self._url.host}:{self._url.port}",
                error=self.last_error,
                retry_in=round(wait, 2),
            )
            delay = min(self._backoff_max, delay * 2)
            await asyncio.sleep(wait)

    async def _connect_and_serve(self) -> None:
        """One connection: returns only by raising why it ended."""
        self._logged_in = False
        loop = asyncio.get_running_loop()
        link = _Link(self)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(lambda: link, self._url.host, self._url.port)
                await link.authenticated
            self._logged_in = True
            self.last_error = None
            self._link = link
            self._connected.set()
            log.info(
                "relay_connected",
                relay=self._url.node_id.short(),
                address=f"{self._url.host}:{self._url.port}",
                node=self._identity.node_id.short(),
            )
            await link.finished
            raise RelayConnectionLost("relay connection ended")
        finally:
            self._link = None
            self._connected.clear()
            link.abort()


def relay_client_factory(
    url: str,
    identity: Identity,
    on_packet: PacketHandler,
    on_peer_gone: PeerGoneHandler,
) -> RelayClient:
    """What daemons inject into the mesh Endpoint: a RelayClient for a `fleet-relay://` URL."""
    return RelayClient(RelayUrl.parse(url), identity, on_packet, on_peer_gone)
