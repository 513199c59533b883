"""The mesh Endpoint: one identity, one UDP socket, QUIC connections by node id.

Like Tailscale's magicsock / Iroh 0.35, QUIC never sees real addresses: every peer has one
constant *virtual* address, and below QUIC each outgoing datagram goes over the peer's best
working path (PeerPaths: a confirmed direct address, else the relay). Incoming datagrams are
demultiplexed: disco packets (magic prefix) to the disco handler, QUIC packets to their
connection by destination connection id. A direct QUIC packet is accepted only from an address
that an authenticated disco Ping/Pong tied to a node id, and only for a connection with that
node; relay packets carry the relay-authenticated sender. A server connection pins the client
certificate to the node the packets came from, so TLS proves the same id the path layer used.

The decisions below QUIC (disco, which path, which addresses to advertise, STUN) are the
sans-IO PathLayer's (pathlayer.py); this module is its asyncio adapter and QUIC's: it owns
the socket, the relay tasks, the QUIC connections by connection id and the accept queues,
feeds both cores the loop's time, and sends what they queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import socket as pysocket
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from aioquic.buffer import Buffer, BufferReadError
from aioquic.quic import events
from aioquic.quic.packet import QuicPacketType, QuicProtocolVersion, pull_quic_header

from fleet.background import BackgroundTasks
from fleet.deadline import DeadlineTimer
from fleet.identity import Identity, NodeId
from fleet.log import get_logger
from fleet.mesh.admission import Admission, AdmissionLimits, Verdict
from fleet.mesh.config import MeshConfig
from fleet.mesh.connection import ConnectError, Connection, MeshError
from fleet.mesh.disco import Addr
from fleet.mesh.pathlayer import (
    HeldReleased,
    PathEvent,
    PathLayer,
    PeerPathChanged,
    SendUdp,
    WrongNode,
    normalize_addr,
    wrong_node_reason,
)
from fleet.mesh.paths import Path, PathChanged
from fleet.mesh.peers import Peer
from fleet.mesh.reflexive import ReflexiveChanged, StunServerStatus, StunUnanswered
from fleet.mesh.relay import RelayFactory, RelayRunner, RelayTransport
from fleet.mesh.reset import StatelessResets, is_stateless_reset, reset_key
from fleet.mesh.tls_hooks import (
    PinnedQuicConnection,
    awaiting_ack,
    kick,
    peer_reset_tokens,
    quic_configuration,
)
from fleet.mesh.udp import UdpSocket
from fleet.netaddr import format_host_port
from fleet.relay.url import InvalidRelayUrl, RelayUrl

log = get_logger(__name__)

CID_LENGTH = 8  # aioquic's default host connection id length
MIN_INITIAL_SIZE = 1200  # RFC 9000 14.1: a client Initial is padded to at least this


class Endpoint:
    """A node on the mesh. Use as `async with Endpoint(identity, alpns=[...]) as ep`.

    The relay client is injected, so the mesh does not import one: daemons pass
    `relay_factory=relay_client_factory` from fleet.relay.client, tests may pass an in-memory
    hub's. Without a factory the endpoint has no relay path and refuses relay URLs.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        bind: tuple[str, int] = ("0.0.0.0", 0),  # noqa: S104 - a mesh node is reachable
        alpns: Iterable[str] = (),
        relay_urls: Iterable[str | RelayUrl] = (),
        config: MeshConfig | None = None,
        relay_factory: RelayFactory | None = None,
    ) -> None:
        self._identity = identity
        self._bind = bind
        self._alpns = list(alpns)
        self.config = config or MeshConfig()
        self._relay_factory = relay_factory
        self._home_relays = [str(u) for u in relay_urls]
        if relay_factory is None and self._home_relays:
            raise ValueError("relay URLs given but no relay_factory to connect to them")
        self._relays: dict[str, RelayRunner] = {}
        self._relay_tasks: dict[str, asyncio.Task[None]] = {}
        self._paths = PathLayer(identity, self.config, local_addresses=lambda: self.local_addresses)
        self._by_cid: dict[bytes, Connection] = {}
        self._conn_peer: dict[Connection, Peer] = {}
        self._accept_queues: dict[str, asyncio.Queue[Connection | None]] = {
            alpn: asyncio.Queue(self.config.accept_backlog) for alpn in self._alpns
        }
        self._dirty: set[Connection] = set()
        self._flush_scheduled = False
        self._server_config: Any = None
        self._client_configs: dict[str, Any] = {}
        self._socket: UdpSocket | None = None
        self._tasks: BackgroundTasks | None = None
        self._exit = contextlib.AsyncExitStack()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._timer: DeadlineTimer | None = None  # follows the path layer's get_timer()
        self._path_listeners: list[Callable[[PathChanged], None]] = []
        self._stun_hosts: set[tuple[str, int]] = set()
        self.relay_packets_sent = 0
        self.relay_packets_received = 0
        self._quic_dropped = 0  # undecodable, unknown or misdirected QUIC datagrams
        self._unacked_grace = self.config.paths.unacked_grace
        # Stateless resets only from endpoints that serve: one that only dials (fleetctl)
        # may run as several processes of one key at once, and one's reset would end the
        # other's connections; it keeps aioquic's random tokens.
        self._resets = StatelessResets(reset_key(identity), cid_length=CID_LENGTH)
        self._reset_token = self._resets.token if self._alpns else None
        self.resets_received = 0  # connections ended by the peer's stateless reset
        cfg = self.config
        self._admission = Admission(
            AdmissionLimits(
                max_half_open_per_node=cfg.max_half_open_per_node,
                max_half_open_per_ip=cfg.max_half_open_per_ip,
                max_half_open=cfg.max_half_open,
                retry_threshold=cfg.retry_threshold,
                retry_threshold_per_node=cfg.retry_threshold_per_node,
                max_connections=cfg.max_connections,
                reserved_connections=cfg.reserved_connections,
                reserved_half_open=cfg.reserved_half_open,
            )
        )
        self._half_open: dict[Connection, float] = {}  # server connections, oldest first
        self.handshakes_timed_out = 0
        self._refusals_reported = 0  # refusals in the last summary logged

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Endpoint:
        self._loop = asyncio.get_running_loop()
        self._socket = UdpSocket(
            self._bind, buffer_size=self.config.socket_buffer, offload=self.config.udp_offload
        )
        self._exit.callback(self._socket.close)
        self._paths.bound_loopback = ipaddress.ip_address(self._socket.address[0]).is_loopback
        try:
            self._tasks = await self._exit.enter_async_context(BackgroundTasks())
            self._socket.start(self._on_datagrams, self.config.recv_batch)
            self._timer = DeadlineTimer(self._loop, self._on_housekeeping)
            self._exit.callback(self._timer.cancel)
            self._paths.start(self._now())
            self._arm_housekeeping()
            for url in self._home_relays:
                self._relay_for(url)
            for host, port in self.config.stun_servers:
                self._add_stun_server(host, port)
        except BaseException:
            await self._exit.aclose()
            raise
        log.info("mesh_endpoint_up", node=self.node_id.short(), addrs=self.local_addresses)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close; an error raised inside the block reaches the caller as itself (see
        fleet/background.py), a failed background task still fails the block."""
        await self.close()
        await self._exit.__aexit__(exc_type, exc, tb)

    async def close(self) -> None:
        """Close every connection (briefly waiting for them) and stop background tasks."""
        if self._closing:
            return
        self._closing = True
        conns = list(self._conn_peer)
        for conn in conns:
            await conn.close(reason="endpoint closing")
        self._flush_dirty()
        if conns:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await asyncio.gather(*(c.wait_closed(timeout=1.0) for c in conns))
        for conn in list(self._conn_peer):
            conn.abandon("endpoint closed")
            self._remove_connection(conn)
        for queue in self._accept_queues.values():
            while not queue.empty():
                pending = queue.get_nowait()
                if pending is not None:
                    pending.abandon("endpoint closed")
            queue.put_nowait(None)
        for task in self._relay_tasks.values():
            task.cancel()
        if self._timer is not None:
            self._timer.cancel()

    # -- public API -------------------------------------------------------------------------

    @property
    def node_id(self) -> NodeId:
        return self._identity.node_id

    @property
    def socket(self) -> UdpSocket:
        """The UDP socket (stats and a blackhole hook for tests)."""
        assert self._socket is not None, "endpoint not started"
        return self._socket

    @property
    def bound_address(self) -> Addr:
        return self.socket.address

    @property
    def local_addresses(self) -> list[Addr]:
        """Addresses peers on this host or network can try for us."""
        host, port = self.socket.address
        if host not in ("0.0.0.0", "::"):  # noqa: S104
            return [(host, port)]
        addrs: list[Addr] = [("127.0.0.1", port)]
        probe = pysocket.socket(pysocket.AF_INET, pysocket.SOCK_DGRAM)
        try:
            probe.connect(("10.255.255.255", 1))  # no packet is sent; picks the route's source
            ip = probe.getsockname()[0]
            if ip not in ("0.0.0.0", "127.0.0.1"):  # noqa: S104
                addrs.append((ip, port))
        except OSError:
            pass
        finally:
            probe.close()
        return addrs

    @property
    def reflexive_addresses(self) -> frozenset[Addr]:
        """Our public address(es) as STUN servers see our socket (empty until answered)."""
        return self._paths.reflexive.addresses

    @property
    def observed_addresses(self) -> set[Addr]:
        """Our address as peers saw it (in their Pongs)."""
        return self._paths.observed_addresses

    @property
    def disco_rejected(self) -> int:
        return self._paths.disco_rejected

    @property
    def disco_sent(self) -> int:
        """Signed disco packets sent so far (none while every direct path is idle)."""
        return self._paths.disco_sent

    @property
    def quic_dropped(self) -> int:
        return self._quic_dropped + self._paths.quic_dropped

    @property
    def stun_servers(self) -> list[Addr]:
        return self._paths.reflexive.servers

    def stun_status(self) -> list[StunServerStatus]:
        """Each STUN server we ask: its fresh answer, or how long it has been silent."""
        return self._paths.reflexive.status(self._now())

    async def wait_relays(self, timeout: float) -> None:
        """Return once every home relay is connected (TimeoutError after `timeout`): a daemon
        is reachable by node id from then on."""
        self._require_running()
        async with asyncio.timeout(timeout):
            for url in self._home_relays:
                await self._relays[url].wait_connected(timeout)

    def admission_stats(self) -> dict[str, int]:
        """Connections and half-open ones now, and what admission refused or retried so far."""
        return {
            "connections": len(self._conn_peer),
            "handshakes_timed_out": self.handshakes_timed_out,
            **self._admission.stats(),
        }

    def set_admission(
        self, *, priority: Callable[[NodeId], bool], busy: Callable[[], bool]
    ) -> None:
        """Which nodes may use the reserved slots and pass while the owner is `busy` (admins),
        and when it is too busy to start connections from others (fleet.mesh.admission)."""
        self._admission.priority = priority
        self._admission.busy = busy

    def add_path_listener(self, listener: Callable[[PathChanged], None]) -> None:
        """Call `listener` on every path change to any peer (for status and `fleet ping`)."""
        self._path_listeners.append(listener)

    def path_to(self, node: NodeId) -> Path | None:
        peer = self._paths.peers.get(node)
        return peer.paths.path if peer is not None else None

    async def connect(
        self,
        node_id: NodeId,
        alpn: str,
        *,
        addrs: Iterable[tuple[str, int]] = (),
        relay_url: str | RelayUrl | None = None,
        timeout: float = 10.0,
    ) -> Connection:
        """Open a QUIC connection to `node_id`, whose certificate must carry that key."""
        loop = self._require_running()
        if node_id == self.node_id:
            raise ConnectError("cannot connect to ourselves")
        if len(self._conn_peer) >= self.config.max_connections:
            raise ConnectError("too many connections")
        now = loop.time()
        candidates: list[Addr] = []
        for addr in addrs:
            try:
                candidates.append(normalize_addr(addr))
            except ValueError as exc:
                raise ConnectError(f"bad address {addr!r}: {exc}") from exc
        known = self._paths.peers.get(node_id)
        relay: RelayRunner | None = None
        if relay_url is None and (known is None or known.relay is None) and self._home_relays:
            relay_url = self._home_relays[0]
        if relay_url is not None:
            relay = self._relay_for(str(relay_url))
        peer = self._paths.dial(node_id, candidates, relay, now)
        if not peer.paths.candidates and peer.relay is None:
            raise ConnectError(f"no address and no relay for node {node_id.short()}")
        deadline = now + timeout
        if relay is not None and not relay.connected and not peer.paths.candidates:
            try:
                await relay.wait_connected(timeout)
            except TimeoutError:
                raise ConnectError(
                    f"relay {relay_url} not reachable within {timeout:.1f}s"
                ) from None
            now = loop.time()
        self._paths.relay_settled(peer, now)
        config = self._client_configs.get(alpn)
        if config is None:
            config = self._client_configs[alpn] = self._quic_config(True, [alpn])
        quic = PinnedQuicConnection(
            configuration=config,
            expected_peer=node_id,
            handshake_pto_max=self.config.handshake_pto_max,
            reset_token=self._reset_token,
        )
        conn = self._add_connection(quic, peer, is_client=True)
        quic.connect(peer.vaddr, now)
        self._flush(conn)
        try:
            async with asyncio.timeout_at(deadline):
                await conn.wait_handshake()
        except TimeoutError:
            await conn.close(reason="handshake timeout")
            wrong = f"; {wrong_node_reason(peer)}" if peer.wrong_node else ""
            raise ConnectError(
                f"no handshake with {node_id.short()} within {timeout:.1f}s "
                f"(path {peer.paths.path}){wrong}"
            ) from None
        except ConnectError:
            raise
        log.info("mesh_connected", peer=node_id.short(), alpn=alpn, path=str(peer.paths.path))
        return conn

    async def accept(self, alpn: str | None = None, timeout: float | None = None) -> Connection:
        """The next incoming connection (for `alpn`, or the only ALPN served)."""
        self._require_running()
        if alpn is None:
            if len(self._alpns) != 1:
                raise ValueError("accept() needs an alpn when the endpoint serves several")
            alpn = self._alpns[0]
        queue = self._accept_queues.get(alpn)
        if queue is None:
            raise ValueError(f"endpoint does not serve ALPN {alpn!r}")
        async with asyncio.timeout(timeout):
            conn = await queue.get()
        if conn is None:  # the endpoint closed
            queue.put_nowait(None)
            raise MeshError("endpoint closed")
        return conn

    # -- relays -----------------------------------------------------------------------------

    def _relay_for(self, url: str) -> RelayRunner:
        relay = self._relays.get(url)
        if relay is not None:
            return relay
        if self._tasks is None:
            raise MeshError("endpoint is not running")
        if self._relay_factory is None:
            raise ConnectError(f"relay {url} given, but this endpoint has no relay client")

        def on_packet(src: NodeId, data: bytes) -> None:
            self._on_relay_packet(relay_ref, src, data)

        def on_peer_gone(node: NodeId) -> None:
            log.debug("relay_peer_gone", peer=node.short(), relay=url)

        relay_ref = self._relay_factory(url, self._identity, on_packet, on_peer_gone)
        self._relays[url] = relay_ref
        self._relay_tasks[url] = self._tasks.create_task(relay_ref.run(), name=f"relay {url}")
        if self.config.relay_stun_port is not None:
            try:
                host = RelayUrl.parse(url).host
            except InvalidRelayUrl:
                host = None  # a test relay without a real address: no STUN there
            if host is not None:
                self._add_stun_server(host, self.config.relay_stun_port)
        return relay_ref

    # -- STUN -------------------------------------------------------------------------------

    def _add_stun_server(self, host: str, port: int) -> None:
        """Ask `host:port` for our reflexive address (resolving a host name in the background)."""
        if (host, port) in self._stun_hosts or self._tasks is None:
            return
        self._stun_hosts.add((host, port))
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            self._tasks.create_task(self._resolve_stun_server(host, port), name=f"stun {host}")
            return
        self._add_stun_addr(str(ip), port)

    def _add_stun_addr(self, ip: str, port: int) -> None:
        family = 6 if ":" in self.socket.address[0] else 4
        if ipaddress.ip_address(ip).version != family:
            return
        self._paths.add_stun_server((ip, port), self._now())
        self._service_paths()

    async def _resolve_stun_server(self, host: str, port: int) -> None:
        loop = self._require_running()
        try:
            async with asyncio.timeout(5.0):
                infos = await loop.getaddrinfo(host, port, type=pysocket.SOCK_DGRAM)
        except (OSError, TimeoutError) as exc:
            log.warning("stun_server_unresolved", host=host, error=str(exc))
            return
        for info in infos[:2]:
            self._add_stun_addr(str(info[4][0]), port)

    # -- the path layer's output ----------------------------------------------------------

    def _service_paths(self) -> None:
        """Send what the path layer queued and act on its events (which may queue more)."""
        paths = self._paths
        self._transmit()
        while (event := paths.next_event()) is not None:
            self._on_path_event(event)
            self._transmit()
        if paths.timer_moved:
            paths.timer_moved = False
            self._arm_housekeeping()

    def _transmit(self) -> None:
        socket = self.socket
        for out in self._paths.datagrams_to_send():
            if isinstance(out, SendUdp):
                socket.sendto(out.data, out.addr)
            else:
                out.relay.send(out.node, out.data)

    def _on_path_event(self, event: PathEvent) -> None:
        if isinstance(event, PeerPathChanged):
            self._on_path_changed(event.peer, event.change)
        elif isinstance(event, HeldReleased):
            for data in event.datagrams:
                conn = self._receive_quic(event.peer, data, source=event.addr)
                if conn is not None:
                    conn.direct_source = event.addr
                    self._request_flush(conn)
        elif isinstance(event, WrongNode):
            for conn in list(event.peer.connections):
                if conn.quic.verified_peer is None:
                    conn.quic.close(error_code=0x1, reason_phrase=event.reason)
                    conn.after_batch()
                    self._request_flush(conn)
        elif isinstance(event, StunUnanswered):
            log.warning(
                "mesh_stun_unanswered",
                server=format_host_port(*event.server),
                waited=round(event.waited, 1),
                hint="no public address: nodes behind NAT cannot punch holes and stay on "
                "the relay; check the relay answers STUN and UDP to it is open",
            )
        elif isinstance(event, ReflexiveChanged):
            log.info(
                "mesh_reflexive_address",
                old=sorted(f"{h}:{p}" for h, p in event.old),
                new=sorted(f"{h}:{p}" for h, p in event.new),
            )

    def _on_path_changed(self, peer: Peer, change: PathChanged) -> None:
        log.info(
            "mesh_path_changed",
            peer=peer.node.short(),
            old=str(change.old) if change.old else None,
            new=str(change.new) if change.new else None,
            reason=change.reason,
        )
        for listener in self._path_listeners:
            try:
                listener(change)
            except Exception:  # a listener's bug must not break the data path
                log.exception("path_listener_failed")
        now = self._now()
        for conn in peer.connections:
            conn.path_changed(change)
            if change.old is not None and change.new is not None:
                kick(conn.quic, now)  # resend what the old path lost, without waiting a PTO
                self._request_flush(conn)

    # -- datagram input ---------------------------------------------------------------------

    def _on_relay_packet(self, relay: RelayTransport, src: NodeId, data: bytes) -> None:
        if self._closing:
            return
        self.relay_packets_received += 1
        try:
            peer = self._paths.receive_relay(src, data, self._now(), relay=relay)
            self._service_paths()
            if peer is None:
                return
            conn = self._receive_quic(peer, data, source=None)
            if conn is not None:
                conn.direct_source = None
                self._request_flush(conn)
        except Exception:  # a bad packet must never take the endpoint down
            log.exception("relay_packet_error", src=src.short())

    def _on_datagrams(self, datagrams: list[tuple[bytes, Addr]]) -> None:
        """One batch from the socket: feed everything, then flush each touched connection."""
        touched: set[Connection] = set()
        receive_udp = self._paths.receive_udp
        now = self._now()  # one batch, one instant: aioquic only needs it for timers
        last_addr: Addr | None = None  # a batch is mostly one sender's run: look it up once
        peer: Peer | None = None
        for data, addr in datagrams:
            try:
                if data[0] < 0x40 or addr != last_addr:
                    # Disco or STUN (may tie this address to another node), or a new sender.
                    peer = receive_udp(data, addr, now)
                    if peer is None:
                        last_addr = None
                        if data[0] >= 0x40:  # QUIC from an address no Ping tied to a node
                            self._reset_unknown(data, addr, None, None, now)
                        self._service_paths()
                        continue
                    last_addr = addr
                elif peer is None:
                    continue
                conn = self._receive_quic(peer, data, source=addr, now=now)
                if conn is not None:
                    conn.direct_source = addr
                    touched.add(conn)
            except Exception:  # a bad packet must never take the endpoint down
                log.exception("datagram_error", src=addr)
        for conn in touched:
            self._flush(conn)

    def _receive_quic(
        self, peer: Peer, data: bytes, *, source: Addr | None, now: float | None = None
    ) -> Connection | None:
        """Feed one QUIC datagram to its connection; events are processed at the next flush.
        `source`: the direct address it came from (None: over the relay)."""
        if data[0] & 0xC0 == 0x40 and len(data) > CID_LENGTH:
            # Short header (the bulk of traffic): the DCID is the next CID_LENGTH bytes.
            conn = self._by_cid.get(data[1 : 1 + CID_LENGTH])
            header = None
        else:
            try:
                header = pull_quic_header(Buffer(data=data), host_cid_length=CID_LENGTH)
            except (ValueError, BufferReadError):
                self._quic_dropped += 1
                return None
            conn = self._by_cid.get(header.destination_cid)
        if conn is None:
            if header is not None:
                conn = self._new_server_connection(peer, header, len(data), source)
            elif self._stateless_reset_received(peer, data):
                return None
            else:
                self._reset_unknown(data, source, peer, peer.relay, now)
            if conn is None:
                self._quic_dropped += 1
                return None
        elif self._conn_peer.get(conn) is not peer:
            self._quic_dropped += 1  # a packet for another node's connection
            return None
        conn.quic.receive_datagram(data, peer.vaddr, self._now() if now is None else now)
        return conn

    def _reset_unknown(
        self,
        data: bytes,
        source: Addr | None,
        peer: Peer | None,
        relay: RelayTransport | None,
        now: float | None,
    ) -> None:
        """A short header packet for a connection we do not have (we restarted, or it is
        long gone): answer with a stateless reset, so the peer stops waiting for us."""
        if (
            self._reset_token is None
            or data[0] & 0xC0 != 0x40
            or data[1 : 1 + CID_LENGTH] in self._by_cid
        ):
            return
        reset = self._resets.answer(data, self._now() if now is None else now)
        if reset is None:
            return
        if source is not None:
            self.socket.sendto(reset, source)
        elif relay is not None and peer is not None:
            relay.send(peer.node, reset)

    def _stateless_reset_received(self, peer: Peer, data: bytes) -> bool:
        """End the peer's connections whose token `data` carries (the peer lost them)."""
        ended = False
        for conn in list(peer.connections):
            if is_stateless_reset(data, peer_reset_tokens(conn.quic)):
                ended = True
                self.resets_received += 1
                log.info("mesh_stateless_reset", peer=peer.node.short(), alpn=conn.alpn)
                conn.abandon("the peer lost the connection (stateless reset: it restarted?)")
                self._remove_connection(conn)
        return ended

    def _new_server_connection(
        self, peer: Peer, header: Any, size: int, source: Addr | None
    ) -> Connection | None:
        if (
            header.packet_type != QuicPacketType.INITIAL
            or header.version != QuicProtocolVersion.VERSION_1
            or size < MIN_INITIAL_SIZE
            or not self._alpns
            or self._closing
        ):
            return None
        now = self._now()
        decision = self._admission.decide(
            peer.node,
            source,
            version=header.version,
            destination_cid=header.destination_cid,
            source_cid=header.source_cid,
            token=header.token,
            now=now,
            connections=len(self._conn_peer),
        )
        if decision.verdict is Verdict.RETRY:
            if source is not None:
                self.socket.sendto(decision.retry, source)
            elif peer.relay is not None:
                peer.relay.send(peer.node, decision.retry)
            return None
        if decision.verdict is Verdict.DROP:
            log.debug("mesh_initial_refused", peer=peer.node.short(), reason=decision.reason)
            self._arm_housekeeping()  # for the refusal summary
            return None
        if self._server_config is None:
            self._server_config = self._quic_config(False, self._alpns)
        quic = PinnedQuicConnection(
            configuration=self._server_config,
            expected_peer=peer.node,  # TLS must prove the node the packets came from
            original_destination_connection_id=decision.original_cid,
            retry_source_connection_id=decision.retry_cid,
            handshake_pto_max=self.config.handshake_pto_max,
            reset_token=self._reset_token,
        )
        conn = self._add_connection(quic, peer, is_client=False)
        conn.half_open = self._admission.open(peer.node, source, now)
        self._half_open[conn] = now
        self._arm_housekeeping()
        self._register_cid(conn, header.destination_cid)
        return conn

    def _process_events(self, conn: Connection) -> None:
        quic = conn.quic
        while (event := quic.next_event()) is not None:
            if type(event) is events.StreamDataReceived:  # the bulk of events: no chain
                conn.handle_event(event)
            elif isinstance(event, events.ConnectionIdIssued):
                self._register_cid(conn, event.connection_id)
            elif isinstance(event, events.ConnectionIdRetired):
                conn.cids.discard(event.connection_id)
                if self._by_cid.get(event.connection_id) is conn:
                    del self._by_cid[event.connection_id]
            elif isinstance(event, events.HandshakeCompleted):
                self._settle(conn)
                conn.handle_event(event)
                if not conn.is_client and conn.verified:
                    self._enqueue_accept(conn)
            elif isinstance(event, events.ConnectionTerminated):
                conn.handle_event(event)
                self._remove_connection(conn)
            else:
                conn.handle_event(event)
        conn.after_batch()

    def _enqueue_accept(self, conn: Connection) -> None:
        queue = self._accept_queues.get(conn.alpn or "")
        if queue is None or queue.full():
            conn.quic.close(error_code=0x2, reason_phrase="not accepting connections")
            return
        queue.put_nowait(conn)
        log.info(
            "mesh_accepted",
            peer=conn.remote_id.short(),
            alpn=conn.alpn,
            path=str(conn.path_detail),
        )

    # -- output -----------------------------------------------------------------------------

    def _request_flush(self, conn: Connection) -> None:
        self._dirty.add(conn)
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_dirty)

    def _flush_dirty(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        for conn in dirty:
            self._flush(conn)

    def _flush(self, conn: Connection) -> None:
        """Send everything the connection has queued, over the peer's current path."""
        peer = self._conn_peer.get(conn)
        if peer is None:
            return
        quic = conn.quic
        now = self._now()
        self._process_events(conn)
        datagrams = quic.datagrams_to_send(now)
        if datagrams:
            addrs, relay = self._paths.route(peer, now)
            self._service_paths()  # due pings leave before the QUIC packets they unlock
            source = conn.direct_source
            if source is not None and source not in addrs:
                addrs = [source]  # another process of the same node id holds the path
            payloads = [data for data, _ in datagrams]
            for addr in addrs:
                self.socket.send_many(payloads, addr)
            if relay is not None:
                relay_send, node = relay.send, peer.node
                for data in payloads:
                    relay_send(node, data)
                self.relay_packets_sent += len(payloads)
        self._track_unacked(conn, peer, now)
        self._process_events(conn)
        timer = quic.get_timer()
        wake = conn.keepalive_at
        if timer is not None and timer < wake:
            wake = timer
        since = conn.unacked_since
        if since is not None and not conn.unacked_reported:
            wake = min(wake, since + self._unacked_grace)  # report it if it lasts
        conn.timer.set(wake)

    def _track_unacked(self, conn: Connection, peer: Peer, now: float) -> None:
        """Tell the path layer when data to the peer has waited for an ACK for
        `unacked_grace` (the path in use is then heartbeated), and when it no longer does.
        Shorter waits (every request, every burst) stay here: no path layer work per flush."""
        if awaiting_ack(conn.quic):
            since = conn.unacked_since
            if since is None:
                conn.unacked_since = now
            elif not conn.unacked_reported and now >= since + self._unacked_grace:
                conn.unacked_reported = True
                self._report_unacked(peer, now)
        elif conn.unacked_since is not None:
            conn.unacked_since = None
            if conn.unacked_reported:
                conn.unacked_reported = False
                self._report_unacked(peer, now)

    def _report_unacked(self, peer: Peer, now: float) -> None:
        waiting = [
            c.unacked_since
            for c in peer.connections
            if c.unacked_reported and c.unacked_since is not None
        ]
        self._paths.set_unacked(peer, min(waiting) if waiting else None, now)
        self._service_paths()

    def _on_timer(self, conn: Connection) -> None:
        """The connection's timer: aioquic's, or its keepalive (a QUIC PING keeps the NAT
        binding open and proves the path; no signed disco needed while it is answered)."""
        if conn not in self._conn_peer:
            return
        now = self._now()
        if now >= conn.keepalive_at:
            conn.keepalive_at = now + self.config.keepalive_interval
            if conn.closed is None:
                conn.quic.send_ping(0)
        conn.quic.handle_timer(now)
        self._process_events(conn)
        self._flush(conn)

    # -- housekeeping -----------------------------------------------------------------------

    def _on_housekeeping(self) -> None:
        """At the path layer's timer (its due peers only), and for half-open handshakes that
        took too long. Never raises (it runs as a loop callback)."""
        if self._closing or self._timer is None:
            return
        now = self._now()
        try:
            self._paths.handle_timer(now)
            self._service_paths()
            self._expire_half_open(now)
        except Exception:  # a bug here must not stop the timer for good
            log.exception("mesh_housekeeping_failed")
        self._arm_housekeeping()

    def _arm_housekeeping(self) -> None:
        """Set the one housekeeping timer, on a `tick` grid so that many peers' deadlines
        share a wake-up (at most `tick` late, as the old 100 ms walk was)."""
        timer = self._timer
        if timer is None or self._closing:
            return
        times = [t for t in (self._paths.get_timer(), self._half_open_deadline()) if t is not None]
        if not times:
            timer.set(None)
            return
        tick = self.config.tick
        timer.set(math.ceil(min(times) / tick) * tick)

    def _half_open_deadline(self) -> float | None:
        if self._half_open:
            return next(iter(self._half_open.values())) + self.config.handshake_timeout
        if sum(self._admission.refused.values()) != self._refusals_reported:
            return self._now() + 1.0  # until the admission's rate-limited summary is out
        return None

    # -- bookkeeping ------------------------------------------------------------------------

    def _quic_config(self, is_client: bool, alpns: list[str]) -> Any:
        cfg = self.config
        return quic_configuration(
            self._identity,
            is_client=is_client,
            alpns=alpns,
            idle_timeout=cfg.idle_timeout,
            max_datagram_size=cfg.max_datagram_size,
            max_data=cfg.max_data,
            max_stream_data=cfg.max_stream_data,
        )

    def _add_connection(
        self, quic: PinnedQuicConnection, peer: Peer, *, is_client: bool
    ) -> Connection:
        conn = Connection(
            quic,
            peer.node,
            is_client=is_client,
            request_flush=self._request_flush,
            path_of=lambda: peer.paths.path,
            on_timer=self._on_timer,
        )
        now = self._now()
        conn.keepalive_at = now + self.config.keepalive_interval
        self._conn_peer[conn] = peer
        self._register_cid(conn, quic.host_cid)
        self._paths.connection_added(peer, conn, now)
        self._service_paths()
        return conn

    def _register_cid(self, conn: Connection, cid: bytes) -> None:
        conn.cids.add(cid)
        self._by_cid[cid] = conn

    def _settle(self, conn: Connection) -> None:
        """A server connection is no longer half-open (handshake done, or gone)."""
        slot, conn.half_open = conn.half_open, None
        if slot is not None:
            self._admission.settle(slot)
            self._half_open.pop(conn, None)

    def _expire_half_open(self, now: float) -> None:
        """Drop server connections whose handshake did not complete in time (no reply: the
        client, if real, retries; a flood's leftovers are gone)."""
        horizon = now - self.config.handshake_timeout
        for conn, since in list(self._half_open.items()):
            if since > horizon:
                break  # oldest first
            self.handshakes_timed_out += 1
            conn.abandon("handshake timeout")
            self._remove_connection(conn)
        if self._admission.report_due(now):
            self._refusals_reported = sum(self._admission.refused.values())
            log.warning("mesh_admission_refused", **self.admission_stats())

    def _remove_connection(self, conn: Connection) -> None:
        self._settle(conn)
        peer = self._conn_peer.pop(conn, None)
        for cid in conn.cids:
            if self._by_cid.get(cid) is conn:
                del self._by_cid[cid]
        conn.cids.clear()
        conn.timer.cancel()
        self._dirty.discard(conn)
        if peer is not None:
            self._paths.connection_removed(peer, conn, self._now())
            self._service_paths()

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _require_running(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._socket is None or self._closing:
            raise MeshError("endpoint is not running (use `async with Endpoint(...)`)")
        return self._loop
