"""Which message is legal in which phase of the agent <-> coordinator session: the one table.

Both ends check against it: the coordinator's adapter (fleet.coordinator.server) closes a
connection whose agent sends anything else, and the agent (fleet.agent.session) ignores,
with a warning, what a coordinator should not have sent. The session, on the control stream:

    OPENING      agent: a Hello (any version)           coordinator: Welcome, or Busy
                                                         (then it closes; dial again later)
    ESTABLISHED  agent: StatusReport, WitnessReport,    coordinator: Welcome (approval
                 AnnouncementRejected (v1 and v2)        changed), Deliver (v2 to Hello v4
                                                         agents, v1 to older ones),
                                                         Revocations, AuditCheckpoint

An agent that is not approved yet is ESTABLISHED too: the coordinator sends it nothing but a
later Welcome, and ignores what it reports (fleet.coordinator.sessions).
"""

from __future__ import annotations

import enum
from typing import TypeGuard

from fleet.protocol.messages import (
    AnnouncementRejected,
    AnnouncementRejectedV1,
    AnyHello,
    AuditCheckpoint,
    Busy,
    Deliver,
    DeliverV1,
    Hello,
    HelloV1,
    HelloV2,
    HelloV3,
    Revocations,
    StatusReport,
    Welcome,
    WitnessReport,
)
from fleet.wire import Message


class SessionPhase(enum.Enum):
    OPENING = "opening"  # before the Hello / Welcome exchange
    ESTABLISHED = "established"  # after it


class Sender(enum.Enum):
    AGENT = "agent"
    COORDINATOR = "coordinator"


LEGAL: dict[tuple[SessionPhase, Sender], tuple[type[Message], ...]] = {
    (SessionPhase.OPENING, Sender.AGENT): (Hello, HelloV3, HelloV2, HelloV1),
    (SessionPhase.OPENING, Sender.COORDINATOR): (Welcome, Busy),
    (SessionPhase.ESTABLISHED, Sender.AGENT): (
        StatusReport,
        AnnouncementRejected,
        AnnouncementRejectedV1,
        WitnessReport,
    ),
    (SessionPhase.ESTABLISHED, Sender.COORDINATOR): (
        Welcome,
        Deliver,
        DeliverV1,
        Revocations,
        AuditCheckpoint,
    ),
}


def is_legal(phase: SessionPhase, sender: Sender, message: Message) -> bool:
    """Whether `sender` may send `message` in `phase`."""
    return isinstance(message, LEGAL[phase, sender])


def opens_session(message: Message) -> TypeGuard[AnyHello]:
    """Whether an agent's first message is a Hello the coordinator accepts."""
    return is_legal(SessionPhase.OPENING, Sender.AGENT, message)
