"""The admission core: half-open caps per node, per IP and in total; Retry tokens; the
connection limit; the reserves that only priority nodes (admins) may use."""

from __future__ import annotations

import os

from aioquic.buffer import Buffer
from aioquic.quic.packet import QuicPacketType, QuicProtocolVersion, pull_quic_header

from fleet.identity import Identity, NodeId
from fleet.mesh.admission import Admission, AdmissionLimits, Decision, Verdict
from fleet.mesh.disco import Addr

V1 = QuicProtocolVersion.VERSION_1
ALICE, MALLORY = Identity.generate().node_id, Identity.generate().node_id
HOME: Addr = ("192.0.2.7", 41641)


ADMIN = Identity.generate().node_id


def limits(**overrides: int | None) -> AdmissionLimits:
    values: dict[str, int | None] = {
        "max_half_open_per_node": 4,
        "max_half_open_per_ip": 6,
        "max_half_open": 10,
        "retry_threshold": None,
    }
    values.update(overrides)
    return AdmissionLimits(**values)  # type: ignore[arg-type]


def initial(
    admission: Admission,
    node: NodeId = ALICE,
    source: Addr | None = HOME,
    *,
    dcid: bytes | None = None,
    token: bytes = b"",
    now: float = 100.0,
    connections: int = 0,
) -> Decision:
    return admission.decide(
        node,
        source,
        version=V1,
        destination_cid=dcid or os.urandom(8),
        source_cid=b"client-c",
        token=token,
        now=now,
        connections=connections,
    )


def test_half_open_capped_per_node_and_freed_when_settled() -> None:
    admission = Admission(limits())
    slots = []
    for _ in range(4):
        assert initial(admission).verdict is Verdict.ACCEPT
        slots.append(admission.open(ALICE, HOME, 100.0))
    refused = initial(admission)
    assert refused.verdict is Verdict.DROP
    assert "from" in refused.reason
    assert initial(admission, MALLORY, ("192.0.2.8", 1)).verdict is Verdict.ACCEPT
    admission.settle(slots.pop())
    assert initial(admission).verdict is Verdict.ACCEPT
    assert admission.refused["node"] == 1


def test_half_open_capped_per_ip_whatever_the_keys() -> None:
    admission = Admission(limits())
    for _ in range(6):
        node = Identity.generate().node_id
        assert initial(admission, node).verdict is Verdict.ACCEPT
        admission.open(node, HOME, 100.0)
    assert initial(admission, Identity.generate().node_id, (HOME[0], 9)).verdict is Verdict.DROP
    # Over the relay, only the relay-authenticated node counts.
    assert initial(admission, ALICE, None).verdict is Verdict.ACCEPT


def test_total_cap() -> None:
    admission = Admission(limits(max_half_open_per_ip=100))
    for i in range(10):
        admission.open(Identity.generate().node_id, (f"198.51.100.{i}", 1), 100.0)
    assert initial(admission).verdict is Verdict.DROP
    assert admission.refused["total"] == 1


def retry_token(decision: Decision) -> tuple[bytes, bytes]:
    """(token, the cid the client must send to next) of a Retry packet."""
    header = pull_quic_header(Buffer(data=decision.retry), host_cid_length=8)
    assert header.packet_type == QuicPacketType.RETRY
    return header.token, header.source_cid


def test_retry_under_pressure_then_the_echoed_token_is_accepted_once_valid() -> None:
    admission = Admission(limits(retry_threshold=2))
    for _ in range(2):
        admission.open(MALLORY, ("203.0.113.1", 1), 100.0)
    odcid = os.urandom(8)
    decision = initial(admission, dcid=odcid)
    assert decision.verdict is Verdict.RETRY
    assert admission.half_open == 2  # a Retry keeps no state
    token, rcid = retry_token(decision)
    ok = initial(admission, dcid=rcid, token=token, now=101.0)
    assert (ok.verdict, ok.original_cid, ok.retry_cid) == (Verdict.ACCEPT, odcid, rcid)
    # The token is bound to the source address, the node, the cid and the time.
    for bad in (
        initial(admission, source=("192.0.2.99", HOME[1]), dcid=rcid, token=token),
        initial(admission, source=None, dcid=rcid, token=token),
        initial(admission, MALLORY, dcid=rcid, token=token),
        initial(admission, dcid=os.urandom(8), token=token),
        initial(admission, dcid=rcid, token=token, now=111.0),
        initial(admission, dcid=rcid, token=token[:-1] + bytes([token[-1] ^ 1])),
        initial(admission, dcid=rcid, token=b"\x00" * 40),
    ):
        assert bad.verdict is Verdict.DROP
    assert admission.refused["token"] == 7
    other = Admission(limits(retry_threshold=0))  # another endpoint's key
    assert initial(other, dcid=rcid, token=token).verdict is Verdict.DROP


