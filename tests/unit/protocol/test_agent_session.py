"""The table of which message is legal in which phase of the agent <-> coordinator session."""

from __future__ import annotations

from fleet.identity import Identity
from fleet.protocol.agent_session import LEGAL, Sender, SessionPhase, is_legal, opens_session
from fleet.protocol.messages import (
    AgentState,
    DeliverV1,
    HelloV1,
    StatusReport,
    SystemState,
    Welcome,
)
from fleet.wire import Tag, sign_envelope

PATH = "/nix/store/" + "a" * 32 + "-nixos-system-v1"
HELLO = HelloV1(
    agent_version="old",
    current=SystemState(store_path=PATH, generation=1),
    last_sequence=0,
    state=AgentState.IDLE,
    state_since=0.0,
)


def test_each_phase_and_sender_has_its_messages() -> None:
    assert set(LEGAL) == {(p, s) for p in SessionPhase for s in Sender}
    for allowed in LEGAL.values():
        assert allowed


def test_a_session_opens_with_any_hello_and_nothing_else() -> None:
    assert opens_session(HELLO)  # old agents are still welcome
    assert not opens_session(Welcome(approved=True, name=None))
    assert is_legal(SessionPhase.OPENING, Sender.COORDINATOR, Welcome(approved=False, name=None))


def test_each_end_may_send_only_its_own_messages_once_established() -> None:
    report = StatusReport(
        state=AgentState.IDLE,
        since=0.0,
        sequence=None,
        desired=None,
        current=SystemState(store_path=PATH, generation=1),
        progress=None,
        error=None,
        exit_code=None,
        log_tail=None,
    )
    established = SessionPhase.ESTABLISHED
    assert is_legal(established, Sender.AGENT, report)
    assert not is_legal(established, Sender.COORDINATOR, report)
    assert not is_legal(established, Sender.AGENT, HELLO)  # a second Hello is not a session
    welcome = Welcome(approved=True, name=None)
    deliver = DeliverV1(announcement=sign_envelope(Identity.generate(), Tag.ANNOUNCEMENT, welcome))
    assert is_legal(established, Sender.COORDINATOR, deliver)
    assert not is_legal(established, Sender.AGENT, deliver)
