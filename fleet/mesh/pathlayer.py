"""The path layer below QUIC, as a sans-IO core: which node a datagram is from, where one goes.

In the style of aioquic's QuicConnection: the Endpoint feeds it what arrives
(`receive_udp`, `receive_relay`), calls `handle_timer(now)` at `get_timer()`, and after each
call sends `datagrams_to_send()` (direct UDP or via a relay) and handles `next_event()`.
Time is always passed in (`now`: the event loop's monotonic clock); the wall clock is only
read to stamp and check signed disco packets (`unix_time`, injected).

It owns everything that decides, none of what does I/O: the peer table (paths, relays,
addresses tied to nodes by disco, packets held until a Ping names their sender), disco
(Ping/Pong/CallMeMaybe, signed), wrong-node detection, the addresses we advertise, retrying
the upgrade from the relay, per-packet path choice (`route`) and reflexive (STUN) probing.
The Endpoint keeps the socket, the relay tasks, the QUIC connections and accept queues.
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fleet.identity import Identity, NodeId
from fleet.mesh import disco
from fleet.mesh.disco import Addr
from fleet.mesh.paths import PathChanged
from fleet.mesh.peers import Peer, PeerTable
from fleet.mesh.reflexive import ReflexiveChanged, ReflexiveProbe, StunUnanswered
from fleet.mesh.relay import RelayTransport
from fleet.stun import looks_like_stun

if TYPE_CHECKING:
    from fleet.mesh.config import MeshConfig
    from fleet.mesh.connection import Connection


def normalize_addr(addr: tuple[str, int]) -> Addr:
    """An address as the socket reports it: IPv4-mapped IPv6 as IPv4, port checked."""
    host, port = addr
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not 0 < int(port) < 65536:
        raise ValueError(f"bad port {port}")
    return (str(ip), int(port))


# -- outputs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendUdp:
    """Transmit: one datagram to a direct address."""

    data: bytes
    addr: Addr


@dataclass(frozen=True, slots=True)
class SendRelay:
    """Transmit: one packet to `node` through `relay`."""

    data: bytes
    relay: RelayTransport
    node: NodeId


Transmit = SendUdp | SendRelay


@dataclass(frozen=True, slots=True)
class HeldReleased:
    """QUIC datagrams held from `addr` until a Ping tied it to `peer`: feed them now."""

    peer: Peer
    addr: Addr
    datagrams: list[bytes]


@dataclass(frozen=True, slots=True)
class WrongNode:
    """Every address we were given for `peer` answered as another node: `reason` says which.
    Its connections that have not completed a handshake should fail with it."""

    peer: Peer
    reason: str


@dataclass(frozen=True, slots=True)
class PeerPathChanged:
    """The path to `peer` changed (`change` is what its connections are told)."""

    peer: Peer
    change: PathChanged


PathEvent = PeerPathChanged | HeldReleased | WrongNode | ReflexiveChanged | StunUnanswered


class PathLayer:
    """Decisions of the mesh below QUIC for one identity (see the module docstring)."""

    def __init__(
        self,
        identity: Identity,
        config: MeshConfig,
        *,
        local_addresses: Callable[[], Sequence[Addr]] = tuple,
        bound_loopback: bool = False,
        unix_time: Callable[[], float] = time.time,
    ) -> None:
        self._identity = identity
        self._me = identity.node_id
        self._config = config
        self.peers = PeerTable(config.paths)
        self.reflexive = ReflexiveProbe(config.stun)
        # Our own addresses, asked when we advertise them (the host's may change).
        self.local_addresses = local_addresses
        # Listening on loopback only (tests, same-host setups): loopback may be advertised.
        self.bound_loopback = bound_loopback
        self._unix_time = unix_time
        self.observed_addresses: set[Addr] = set()  # our address as peers saw it (Pongs)
        self.disco_rejected = 0
        self.quic_dropped = 0  # QUIC datagrams from addresses no Ping tied to a node (held)
        self._transmits: list[Transmit] = []
        self._events: deque[PathEvent] = deque()
        self._next_tick: float | None = None

    # -- outputs ----------------------------------------------------------------------------

    def datagrams_to_send(self) -> list[Transmit]:
        """Disco and STUN datagrams queued by the last calls, in order."""
        out, self._transmits = self._transmits, []
        return out

    def next_event(self) -> PathEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When `handle_timer` should run next (None: not started)."""
        return self._next_tick

    # -- inputs: datagrams --------------------------------------------------------------------

    def receive_udp(self, data: bytes, addr: Addr, now: float) -> Peer | None:
        """A datagram from the socket. Returns the peer a QUIC datagram is from, for the
        caller to feed to its connection; None when it was disco, STUN, held or dropped."""
        if data[0] < 0x40:  # never QUIC v1 (fixed bit): disco or STUN
            if disco.is_disco(data):
                self._on_disco(data, addr, None, None, now)
            elif looks_like_stun(data) and self.reflexive.receive(data, addr, now):
                self._after_stun(now)
            return None
        peer = self.peers.peer_at(addr)
        if peer is None:
            self.quic_dropped += 1
            self.peers.hold(addr, data, now)
        return peer

    def receive_relay(
        self, src: NodeId, data: bytes, now: float, *, relay: RelayTransport
    ) -> Peer | None:
        """A packet `relay` forwarded from `src` (the relay authenticated it). Returns the peer
        for a QUIC packet (to feed), None for disco."""
        if disco.is_disco(data):
            self._on_disco(data, None, src, relay, now)
            return None
        peer = self.peers.get_or_create(src)
        if peer.relay is None:
            peer.relay = relay
            peer.paths.set_relay(True, now)
        self._poll_peer(peer, now)
        return peer

    # -- inputs: connections ------------------------------------------------------------------

    def dial(
        self, node: NodeId, addrs: Iterable[Addr], relay: RelayTransport | None, now: float
    ) -> Peer:
        """Before connecting to `node`: its given addresses (normalized) become candidates,
        `relay` (if any) the way to it."""
        peer = self.peers.get_or_create(node)
        for addr in addrs:
            peer.paths.add_candidate(addr, now, "connect")
        if relay is not None:
            peer.relay = relay
        return peer

    def relay_settled(self, peer: Peer, now: float) -> None:
        """Whether the peer has a relay is now known (after waiting for it to connect)."""
        peer.paths.set_relay(peer.relay is not None, now)

    def connection_added(self, peer: Peer, conn: Connection, now: float) -> None:
        """A QUIC connection to `peer` exists: its paths are probed from now on, and over a
        relay we tell the peer where to reach us directly."""
        peer.connections.add(conn)
        peer.paths.set_active(True, now)
        if peer.relay is not None:
            self._send_call_me_maybe(peer, now)
        # Ping its candidates at once: a server's pings must open its NAT towards the peer
        # before our CallMeMaybe makes the peer ping us (else the peer's first pings are
        # dropped there and punching waits a search interval).
        self._poll_peer(peer, now)

    def connection_removed(self, peer: Peer, conn: Connection, now: float) -> None:
        peer.connections.discard(conn)
        if not peer.connections:
            peer.paths.set_active(False, now)
            self._emit_path_events(peer)

    def route(self, peer: Peer, now: float) -> tuple[list[Addr], RelayTransport | None]:
        """Where the QUIC datagrams to `peer` go now: direct addresses, and the relay to use
        as well (or None). Due pings are queued first (send them before the QUIC ones)."""
        paths = peer.paths
        deadline = paths.next_deadline()
        if deadline is not None and deadline <= now:
            self._poll_peer(peer, now)
        addrs, via_relay = paths.send_targets(now)
        return addrs, peer.relay if via_relay else None

    # -- inputs: STUN ---------------------------------------------------------------------------

    def add_stun_server(self, addr: Addr, now: float) -> None:
        self.reflexive.add_server(addr, now)
        self._poll_stun(now)

    # -- timers ---------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        self._next_tick = now + self._config.tick

    def handle_timer(self, now: float) -> None:
        """Heartbeats and probes due, upgrade attempts from the relay, STUN, held packets."""
        if self._next_tick is None or now < self._next_tick:
            return
        self._next_tick = now + self._config.tick
        stun_due = self.reflexive.next_deadline()
        if stun_due is not None and stun_due <= now:
            self._poll_stun(now)
        upgrade = self._config.call_me_maybe_interval
        for peer in self.peers:
            deadline = peer.paths.next_deadline()
            if deadline is not None and deadline <= now:
                self._poll_peer(peer, now)
            if (
                peer.connections
                and peer.relay is not None
                and (peer.paths.path is None or peer.paths.path.kind == "relay")
                and (peer.last_call_me_maybe is None or now - peer.last_call_me_maybe >= upgrade)
            ):
                self._send_call_me_maybe(peer, now)  # keep trying to go direct
        self.peers.expire_held(now)

    # -- disco ------------------------------------------------------------------------------------

    def _on_disco(
        self,
        data: bytes,
        addr: Addr | None,
        relay_src: NodeId | None,
        relay: RelayTransport | None,
        now: float,
    ) -> None:
        try:
            packet = disco.decode(
                data, self._me, self._unix_time(), max_age=self._config.disco_max_age
            )
        except disco.MisaddressedDisco as exc:
            self.disco_rejected += 1
            if addr is not None and isinstance(exc.packet.message, disco.Ping):
                # Someone dialled another node at our address: tell them who answers here
                # (signed), so their connect fails with a clear reason instead of a timeout.
                reply = disco.Pong(exc.packet.message.tx_id, addr)
                self._send_disco(exc.packet.sender, reply, addr)
            return
        except disco.DiscoError:
            self.disco_rejected += 1
            return
        sender = packet.sender
        if relay_src is not None and sender != relay_src:
            self.disco_rejected += 1
            return
        if sender == self._me:
            return
        message = packet.message
        if isinstance(message, disco.Ping):
            if addr is None:
                return  # pings probe direct paths only
            peer = self.peers.get_or_create(sender)
            self.peers.map_addr(addr, sender)
            peer.paths.ping_received(addr, now)
            self._send_disco(sender, disco.Pong(message.tx_id, addr), addr)
            self._release_held(addr, peer, now)
        elif isinstance(message, disco.Pong):
            if addr is None:
                return
            known = self.peers.get(sender)
            if known is None or not known.paths.pong_received(message.tx_id, addr, now):
                self._note_wrong_node(addr, sender)
                return
            peer = known
            self.peers.map_addr(addr, sender)
            self.observed_addresses.add(message.observed)
            self._release_held(addr, peer, now)
        else:
            peer = self.peers.get_or_create(sender)
            for candidate in message.addresses:
                peer.paths.add_candidate(candidate, now, "call-me-maybe")
            if relay is not None and peer.relay is None:
                peer.relay = relay
                peer.paths.set_relay(True, now)
        self._poll_peer(peer, now)

    def _note_wrong_node(self, addr: Addr, answered: NodeId) -> None:
        """An unmatched Pong: if we dial another node at that address, remember who answered."""
        for peer in self.peers:
            if peer.node == answered or not peer.connections:
                continue
            if addr not in peer.paths.candidates:
                continue
            peer.wrong_node[addr] = answered
            if peer.relay is None and set(peer.paths.candidates) <= set(peer.wrong_node):
                # Every address we were given belongs to someone else: fail now, clearly.
                self._events.append(WrongNode(peer, wrong_node_reason(peer)))

    def _send_disco(self, receiver: NodeId, message: disco.Message, addr: Addr) -> None:
        packet = disco.encode(self._identity, receiver, message, self._unix_time())
        self._transmits.append(SendUdp(packet, addr))

    def advertised_addresses(self) -> tuple[Addr, ...]:
        """Where peers may reach us directly, best first (what CallMeMaybe carries)."""
        ours = [
            *sorted(self.reflexive.addresses),  # what STUN servers saw: the NAT's mapping
            *self.local_addresses(),
            *sorted(self.observed_addresses),  # what peers' Pongs saw
        ]
        return tuple(
            a
            for a in dict.fromkeys(ours)
            # Our loopback address means another host's loopback to the peer: only advertise
            # it when we listen on loopback alone (tests, same-host setups).
            if self.bound_loopback or not ipaddress.ip_address(a[0]).is_loopback
        )[: disco.MAX_ADDRESSES]

    def _send_call_me_maybe(self, peer: Peer, now: float) -> None:
        """Tell the peer (over the relay) where to reach us directly, so both sides probe."""
        relay = peer.relay
        if relay is None:
            return
        addrs = self.advertised_addresses()
        peer.last_call_me_maybe = now
        if addrs:
            packet = disco.encode(
                self._identity, peer.node, disco.CallMeMaybe(addrs), self._unix_time()
            )
            self._transmits.append(SendRelay(packet, relay, peer.node))

    def _poll_peer(self, peer: Peer, now: float) -> None:
        """Queue due pings and publish path changes for one peer."""
        for action in peer.paths.poll(now):
            self._send_disco(peer.node, action.ping, action.addr)
        self._emit_path_events(peer)

    def _emit_path_events(self, peer: Peer) -> None:
        while (change := peer.paths.next_event()) is not None:
            self._events.append(PeerPathChanged(peer, change))

    def _release_held(self, addr: Addr, peer: Peer, now: float) -> None:
        held = self.peers.release(addr, now)
        if held:
            self.quic_dropped -= len(held)
            self._events.append(HeldReleased(peer, addr, held))

    # -- STUN -------------------------------------------------------------------------------------

    def _poll_stun(self, now: float) -> None:
        for data, addr in self.reflexive.poll(now):
            self._transmits.append(SendUdp(data, addr))
        self._after_stun(now)

    def _after_stun(self, now: float) -> None:
        while (event := self.reflexive.next_event()) is not None:
            self._events.append(event)
            if isinstance(event, ReflexiveChanged) and event.new - event.old:
                # New public address: tell every peer we talk to, so they probe it (re-punch).
                for peer in self.peers:
                    if peer.connections:
                        self._send_call_me_maybe(peer, now)


def wrong_node_reason(peer: Peer) -> str:
    """Which of the peer's addresses answered as which other node (for error messages)."""
    return "; ".join(
        f"{a[0]}:{a[1]} answered as node {other}, not {peer.node}"
        for a, other in peer.wrong_node.items()
    )
