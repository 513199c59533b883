"""Peer addresses: NODEID[@HOST:PORT]... parsed strictly, round-tripped exactly."""

from __future__ import annotations

import pytest

from fleet.identity import Identity
from fleet.mesh.peer_addr import InvalidPeerAddr, PeerAddr

NODE = str(Identity.generate().node_id)


@pytest.mark.parametrize(
    ("text", "addrs"),
    [
        (NODE, ()),
        (f"{NODE}@127.0.0.1:4433", (("127.0.0.1", 4433),)),
        (f"{NODE}@[::1]:9@example.org:10", (("::1", 9), ("example.org", 10))),
    ],
)
def test_parse_round_trip(text: str, addrs: tuple[tuple[str, int], ...]) -> None:
    peer = PeerAddr.parse(text)
    assert str(peer.node_id) == NODE
    assert peer.addrs == addrs
    assert str(peer) == text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("nope@1.2.3.4:5", "bad node id"),
        (f"{NODE}@1.2.3.4", "expected HOST:PORT"),
        (f"{NODE}@1.2.3.4:0", "not in 1-65535"),
        (f"{NODE}@1.2.3.4:x", "not a number"),
        (f"{NODE}@::1:5", "brackets"),
        (f"{NODE}@[zz]:5", "not an IPv6"),
        (f"{NODE}@", "expected HOST:PORT"),
    ],
)
def test_parse_errors(text: str, fragment: str) -> None:
    with pytest.raises(InvalidPeerAddr, match=fragment):
        PeerAddr.parse(text)
