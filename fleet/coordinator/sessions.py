"""Agent sessions as the service sees them: a link to send on, and where delivery stands.

The service never waits on the network: it hands encoded messages to `AgentLink.send`, which
queues them (bounded) for the connection's own sender task, or drops a link that cannot keep
up. That keeps one slow or dead agent from holding up a push to everyone else.
"""

from __future__ import annotations

import enum
from typing import Protocol

from fleet.coordinator.announcements import StoredAnnouncement
from fleet.identity import NodeId
from fleet.protocol.messages import AnyHello, Progress, StatusReport


class AgentLink(Protocol):
    """One live agent connection (a mesh connection in production, a fake in tests)."""

    @property
    def remote_id(self) -> NodeId: ...

    @property
    def path(self) -> str | None: ...

    def send(self, payload: bytes) -> None:
        """Queue one encoded message; if the queue is full the link closes itself."""

    def close(self, reason: str) -> None:
        """Drop the connection (idempotent); the adapter then reports it gone."""


class Phase(enum.Enum):
    PENDING = "pending"  # not approved: Welcome(approved=False) sent, nothing else
    WELCOMING = "welcoming"  # approved, looking up what to deliver; live pushes are parked
    LIVE = "live"  # Welcome(approved=True) sent; pushes go out as they are accepted
    GONE = "gone"


class AgentSession:
    """Service-side state of one agent connection after its Hello."""

    def __init__(self, link: AgentLink, hello: AnyHello, now: float) -> None:
        self.link = link
        self.node_id = link.remote_id
        self.hello = hello
        self.phase = Phase.PENDING
        # Highest sequence the agent has or was sent: never send it anything not higher.
        self.delivered = hello.last_sequence
        self.parked: StoredAnnouncement | None = None  # a push that arrived while WELCOMING
        self.progress: Progress | None = None
        self.last_report: StatusReport | None = None  # to skip writes for progress-only reports
        # When the agent last said anything: shown as last_seen while it is connected, and
        # persisted with the writes the service makes anyway (never one write per message).
        self.last_seen = now
        # WitnessReports this agent may still make us store: an honest agent sends at most
        # two per checkpoint it was sent (fleet.coordinator.witnesses), so this bounds the
        # disk writes one device can cause.
        self.witness_budget = 2

    def park(self, announcement: StoredAnnouncement) -> None:
        if self.parked is None or announcement.sequence > self.parked.sequence:
            self.parked = announcement
