"""What the endpoint knows about other nodes: per-peer state, address map, held packets.

Bounded everywhere: anyone can mint a node id and sign a disco Ping, so every table here has
a cap and evicts the least recently used entry (never a peer with live connections).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING

from fleet.identity import NodeId
from fleet.mesh.disco import Addr
from fleet.mesh.paths import PathTiming, PeerPaths
from fleet.mesh.relay import RelayTransport

if TYPE_CHECKING:
    from fleet.mesh.connection import Connection

MAX_PEERS = 8192
MAX_ADDR_MAP = 16384
HOLD_PER_ADDR = 8  # QUIC packets held from an address not (yet) tied to a node
HOLD_ADDRS = 64
HOLD_SECONDS = 1.0


class Peer:
    """One node: its constant virtual address for QUIC, its paths, relay and connections."""

    __slots__ = (
        "connections",
        "last_call_me_maybe",
        "node",
        "paths",
        "relay",
        "timer_at",
        "vaddr",
        "wrong_node",
    )

    def __init__(self, node: NodeId, timing: PathTiming) -> None:
        self.node = node
        self.vaddr: tuple[str, int] = (f"fleet-node-{node}", 0)
        self.paths = PeerPaths(node, timing)
        self.relay: RelayTransport | None = None
        self.connections: set[Connection] = set()
        self.wrong_node: dict[Addr, NodeId] = {}  # address -> the node that answered there
        self.last_call_me_maybe: float | None = None
        self.timer_at: float | None = None  # the path layer's next deadline for this peer


class PeerTable:
    def __init__(self, timing: PathTiming) -> None:
        self._timing = timing
        self._peers: OrderedDict[NodeId, Peer] = OrderedDict()
        self._addr_node: OrderedDict[Addr, NodeId] = OrderedDict()
        self._held: OrderedDict[Addr, list[tuple[float, bytes]]] = OrderedDict()

    def get(self, node: NodeId) -> Peer | None:
        return self._peers.get(node)

    def get_or_create(self, node: NodeId) -> Peer:
        peer = self._peers.get(node)
        if peer is None:
            if len(self._peers) >= MAX_PEERS:
                self._evict()
            peer = self._peers[node] = Peer(node, self._timing)
        else:
            self._peers.move_to_end(node)
        return peer

    def __iter__(self) -> Iterator[Peer]:
        return iter(list(self._peers.values()))

    def _evict(self) -> None:
        for node, peer in self._peers.items():
            if not peer.connections:
                del self._peers[node]
                return

    # -- direct addresses authenticated by disco ---------------------------------------------

    def peer_at(self, addr: Addr) -> Peer | None:
        """The peer a signed Ping/Pong tied this address to, if any."""
        node = self._addr_node.get(addr)
        return self._peers.get(node) if node is not None else None

    def map_addr(self, addr: Addr, node: NodeId) -> None:
        self._addr_node[addr] = node
        self._addr_node.move_to_end(addr)
        while len(self._addr_node) > MAX_ADDR_MAP:
            self._addr_node.popitem(last=False)

    # -- packets from addresses not yet tied to a node -----------------------------------------

    def hold(self, addr: Addr, data: bytes, now: float) -> None:
        """Keep a few QUIC packets from an unknown address: its Ping may be just behind."""
        held = self._held.get(addr)
        if held is None:
            if len(self._held) >= HOLD_ADDRS:
                self._held.popitem(last=False)
            held = self._held[addr] = []
        if len(held) < HOLD_PER_ADDR:
            held.append((now, data))

    def release(self, addr: Addr, now: float) -> list[bytes]:
        """The still-fresh packets held from `addr` (now tied to a node)."""
        held = self._held.pop(addr, None) or []
        return [data for at, data in held if at >= now - HOLD_SECONDS]

    def next_held_expiry(self) -> float | None:
        """When the oldest held packets go stale (None: nothing is held)."""
        if not self._held:
            return None
        return min(held[-1][0] for held in self._held.values()) + HOLD_SECONDS

    def expire_held(self, now: float) -> None:
        horizon = now - HOLD_SECONDS
        for addr in [a for a, held in self._held.items() if held[-1][0] < horizon]:
            del self._held[addr]