def test_retry_when_the_node_already_has_half_open_connections() -> None:
    admission = Admission(limits(retry_threshold=None, retry_threshold_per_node=2))
    admission.open(ALICE, HOME, 100.0)
    assert initial(admission).verdict is Verdict.ACCEPT
    admission.open(ALICE, HOME, 100.0)
    assert initial(admission).verdict is Verdict.RETRY
    assert initial(admission, MALLORY, ("192.0.2.8", 1)).verdict is Verdict.ACCEPT


def test_the_connection_limit_refuses_ordinary_nodes_counted_and_reported() -> None:
    admission = Admission(limits(max_connections=100))
    assert initial(admission, connections=99).verdict is Verdict.ACCEPT
    refused = initial(admission, connections=100)
    assert (refused.verdict, refused.reason) == (Verdict.DROP, "connection limit reached")
    assert admission.stats()["refused_connections"] == 1
    assert admission.report_due(100.0)  # the first refusal is logged at once
    initial(admission, connections=100)
    assert not admission.report_due(101.0)  # then at most every 10 s
    assert admission.report_due(110.0)
    assert admission.stats()["refused_connections"] == 2


def test_priority_nodes_use_the_reserve_beyond_the_connection_limit() -> None:
    admission = Admission(
        limits(max_connections=100, reserved_connections=2), priority={ADMIN}.__contains__
    )
    assert initial(admission, ADMIN, connections=100).verdict is Verdict.ACCEPT
    assert initial(admission, ADMIN, connections=101).verdict is Verdict.ACCEPT
    assert initial(admission, ADMIN, connections=102).verdict is Verdict.DROP  # reserve used up
    assert initial(admission, MALLORY, connections=100).verdict is Verdict.DROP
    assert admission.stats()["priority_admitted"] == 2


def test_priority_nodes_use_the_reserve_beyond_the_half_open_caps() -> None:
    admission = Admission(
        limits(max_half_open_per_ip=100, reserved_half_open=1), priority={ADMIN}.__contains__
    )
    for i in range(10):
        admission.open(Identity.generate().node_id, (f"198.51.100.{i}", 1), 100.0)
    assert initial(admission, MALLORY).verdict is Verdict.DROP  # total cap: 10
    assert initial(admission, ADMIN).verdict is Verdict.ACCEPT
    admission.open(ADMIN, HOME, 100.0)
    assert initial(admission, ADMIN).verdict is Verdict.DROP  # its one reserved slot is taken


def test_an_admin_behind_the_same_address_as_a_herd_still_gets_in() -> None:
    admission = Admission(limits(reserved_half_open=2), priority={ADMIN}.__contains__)
    for _ in range(6):  # the per-IP cap, filled by devices behind one NAT
        admission.open(Identity.generate().node_id, HOME, 100.0)
    assert initial(admission, MALLORY, (HOME[0], 2)).verdict is Verdict.DROP
    assert initial(admission, ADMIN, (HOME[0], 3)).verdict is Verdict.ACCEPT
    assert admission.refused["ip"] == 1


def test_priority_can_be_set_after_construction() -> None:
    admission = Admission(limits(max_connections=1, reserved_connections=1))
    assert initial(admission, ADMIN, connections=1).verdict is Verdict.DROP
    admission.priority = {ADMIN}.__contains__
    assert initial(admission, ADMIN, connections=1).verdict is Verdict.ACCEPT


def test_while_the_owner_is_busy_only_priority_nodes_start_connections() -> None:
    busy = True
    admission = Admission(limits(), priority={ADMIN}.__contains__, busy=lambda: busy)
    refused = initial(admission, MALLORY, ("192.0.2.8", 1))
    assert (refused.verdict, refused.reason) == (Verdict.DROP, "too busy for new connections")
    assert initial(admission, ADMIN).verdict is Verdict.ACCEPT
    assert admission.stats()["refused_busy"] == 1
    busy = False
    assert initial(admission, MALLORY, ("192.0.2.8", 1)).verdict is Verdict.ACCEPT
