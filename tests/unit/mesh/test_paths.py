"""PeerPaths with a fake clock: confirm, heartbeat, fall back to relay, return to direct."""

from __future__ import annotations

import itertools

from fleet.identity import Identity
from fleet.mesh.paths import Path, PathChanged, PathTiming, PeerPaths, SendPing

A = ("192.0.2.1", 4000)
B = ("198.51.100.9", 5000)
NODE = Identity.generate().node_id
TIMING = PathTiming(heartbeat_interval=1.0, trust_window=3.0, probe_interval=2.0, ping_timeout=1.5)


def _events(paths: PeerPaths) -> list[PathChanged]:
    out = []
    while (event := paths.next_event()) is not None:
        out.append(event)
    return out


class Peer:
    """Drives a PeerPaths like the endpoint does, with a reachable/unreachable direct path."""

    def __init__(self, *, has_relay: bool = True) -> None:
        self.paths = PeerPaths(NODE, TIMING, has_relay=has_relay)
        self.now = 0.0
        self.reachable = {A}
        self.history: list[tuple[float, Path | None]] = []
        self.pings_sent = 0

    def step(self, until: float, dt: float = 0.05) -> None:
        while self.now < until:
            for action in self.paths.poll(self.now):
                self.pings_sent += 1
                self._answer(action)
            for event in _events(self.paths):
                self.history.append((self.now, event.new))
            self.now = round(self.now + dt, 6)

    def _answer(self, action: SendPing) -> None:
        if action.addr in self.reachable:
            self.paths.pong_received(action.ping.tx_id, action.addr, self.now + 0.01)


def test_unconfirmed_sends_on_relay_and_direct_then_confirms_direct() -> None:
    peer = Peer()
    peer.paths.add_candidate(A, 0.0, "connect")
    peer.paths.set_active(True, 0.0)
    assert peer.paths.path == Path("relay")
    assert peer.paths.send_targets(0.0) == ([A], True)
    peer.step(0.1)
    assert peer.paths.path == Path("direct", A)
    assert peer.paths.send_targets(peer.now) == ([A], False)


def test_dead_direct_path_falls_back_to_relay_within_the_window_and_returns() -> None:
    peer = Peer()
    peer.paths.add_candidate(A, 0.0, "connect")
    peer.paths.set_active(True, 0.0)
    peer.step(5.0)
    assert peer.paths.path == Path("direct", A)
    heartbeats = peer.pings_sent
    assert 4 <= heartbeats <= 7  # about one per second while active

    peer.reachable.clear()  # pongs stop
    lost_at = peer.now
    peer.step(lost_at + 5.0)
    fell_back = [t for t, p in peer.history if p == Path("relay") and t >= lost_at]
    assert fell_back, peer.history
    assert fell_back[0] - lost_at <= 3.5  # heartbeat every 1 s, trust 3 s after the last pong
    assert peer.paths.send_targets(peer.now) == ([], True)  # the failed candidate gets no QUIC

    peer.reachable.add(A)  # path works again
    back_at = peer.now
    peer.step(back_at + 3.0)
    returned = [t for t, p in peer.history if p == Path("direct", A) and t >= back_at]
    assert returned, peer.history
    assert returned[0] - back_at <= TIMING.probe_interval + 0.1
    assert peer.paths.send_targets(peer.now) == ([A], False)


def test_without_relay_quic_goes_to_candidates_alongside_the_first_ping() -> None:
    peer = Peer(has_relay=False)
    peer.paths.add_candidate(A, 0.0, "connect")
    assert peer.paths.path == Path("direct", A)
    assert peer.paths.send_targets(0.0) == ([A], False)
    peer.reachable.clear()
    peer.paths.set_active(True, 0.0)
    peer.step(3.0)
    # Every candidate failed: still send there, there is nothing better.
    assert peer.paths.send_targets(peer.now) == ([A], False)


def test_lowest_rtt_confirmed_candidate_wins() -> None:
    paths = PeerPaths(NODE, TIMING, has_relay=True)
    paths.set_active(True, 0.0)
    paths.add_candidate(A, 0.0, "connect")
    paths.add_candidate(B, 0.0, "call-me-maybe")
    pings = {action.addr: action.ping for action in paths.poll(0.0)}
    assert set(pings) == {A, B}
    assert paths.pong_received(pings[A].tx_id, A, 0.080)
    assert paths.pong_received(pings[B].tx_id, B, 0.005)
    assert paths.path == Path("direct", B)


