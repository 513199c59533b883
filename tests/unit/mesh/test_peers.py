"""PeerTable: bounded maps, packets held until a signed Ping ties their address to a node."""

from __future__ import annotations

import pytest

from fleet.identity import Identity
from fleet.mesh import peers
from fleet.mesh.paths import PathTiming
from fleet.mesh.peers import PeerTable

ADDR = ("192.0.2.5", 7000)


def test_held_packets_are_released_once_and_only_while_fresh() -> None:
    table = PeerTable(PathTiming())
    for i in range(20):
        table.hold(ADDR, bytes([i]), now=10.0)
    assert table.peer_at(ADDR) is None
    node = Identity.generate().node_id
    peer = table.get_or_create(node)
    table.map_addr(ADDR, node)
    assert table.peer_at(ADDR) is peer
    released = table.release(ADDR, now=10.5)
    assert released == [bytes([i]) for i in range(peers.HOLD_PER_ADDR)]
    assert table.release(ADDR, now=10.5) == []
    table.hold(ADDR, b"old", now=10.0)
    assert table.release(ADDR, now=10.0 + peers.HOLD_SECONDS + 0.1) == []


def test_tables_stay_bounded_and_keep_peers_with_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(peers, "MAX_PEERS", 3)
    monkeypatch.setattr(peers, "HOLD_ADDRS", 2)

    table = PeerTable(PathTiming())
    busy = table.get_or_create(Identity.generate().node_id)
    busy.connections.add(object())  # type: ignore[arg-type]
    for _ in range(10):
        table.get_or_create(Identity.generate().node_id)
    assert len(list(table)) == 3
    assert busy in list(table)
    for port in range(1, 6):
        table.hold(("192.0.2.1", port), b"x", now=0.0)
    assert table.release(("192.0.2.1", 1), now=0.0) == []
    assert table.release(("192.0.2.1", 5), now=0.0) == [b"x"]
