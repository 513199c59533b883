"""The path layer's decisions with no socket and no event loop: two or three PathLayer cores
on a simulated network (UDP links that can be cut, one in-memory relay) and a clock the test
advances. "QUIC" here is a stand-in datagram with the QUIC fixed bit; what matters is which
path the cores choose for it and whether the receiving core ties it to the right node."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from fleet.identity import Identity, NodeId
from fleet.mesh.config import MeshConfig
from fleet.mesh.connection import Connection
from fleet.mesh.disco import Addr
from fleet.mesh.pathlayer import (
    HeldReleased,
    PathEvent,
    PathLayer,
    PeerPathChanged,
    SendRelay,
    SendUdp,
    WrongNode,
)
from fleet.mesh.paths import Path
from fleet.mesh.peers import Peer

EPOCH = 1_800_000_000.0  # the simulated wall clock at now = 0 (disco timestamps)
STEP = 0.05


class SimRelay:
    """One node's view of the shared in-memory relay (RelayTransport)."""

    def __init__(self, net: SimNet, owner: NodeId) -> None:
        self.net = net
        self.owner = owner
        self.connected = True

    def send(self, dst: NodeId, data: bytes) -> bool:
        self.net.in_flight.append((self.owner, dst, data))
        return True


@dataclass
class Node:
    identity: Identity
    addr: Addr
    core: PathLayer
    relay: SimRelay
    events: list[PathEvent] = field(default_factory=list)
    quic_from: list[tuple[NodeId, bytes, str]] = field(default_factory=list)  # node, data, via

    @property
    def node_id(self) -> NodeId:
        return self.identity.node_id


class SimNet:
    """Nodes, UDP between their addresses (unless cut), a relay between all, and a clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.nodes: dict[NodeId, Node] = {}
        self.at: dict[Addr, Node] = {}
        self.cut: set[frozenset[Addr]] = set()
        self.in_flight: list[tuple[NodeId, NodeId, bytes]] = []  # relay: src, dst, data

    def add(self, addr: Addr) -> Node:
        identity = Identity.generate()
        holder: list[Node] = []
        core = PathLayer(
            identity,
            MeshConfig(),
            local_addresses=lambda: [holder[0].addr],
            unix_time=lambda: EPOCH + self.now,
        )
        node = Node(identity, addr, core, SimRelay(self, identity.node_id))
        holder.append(node)
        self.nodes[node.node_id] = node
        self.at[addr] = node
        core.start(self.now)
        return node

    def move(self, node: Node, addr: Addr) -> None:
        """The node's NAT rebinds (or it restarts on another port)."""
        del self.at[node.addr]
        node.addr = addr
        self.at[addr] = node

    def udp_works(self, a: Addr, b: Addr) -> bool:
        return frozenset((a, b)) not in self.cut

    def dial(self, a: Node, node: NodeId, addrs: list[Addr], *, relay: bool = True) -> Peer:
        """What Endpoint.connect does below QUIC: candidates, relay, a connection."""
        peer = a.core.dial(node, addrs, a.relay if relay else None, self.now)
        a.core.relay_settled(peer, self.now)
        a.core.connection_added(peer, _conn(), self.now)
        return peer

    def send_quic(self, src: Node, dst: NodeId) -> None:
        """One QUIC datagram from `src` to node `dst`, over the path `src`'s core chose."""
        peer = src.core.peers.get(dst)
        assert peer is not None
        addrs, relay = src.core.route(peer, self.now)
        self._drain(src)  # due pings first, as the Endpoint does
        data = b"\x40quic from " + bytes(src.node_id.raw[:4])
        for addr in addrs:
            self._udp(src, addr, data)
        if relay is not None:
            relay.send(dst, data)

    def run(self, seconds: float, *, traffic: tuple[Node, Node] | None = None) -> None:
        """Advance the clock in steps: timers, deliveries, and optionally QUIC both ways."""
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = round(self.now + STEP, 6)
            for node in list(self.nodes.values()):
                node.core.handle_timer(self.now)
            if traffic is not None:
                a, b = traffic
                self.send_quic(a, b.node_id)
                if b.core.peers.get(a.node_id) is not None:
                    self.send_quic(b, a.node_id)
            self.settle()

    def settle(self) -> None:
        """Deliver until nothing is queued (all links are instant)."""
        for _ in range(100):
            busy = False
            for node in list(self.nodes.values()):
                busy |= self._drain(node)
            while self.in_flight:
                busy = True
                src, dst, data = self.in_flight.pop(0)
                target = self.nodes.get(dst)
                if target is None:
                    continue
                peer = target.core.receive_relay(src, data, self.now, relay=target.relay)
                if peer is not None:
                    target.quic_from.append((peer.node, data, "relay"))
                    self._accept(target, peer)
            if not busy:
                return
        raise AssertionError("the simulated network never settled")

    def _drain(self, node: Node) -> bool:
        out = node.core.datagrams_to_send()
        for item in out:
            if isinstance(item, SendUdp):
                self._udp(node, item.addr, item.data)
            else:
                assert isinstance(item, SendRelay)
                item.relay.send(item.node, item.data)
        seen = len(node.events)
        while (event := node.core.next_event()) is not None:
            node.events.append(event)
            if isinstance(event, HeldReleased):
                for data in event.datagrams:
                    node.quic_from.append((event.peer.node, data, "held"))
        return bool(out) or len(node.events) > seen

    def _udp(self, src: Node, addr: Addr, data: bytes) -> None:
        target = self.at.get(addr)
        if target is None or not self.udp_works(src.addr, addr):
            return
        peer = target.core.receive_udp(data, src.addr, self.now)
        if peer is not None:
            target.quic_from.append((peer.node, data, "direct"))
            self._accept(target, peer)

    def _accept(self, node: Node, peer: Peer) -> None:
        if not peer.connections:  # the server side's connection appears with the first packet
            node.core.connection_added(peer, _conn(), self.now)


