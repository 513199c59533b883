"""The relay server: asyncio adapter around RelayServerSession, forwarding between clients.

Hot path: one `data_received` call carries many frames; the session turns them into
ready-made RecvPacket frames, we append each to its destination's session and flush every
touched destination once at the end, so TLS sees few large writes instead of one per packet.

Abuse never slows others down: a destination whose write buffer is over the high-water mark
loses packets (like UDP) instead of blocking the sender; a sender over its rate limit loses
packets and, if it keeps at it, its connection; garbage, oversized or out-of-state frames and
slow handshakes end only the offending connection.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from fleet.deadline import DeadlineTimer
from fleet.identity import Identity
from fleet.log import get_logger
from fleet.netaddr import format_host_port
from fleet.relay.metrics import RelayMetrics, start_metrics_server
from fleet.relay.protocol import (
    NODE_ID_LEN,
    ClientAuthenticated,
    PacketDropped,
    PacketForward,
    RelayProtocolError,
    RelayServerSession,
    ServerSessionConfig,
    ServerState,
)
from fleet.relay.stun_responder import start_stun_responder
from fleet.relay.tls import TlsChannel, TlsError, server_context
from fleet.relay.url import RelayUrl

log = get_logger("fleet.relay.server")

_LINGER = 2.0  # seconds a closed connection keeps draining input so the Close frame arrives
_RECV_OVERHEAD = 5 + NODE_ID_LEN  # frame header + source id in front of each packet


@dataclass(frozen=True, slots=True)
class RelayServerConfig:
    session: ServerSessionConfig = field(default_factory=ServerSessionConfig)
    max_clients: int = 10_000  # concurrent connections, logged in or not
    write_high_water: int = 1024 * 1024  # bytes queued to one client before drops start
    tls: bool = True


class _Connection(asyncio.Protocol):
    """One accepted TCP connection: moves bytes between the socket, TLS and the session."""

    def __init__(self, server: RelayServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.session: RelayServerSession | None = None
        self.tls: TlsChannel | None = None
        self.peer = "?"
        self.closed = False
        self.opened = 0.0
        self._timer = DeadlineTimer(self.loop, self._on_timer)
        self._linger: asyncio.TimerHandle | None = None

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.opened = now = self.loop.time()
        if not self.server._admit(self):
            self.closed = True
            transport.abort()
            return
        self.session = RelayServerSession(self.server.identity, now, self.server.config.session)
        if self.server.ssl_context is not None:
            self.tls = TlsChannel(self.server.ssl_context, server_side=True)
        self.flush()
        self._reschedule()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        session = self.session
        assert session is not None
        tls = self.tls
        if tls is not None:
            try:
                data = tls.receive(data)
            except TlsError as exc:
                self.close(exc.reason, str(exc))
                return
            if tls.eof:
                self.close("client_closed", "TLS close_notify")
                return
            if not data:
                self.flush()
                return
        try:
            session.receive_data(data, self.loop.time())
        except RelayProtocolError as exc:
            self.close(exc.reason, str(exc))
            return
        self.server._dispatch(self, session)
        self.flush()
        self._reschedule()

    def eof_received(self) -> bool | None:
        self.close("client_closed", "end of stream")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            reason = "connection_error" if exc is not None else "client_closed"
            self.server._closed(self, reason, str(exc) if exc else "connection closed by peer")
        self._timer.cancel()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None

    # output

    def buffered(self) -> int:
        assert self.transport is not None
        assert self.session is not None
        return self.transport.get_write_buffer_size() + self.session.pending_bytes

    def flush(self) -> None:
        transport, session = self.transport, self.session
        if transport is None or session is None or transport.is_closing():
            return
        tls = self.tls
        if tls is None:
            data = session.data_to_send()
        else:
            if tls.handshake_complete:
                plain = session.data_to_send()
                if plain:
                    try:
                        tls.send(plain)
                    except TlsError as exc:
                        self.close(exc.reason, str(exc))
                        return
            data = tls.data_to_send()
        if data:
            transport.write(data)

    def close(self, reason: str, detail: str) -> None:
        """Flush the session's last frame (Close/AuthFailed) and close, recording why."""
        if self.closed:
            return
        if self.session is not None and self.session.state is not ServerState.CLOSED:
            self.session.close(reason)
        self.flush()
        self.closed = True
        self._timer.cancel()
        self.server._closed(self, reason, detail)
        transport = self.transport
        assert transport is not None
        if (
            transport.get_write_buffer_size() > self.server.config.write_high_water
            or not transport.can_write_eof()
        ):
            transport.abort()  # a client that does not read gets no graceful goodbye
        else:
            # Half-close and linger: closing a socket with unread input sends a TCP reset,
            # which would destroy the Close frame before the client read why it was cut off.
            transport.write_eof()
            self._linger = self.loop.call_later(_LINGER, transport.abort)

    # time

    def _reschedule(self) -> None:
        if not self.closed and self.session is not None:
            self._timer.set(self.session.get_timer())

    def _on_timer(self) -> None:
        if self.closed or self.session is None:
            return
        try:
            self.session.handle_timer(self.loop.time())
        except RelayProtocolError as exc:
            self.close(exc.reason, str(exc))
            return
        self.flush()
        self._reschedule()


