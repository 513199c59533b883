"""The coordinator's agent-session machine, driven in memory: legal moves only, and what
entering LIVE sends, in order."""

from __future__ import annotations

import pytest

from fleet.coordinator.announcements import StoredAnnouncement
from fleet.coordinator.sessions import TRANSITIONS, AgentSession, IllegalTransition, Phase
from fleet.identity import Identity, NodeId
from fleet.protocol.messages import (
    Action,
    AgentState,
    AuditCheckpoint,
    DeliverV1,
    Hello,
    HelloV1,
    Revocations,
    SystemState,
    Welcome,
)
from fleet.wire import Message, SignedEnvelope, Tag, decode, encode, sign_envelope

NOW = 1_700_000_000.0
PATH = "/nix/store/" + "a" * 32 + "-nixos-system-v1"
SIGNER = Identity.generate()


class FakeLink:
    def __init__(self) -> None:
        self.remote_id: NodeId = Identity.generate().node_id
        self.path: str | None = "direct"
        self.sent: list[Message] = []
        self.closed: str | None = None

    def send(self, payload: bytes) -> None:
        self.sent.append(decode(payload))

    def close(self, reason: str) -> None:
        self.closed = reason


def envelope(sequence: int) -> SignedEnvelope:
    return sign_envelope(SIGNER, Tag.ANNOUNCEMENT, Welcome(approved=True, name=str(sequence)))


def stored(sequence: int, valid_until: float = NOW + 3600) -> StoredAnnouncement:
    return StoredAnnouncement(
        sequence=sequence,
        signer=SIGNER.node_id,
        envelope=envelope(sequence),
        store_path=PATH,
        action=Action.SWITCH,
        issued_at=NOW,
        valid_until=valid_until,
        devices=(),
        proofs={},
        legacy=None,
        lists_devices=True,
    )


def session(last_sequence: int = 0, *, v3: bool = True) -> tuple[FakeLink, AgentSession]:
    link = FakeLink()
    current = SystemState(store_path=PATH, generation=1)
    hello: Hello | HelloV1
    if v3:
        hello = Hello(
            agent_version="test",
            current=current,
            last_sequence=last_sequence,
            state=AgentState.IDLE,
            state_since=NOW,
            tags=(),
        )
    else:
        hello = HelloV1(
            agent_version="test",
            current=current,
            last_sequence=last_sequence,
            state=AgentState.IDLE,
            state_since=NOW,
        )
    return link, AgentSession(link, hello, NOW)


def sequences(link: FakeLink) -> list[str | None]:
    """The DeliverV1 messages sent, by the name inside the stand-in announcement envelope."""
    out = []
    for m in link.sent:
        if isinstance(m, DeliverV1):
            out.append(decode(m.announcement.payload, Welcome).name)
    return out


def test_every_phase_can_close_and_nothing_leaves_gone() -> None:
    assert all(Phase.GONE in targets for targets in TRANSITIONS.values())
    assert TRANSITIONS[Phase.GONE] == {Phase.GONE}
    assert set(TRANSITIONS) == set(Phase)


def test_illegal_moves_raise_instead_of_drifting() -> None:
    link, s = session()
    assert s.phase is Phase.WELCOMING
    s.turn_away_pending()
    assert s.phase.value == "pending"
    with pytest.raises(IllegalTransition, match="pending -> live"):
        s.move(Phase.LIVE)  # an unapproved device is never live without a new welcome
    s.close("bye")
    assert link.closed == "bye"
    with pytest.raises(IllegalTransition, match="gone -> welcoming"):
        s.approved()
    assert not s.go_live("x", None, (), None, NOW)  # a closed session sends nothing
    assert [type(m) for m in link.sent] == [Welcome]


def test_going_live_sends_welcome_revocations_newest_delivery_then_checkpoint() -> None:
    link, s = session(last_sequence=1)
    s.offer(stored(5), b"unused")  # accepted while the lookup ran: parked, not sent
    assert link.sent == []
    checkpoint = sign_envelope(SIGNER, Tag.ANNOUNCEMENT, Welcome(approved=True, name="cp"))
    assert s.go_live("kiosk", stored(3), [], checkpoint, NOW)
    assert [type(m) for m in link.sent] == [Welcome, DeliverV1, AuditCheckpoint]
    assert link.sent[0] == Welcome(approved=True, name="kiosk")
    assert sequences(link) == ["5"]  # the parked push is newer than the looked-up one
    assert s.delivered == 5
    assert s.parked is None
    assert s.witness_budget == 4
    with pytest.raises(IllegalTransition):
        s.move(Phase.WELCOMING)


def test_live_session_gets_only_newer_pushes() -> None:
    link, s = session(last_sequence=4, v3=False)
    assert s.go_live("kiosk", stored(4), [], None, NOW)  # it already has 4
    assert [type(m) for m in link.sent] == [Welcome]
    assert not s.can_witness  # an old agent is not sent checkpoints
    payload = encode(DeliverV1(announcement=envelope(6)))
    assert s.offer(stored(6), payload)
    assert not s.offer(stored(6), payload)
    assert not s.offer(stored(5), payload)
    assert sequences(link) == ["6"]


def test_expired_announcement_is_not_sent_on_welcome() -> None:
    link, s = session()
    assert s.go_live("kiosk", stored(2, valid_until=NOW - 1), [], None, NOW)
    assert [type(m) for m in link.sent] == [Welcome]
    assert s.delivered == 0


def test_witness_reports_are_bounded_by_checkpoints_sent() -> None:
    _, s = session()
    assert [s.take_witness_report() for _ in range(3)] == [True, True, False]
    s.witness(encode(Revocations(revocations=())))
    assert [s.take_witness_report() for _ in range(3)] == [True, True, False]