def test_pongs_that_do_not_match_a_ping_are_ignored() -> None:
    paths = PeerPaths(NODE, TIMING, has_relay=True)
    paths.set_active(True, 0.0)
    paths.add_candidate(A, 0.0, "connect")
    (action,) = paths.poll(0.0)
    assert not paths.pong_received(b"z" * 12, A, 0.01)  # unknown transaction
    assert not paths.pong_received(action.ping.tx_id, B, 0.01)  # from another address
    assert paths.path == Path("relay")
    assert paths.pong_received(action.ping.tx_id, A, 0.01)
    assert not paths.pong_received(action.ping.tx_id, A, 0.02)  # replayed
    assert paths.path == Path("direct", A)


def test_no_pings_while_no_connection_is_active() -> None:
    paths = PeerPaths(NODE, TIMING, has_relay=True)
    paths.add_candidate(A, 0.0, "ping")
    assert paths.poll(10.0) == []
    assert paths.next_deadline() is None
    paths.set_active(True, 10.0)
    assert paths.next_deadline() == 0.0
    assert len(paths.poll(10.0)) == 1


def test_every_change_is_an_event() -> None:
    paths = PeerPaths(NODE, TIMING, has_relay=False)
    paths.add_candidate(A, 0.0, "connect")
    paths.set_relay(True, 0.0)
    events = _events(paths)
    assert [(e.old, e.new) for e in events] == [
        (None, Path("direct", A)),
        (Path("direct", A), Path("relay")),
    ]
    assert str(events[0].new) == "direct 192.0.2.1:4000"


def test_a_ping_from_an_unconfirmed_candidate_is_pinged_back_at_once() -> None:
    # Hole punching: our first ping died at the peer's NAT; the peer's ping has now opened
    # it, so we must ping back immediately rather than at the next 2 s probe.
    paths = PeerPaths(NODE, TIMING, has_relay=True)
    paths.set_active(True, 0.0)
    paths.add_candidate(A, 0.0, "call-me-maybe")
    [first] = paths.poll(0.0)
    assert paths.poll(0.2) == []  # nothing due before the search interval (0.25 s)
    paths.ping_received(A, 0.2)
    [again] = paths.poll(0.2)
    assert again.addr == A
    assert again.ping.tx_id != first.ping.tx_id
    paths.ping_received(A, 0.22)  # rate limited: at most one ping-back per 0.1 s
    assert paths.poll(0.22) == []
    assert paths.pong_received(again.ping.tx_id, A, 0.23)
    paths.ping_received(A, 0.5)  # confirmed: no ping-back, heartbeats take over
    assert paths.poll(0.5) == []
    assert paths.path == Path("direct", A)


def test_an_unanswered_candidate_is_pinged_fast_while_searching_then_at_the_probe_interval() -> (
    None
):
    # A lost Ping must not cost a whole probe interval while nothing is confirmed (heavy
    # loss), but a candidate that never answers is not pinged fast for ever.
    paths = PeerPaths(NODE, TIMING)
    paths.set_active(True, 0.0)
    paths.add_candidate(A, 0.0, "connect")
    sent = [t / 100 for t in range(0, 1000, 5) if paths.poll(t / 100)]
    fast = [t for t in sent if t <= TIMING.search_window]
    assert len(fast) >= TIMING.search_window / TIMING.search_interval - 1
    slow = [b - a for a, b in itertools.pairwise(sent) if a > TIMING.search_window + 1]
    assert slow
    assert min(slow) >= TIMING.probe_interval - 0.05


def test_a_peer_pinging_from_a_new_address_is_followed_at_once() -> None:
    # The peer's process restarted on a new port (B); A is dead but still inside its trust
    # window. Replies must go to B within a round trip, not after A's trust runs out.
    peer = Peer()
    peer.paths.add_candidate(A, 0.0, "connect")
    peer.paths.set_active(True, 0.0)
    peer.step(2.0)
    assert peer.paths.path == Path("direct", A)
    peer.reachable = {B}
    moved_at = peer.now
    peer.paths.ping_received(B, moved_at)
    peer.step(moved_at + 0.1)
    assert peer.paths.path == Path("direct", B)
    assert peer.paths.send_targets(peer.now) == ([B], False)


def test_a_live_path_in_use_survives_a_ping_from_another_address() -> None:
    peer = Peer()
    peer.paths.add_candidate(A, 0.0, "connect")
    peer.paths.set_active(True, 0.0)
    peer.step(2.0)
    peer.reachable = {A, B}  # both work (a peer with two addresses)
    peer.paths.ping_received(B, peer.now)
    peer.step(peer.now + 3.0)
    assert peer.paths.path is not None
    assert peer.paths.path.kind == "direct"
    later = peer.now
    peer.paths.ping_received(B, later)  # B is confirmed now: nothing to re-check
    peer.step(later + 3.0)
    assert [p for t, p in peer.history if t >= later and p != peer.paths.path] == []