class RelayServer:
    """Accepts clients, authenticates them and forwards packets between them."""

    def __init__(self, identity: Identity, config: RelayServerConfig | None = None) -> None:
        self.identity = identity
        self.config = config or RelayServerConfig()
        self.metrics = RelayMetrics()
        self.ssl_context: ssl.SSLContext | None = (
            server_context(identity) if self.config.tls else None
        )
        self.url: RelayUrl | None = None
        self.stun_address: tuple[str, int] | None = None
        self._connections: set[_Connection] = set()
        self._clients: dict[bytes, _Connection] = {}

    async def run(
        self,
        host: str,
        port: int,
        *,
        metrics_listen: tuple[str, int] | None = None,
        stun_listen: tuple[str, int] | None = None,
        on_listening: Callable[[RelayUrl], None] | None = None,
    ) -> None:
        """Listen and serve until cancelled; then close every connection."""
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(
            lambda: _Connection(self), host, port, backlog=1024, reuse_address=True
        )
        metrics_server: asyncio.Server | None = None
        stun_transport: asyncio.DatagramTransport | None = None
        listening = False
        try:
            bound_host, bound_port = listener.sockets[0].getsockname()[:2]
            self.url = RelayUrl(
                self.identity.node_id, bound_host, bound_port, insecure=not self.config.tls
            )
            metrics_address = None
            if metrics_listen is not None:
                metrics_server = await start_metrics_server(*metrics_listen, self.metrics.render)
                mhost, mport = metrics_server.sockets[0].getsockname()[:2]
                metrics_address = f"{mhost}:{mport}"
            stun_address = None
            if stun_listen is not None:
                stun_transport, bound = await start_stun_responder(*stun_listen, self.metrics)
                self.stun_address = bound
                stun_address = format_host_port(*bound)
            log.info(
                "relay_listening",
                address=f"{bound_host}:{bound_port}",
                url=str(self.url),
                tls=self.config.tls,
                metrics=metrics_address,
                stun=stun_address,
                max_clients=self.config.max_clients,
                rate_limit=self.config.session.rate_limit,
            )
            listening = True
            if on_listening is not None:
                on_listening(self.url)
            await asyncio.Future()  # serve until cancelled
        finally:
            listener.close()
            if metrics_server is not None:
                metrics_server.close()
            if stun_transport is not None:
                stun_transport.close()
            for conn in list(self._connections):
                conn.close("shutdown", "relay shutting down")
            if listening:  # a relay that could not start says so once, in the CLI's error
                log.info("relay_stopped")

    # bookkeeping (called by connections)

    def _admit(self, conn: _Connection) -> bool:
        self.metrics.connections_accepted += 1
        if len(self._connections) >= self.config.max_clients:
            self.metrics.disconnects["server_full"] += 1
            log.warning(
                "relay_connection_refused",
                peer=conn.peer,
                reason="server_full",
                max_clients=self.config.max_clients,
            )
            return False
        self._connections.add(conn)
        self.metrics.connections = len(self._connections)
        log.info("relay_connection", peer=conn.peer)
        return True

    def _closed(self, conn: _Connection, reason: str, detail: str) -> None:
        self._connections.discard(conn)
        self.metrics.connections = len(self._connections)
        session = conn.session
        node = session.client_id if session is not None else None
        if node is not None and self._clients.get(node.raw) is conn:
            del self._clients[node.raw]
        self.metrics.clients = len(self._clients)
        self.metrics.disconnects[reason] += 1
        log.info(
            "relay_client_disconnected",
            node=node.short() if node is not None else None,
            peer=conn.peer,
            reason=reason,
            detail=detail,
            seconds=round(conn.loop.time() - conn.opened, 3),
        )

    def _dispatch(self, conn: _Connection, session: RelayServerSession) -> None:
        """Act on the events of one receive; flush each touched destination once."""
        clients = self._clients
        high_water = self.config.write_high_water
        metrics = self.metrics
        touched: set[_Connection] = set()
        forwarded = forwarded_bytes = 0
        next_event = session.next_event
        while (event := next_event()) is not None:
            if type(event) is PacketForward:
                dst = clients.get(event.dst)
                if dst is None:
                    metrics.drops["no_destination"] += 1
                    session.peer_gone(event.dst, conn.loop.time())
                elif dst.buffered() > high_water:
                    metrics.drops["destination_buffer_full"] += 1
                else:
                    assert dst.session is not None
                    dst.session.queue_frame(event.frame)
                    touched.add(dst)
                    forwarded += 1
                    forwarded_bytes += len(event.frame) - _RECV_OVERHEAD
            elif type(event) is PacketDropped:
                metrics.drops[event.reason] += 1
            elif type(event) is ClientAuthenticated:
                self._login(conn, event)
        metrics.packets_forwarded += forwarded
        metrics.bytes_forwarded += forwarded_bytes
        for dst in touched:
            if dst is not conn:
                dst.flush()

    def _login(self, conn: _Connection, event: ClientAuthenticated) -> None:
        raw = event.node_id.raw
        old = self._clients.get(raw)
        self._clients[raw] = conn
        self.metrics.clients = len(self._clients)
        self.metrics.logins += 1
        log.info("relay_client_authenticated", node=event.node_id.short(), peer=conn.peer)
        if old is not None and old is not conn:
            old.close("replaced", f"node logged in again from {conn.peer}")