def _conn() -> Connection:
    return cast(Connection, object())  # the core only counts connections


def _path(node: Node, other: Node) -> Path | None:
    peer = node.core.peers.get(other.node_id)
    return peer.paths.path if peer is not None else None


def _changes(node: Node) -> list[Path | None]:
    return [e.change.new for e in node.events if isinstance(e, PeerPathChanged)]


def test_two_nodes_go_direct_and_quic_is_tied_to_the_sender() -> None:
    net = SimNet()
    a, b = net.add(("192.0.2.1", 4000)), net.add(("198.51.100.2", 5000))
    net.dial(a, b.node_id, [b.addr])
    net.run(0.5, traffic=(a, b))
    assert _path(a, b) == Path("direct", b.addr)
    assert _path(b, a) == Path("direct", a.addr)
    # Before the first Pong, A sent on the relay and to the candidate, then direct only.
    vias = [via for node, _, via in b.quic_from if node == a.node_id]
    assert set(vias) == {"relay", "direct"}
    assert vias[-5:] == ["direct"] * 5
    addrs, relay = a.core.route(cast(Peer, a.core.peers.get(b.node_id)), net.now)
    assert (addrs, relay) == ([b.addr], None)


def test_cut_direct_path_falls_back_to_the_relay_and_returns() -> None:
    net = SimNet()
    a, b = net.add(("192.0.2.1", 4000)), net.add(("198.51.100.2", 5000))
    net.dial(a, b.node_id, [b.addr])
    net.run(1.0, traffic=(a, b))
    assert _path(a, b) == Path("direct", b.addr)

    net.cut.add(frozenset((a.addr, b.addr)))
    cut_at = net.now
    while _path(a, b) != Path("relay"):
        net.run(STEP, traffic=(a, b))
        assert net.now - cut_at < 4.0, "still direct 4 s after the cut"
    fell_back = net.now - cut_at
    assert 1.5 <= fell_back <= 3.5  # the trust window (3 s after the last Pong), heartbeats 1 s
    received = len(b.quic_from)
    net.run(0.5, traffic=(a, b))
    assert [via for _, _, via in b.quic_from[received:]] == ["relay"] * 10  # nothing lost

    net.cut.clear()
    healed_at = net.now
    while _path(a, b) != Path("direct", b.addr):
        net.run(STEP, traffic=(a, b))
        assert net.now - healed_at < 3.0, "not direct again 3 s after UDP returned"
    assert net.now - healed_at <= 2.2  # within one probe interval
    assert _changes(a)[-2:] == [Path("relay"), Path("direct", b.addr)]


