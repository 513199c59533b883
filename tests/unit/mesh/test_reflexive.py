"""ReflexiveProbe: STUN rounds, retransmission, strict matching and change events."""

from __future__ import annotations

from fleet import stun
from fleet.mesh.reflexive import (
    ReflexiveChanged,
    ReflexiveProbe,
    StunServerStatus,
    StunTiming,
    StunUnanswered,
)

SERVER = ("10.99.0.1", 3478)
OTHER = ("10.99.0.9", 3478)
MAPPED = ("10.99.0.11", 40000)


def _tx(request: bytes) -> bytes:
    decoded = stun.decode(request)
    assert isinstance(decoded, stun.BindingRequest)
    return decoded.tx_id


def test_learns_the_mapped_address_from_a_matching_response() -> None:
    probe = ReflexiveProbe()
    probe.add_server(SERVER, 0.0)
    [(request, to)] = probe.poll(0.0)
    assert to == SERVER
    assert probe.receive(stun.binding_response(_tx(request), MAPPED), SERVER, 0.01)
    assert probe.addresses == {MAPPED}
    assert probe.next_event() == ReflexiveChanged(frozenset(), frozenset({MAPPED}))
    assert probe.next_event() is None


def test_responses_we_did_not_ask_for_are_rejected() -> None:
    probe = ReflexiveProbe()
    probe.add_server(SERVER, 0.0)
    [(request, _)] = probe.poll(0.0)
    tx = _tx(request)
    # Unknown transaction, right server.
    assert not probe.receive(stun.binding_response(bytes(12), MAPPED), SERVER, 0.01)
    # Right transaction, but from an address we did not ask (spoofed or a peer).
    assert not probe.receive(stun.binding_response(tx, ("6.6.6.6", 1)), OTHER, 0.01)
    # A request is not a response; garbage is garbage.
    assert not probe.receive(stun.binding_request(tx), SERVER, 0.01)
    assert not probe.receive(b"\x01\x01junk", SERVER, 0.01)
    assert probe.addresses == frozenset()
    assert probe.rejected == 4
    # The genuine answer still works afterwards, and a replay of it is rejected.
    response = stun.binding_response(tx, MAPPED)
    assert probe.receive(response, SERVER, 0.02)
    assert not probe.receive(response, SERVER, 0.03)


def test_retransmits_with_backoff_then_gives_up_until_the_next_round() -> None:
    timing = StunTiming(interval=20.0, retransmit=0.5, tries=3, stale_after=50.0)
    probe = ReflexiveProbe(timing)
    probe.add_server(SERVER, 0.0)
    sent = [t for t in (0.0, 0.2, 0.5, 1.0, 1.4, 1.5, 3.0, 3.5) if probe.poll(t)]
    assert sent == [0.0, 0.5, 1.5]  # 0.5 s, then 1 s later
    assert probe.poll(3.5) == []  # round over
    assert probe.next_deadline() == 23.5
    assert len(probe.poll(23.5)) == 1


def test_address_change_and_expiry_are_reported() -> None:
    timing = StunTiming(interval=10.0, retransmit=0.5, tries=2, stale_after=25.0)
    probe = ReflexiveProbe(timing)
    probe.add_server(SERVER, 0.0)
    [(req, _)] = probe.poll(0.0)
    probe.receive(stun.binding_response(_tx(req), MAPPED), SERVER, 0.0)
    probe.next_event()
    [(req, _)] = probe.poll(10.0)
    rebound = ("10.99.0.11", 50000)  # the NAT gave us a new port
    probe.receive(stun.binding_response(_tx(req), rebound), SERVER, 10.0)
    assert probe.next_event() == ReflexiveChanged(frozenset({MAPPED}), frozenset({rebound}))
    # The server stops answering: the address is forgotten once stale.
    for t in range(20, 40):
        probe.poll(float(t))
    assert probe.addresses == frozenset()
    assert probe.next_event() == ReflexiveChanged(frozenset({rebound}), frozenset())


def test_a_silent_server_is_reported_once_and_its_status_says_how_long() -> None:
    timing = StunTiming(interval=10.0, retransmit=0.5, tries=3, stale_after=25.0)
    probe = ReflexiveProbe(timing)
    assert probe.status(0.0) == []
    probe.add_server(SERVER, 0.0)
    assert probe.status(0.0) == [StunServerStatus(SERVER, None, None)]  # not asked yet
    probe.poll(0.0)
    assert probe.status(1.2) == [StunServerStatus(SERVER, None, 1.2)]
    for t in (0.5, 1.5, 3.4):
        probe.poll(t)
    assert probe.next_event() is None  # the round is not over yet
    probe.poll(3.5)  # 0.5 + 1 + 2 s after the last try: the round failed
    assert probe.next_event() == StunUnanswered(SERVER, 3.5)
    for t in range(4, 40):  # more failed rounds: no new report
        probe.poll(float(t))
    assert probe.next_event() is None
    assert probe.status(40.0) == [StunServerStatus(SERVER, None, 40.0)]
    # It answers at last: the status has the address, and a later outage is reported again.
    start = probe.next_deadline()  # rounds start 10 s after the last one ended
    assert start is not None
    [(req, _)] = probe.poll(start)
    probe.receive(stun.binding_response(_tx(req), MAPPED), SERVER, 40.5)
    assert probe.status(41.0) == [StunServerStatus(SERVER, MAPPED, None)]
    assert probe.next_event() == ReflexiveChanged(frozenset(), frozenset({MAPPED}))
    for t in range(41, 100):
        probe.poll(float(t))
    events = []
    while (event := probe.next_event()) is not None:
        events.append(event)
    # Silent from the round at 51 on (polled once a second: rounds 51-55 and 65-69): the
    # answer goes stale at 65.5, and the first round to end after that is reported, as
    # waiting since 51.
    assert events == [
        ReflexiveChanged(frozenset({MAPPED}), frozenset()),
        StunUnanswered(SERVER, 69.0 - 51.0),
    ]