def test_quic_from_an_unknown_address_is_held_until_a_ping_names_its_sender() -> None:
    net = SimNet()
    a, b = net.add(("192.0.2.1", 4000)), net.add(("198.51.100.2", 5000))
    net.dial(a, b.node_id, [b.addr])
    net._udp(a, b.addr, b"\x40early")  # overtakes A's first Ping
    assert b.quic_from == []
    assert b.core.quic_dropped == 1
    net.run(0.2)  # A's first Ping arrives
    released = [e for e in b.events if isinstance(e, HeldReleased)]
    assert [(e.peer.node, e.addr, e.datagrams) for e in released] == [
        (a.node_id, a.addr, [b"\x40early"])
    ]
    assert b.core.quic_dropped == 0
    net._udp(net.add(("203.0.113.3", 6000)), b.addr, b"\x40stranger")
    net.run(2.0)  # no Ping from there: held, then expired, never tied to anyone
    assert not [x for x in b.quic_from if x[1] == b"\x40stranger"]
    assert b.core.peers.release(("203.0.113.3", 6000), net.now) == []


def test_dialling_the_wrong_node_fails_with_who_answered() -> None:
    net = SimNet()
    a, c = net.add(("192.0.2.1", 4000)), net.add(("203.0.113.3", 6000))
    absent = Identity.generate().node_id  # the node A believes is at C's address
    net.dial(a, absent, [c.addr], relay=False)
    net.run(0.2)
    wrong = [e for e in a.events if isinstance(e, WrongNode)]
    assert len(wrong) == 1
    assert wrong[0].peer.node == absent
    assert wrong[0].reason == f"203.0.113.3:6000 answered as node {c.node_id}, not {absent}"
    assert c.core.peers.get(absent) is None
    assert c.core.disco_rejected >= 1  # C refused the Ping meant for another node


def test_a_relay_fallback_is_not_a_wrong_node() -> None:
    net = SimNet()
    a, c = net.add(("192.0.2.1", 4000)), net.add(("203.0.113.3", 6000))
    absent = Identity.generate().node_id
    net.dial(a, absent, [c.addr])
    net.run(0.2)
    assert not [e for e in a.events if isinstance(e, WrongNode)]  # the relay may still work


def test_address_change_moves_the_path_to_the_new_address() -> None:
    net = SimNet()
    a, b = net.add(("192.0.2.1", 4000)), net.add(("198.51.100.2", 5000))
    net.dial(a, b.node_id, [b.addr])
    net.run(1.0, traffic=(a, b))
    old = a.addr
    net.move(a, ("192.0.2.1", 4001))  # A's NAT rebinds: same node, new port
    moved_at = net.now
    while _path(b, a) != Path("direct", a.addr):
        net.run(STEP, traffic=(a, b))
        assert net.now - moved_at < 3.0, "B never moved to A's new address"
    assert net.now - moved_at <= 1.0
    assert _path(a, b) == Path("direct", b.addr)  # A's side never had to change
    peer_of_a = b.core.peers.get(a.node_id)
    assert peer_of_a is not None
    assert b.core.route(peer_of_a, net.now) == ([a.addr], None)

    # QUIC from B now reaches A at its new address only.
    received = len(a.quic_from)
    net.run(1.0, traffic=(a, b))
    assert [via for _, _, via in a.quic_from[received:]] == ["direct"] * 20
    assert old not in b.core.route(peer_of_a, net.now)[0]


def test_call_me_maybe_over_the_relay_lets_the_callee_dial_back() -> None:
    """B knows nothing of A but the relay: A's CallMeMaybe gives B A's address, B's Pings
    punch towards A, and both end on the direct path."""
    net = SimNet()
    a, b = net.add(("192.0.2.1", 4000)), net.add(("198.51.100.2", 5000))
    net.dial(a, b.node_id, [])  # by node id only: relay, no address for B
    assert _path(a, b) == Path("relay")
    net.run(0.2, traffic=(a, b))
    assert _path(b, a) == Path("direct", a.addr)
    assert _path(a, b) == Path("direct", b.addr)
