"""Agent sessions as the coordinator sees them: a machine of phases, and a link to send on.

A session is created by the agent's Hello and moves only along TRANSITIONS:

    WELCOMING --approved--> LIVE          (Welcome(approved=True), then what it lacks)
    WELCOMING --not approved--> PENDING   (Welcome(approved=False), nothing else)
    PENDING --approved by an admin--> WELCOMING
    any --> GONE                          (closed, replaced, removed)

Any other move raises IllegalTransition. What is sent on entering LIVE is sent by one
synchronous method (`go_live`), so no push accepted meanwhile can slip between the lookup
and the Welcome: a push that arrives while WELCOMING is parked and merged there.

The session never waits on the network: it hands encoded messages to `AgentLink.send`, which
queues them (bounded) for the connection's own sender task, or drops a link that cannot keep
up. That keeps one slow or dead agent from holding up a push to everyone else.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol

from fleet.capability import SignedRevocation
from fleet.coordinator.announcements import StoredAnnouncement
from fleet.identity import NodeId
from fleet.log import get_logger
from fleet.protocol.messages import (
    AnyHello,
    AuditCheckpoint,
    Hello,
    Progress,
    Revocations,
    StatusReport,
    Welcome,
    WitnessingHello,
)
from fleet.wire import SignedEnvelope, encode

log = get_logger(__name__)


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


TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.WELCOMING: frozenset({Phase.LIVE, Phase.PENDING, Phase.GONE}),
    Phase.PENDING: frozenset({Phase.WELCOMING, Phase.GONE}),
    Phase.LIVE: frozenset({Phase.GONE}),
    Phase.GONE: frozenset({Phase.GONE}),  # closing twice is harmless
}

# WitnessReports an honest agent sends per checkpoint it was sent (fleet.coordinator.witnesses).
WITNESS_REPORTS = 2


class IllegalTransition(Exception):
    """A move the session machine does not have (a bug in the coordinator)."""


class AgentSession:
    """Coordinator-side state of one agent connection after its Hello."""

    def __init__(self, link: AgentLink, hello: AnyHello, now: float) -> None:
        self.link = link
        self.node_id = link.remote_id
        self.hello = hello
        self.phase = Phase.WELCOMING  # pushes accepted while we look things up are parked
        # Highest sequence the agent has or was sent: never send it anything not higher.
        self.delivered = hello.last_sequence
        self.parked: StoredAnnouncement | None = None  # a push that arrived while WELCOMING
        self.progress: Progress | None = None
        self.last_report: StatusReport | None = None  # to skip writes for progress-only reports
        # When the agent last said anything: shown as last_seen while it is connected, and
        # persisted with the writes the service makes anyway (never one write per message).
        self.last_seen = now
        # WitnessReports this agent may still make us store: at most WITNESS_REPORTS per
        # checkpoint it was sent, which bounds the disk writes one device can cause.
        self.witness_budget = WITNESS_REPORTS

    @property
    def live(self) -> bool:
        return self.phase is Phase.LIVE

    def move(self, to: Phase) -> None:
        if to not in TRANSITIONS[self.phase]:
            raise IllegalTransition(f"agent session: {self.phase.value} -> {to.value}")
        self.phase = to

    def close(self, reason: str) -> None:
        self.move(Phase.GONE)
        self.link.close(reason)

    def turn_away_pending(self) -> None:
        """WELCOMING -> PENDING: the device is not approved; it is told so and nothing else."""
        self.move(Phase.PENDING)
        self.parked = None
        self.link.send(encode(Welcome(approved=False, name=None)))

    def approved(self) -> None:
        """PENDING -> WELCOMING: an admin approved the device while it was connected."""
        self.move(Phase.WELCOMING)

    def go_live(
        self,
        name: str | None,
        latest: StoredAnnouncement | None,
        revocations: Sequence[SignedRevocation],
        checkpoint: SignedEnvelope | None,
        now: float,
    ) -> bool:
        """WELCOMING -> LIVE in one step: Welcome(approved=True), the revocations (before any
        Deliver: the agent must know them when it checks announcements), the newer of the
        looked-up and the parked announcement, then a checkpoint to witness (after any
        Deliver: witnessing never delays an update). False if no longer WELCOMING."""
        if self.phase is not Phase.WELCOMING:
            return False
        self.move(Phase.LIVE)
        self.link.send(encode(Welcome(approved=True, name=name)))
        if revocations:
            self.link.send(encode(Revocations(revocations=tuple(revocations))))
        best = latest
        if self.parked is not None and (best is None or self.parked.sequence > best.sequence):
            best = self.parked
        self.parked = None
        if best is not None and best.sequence > self.delivered:
            message = best.deliver_to(self.node_id, self.reads_targets)
            if best.expired(now):
                log.info("announcement_expired", device=self.node_id.short(), seq=best.sequence)
            elif message is None:
                log.warning(
                    "announcement_not_for_old_agent",
                    device=self.node_id.short(),
                    sequence=best.sequence,
                    detail="no Announcement v2 for agents before Hello v4; upgrade the agent",
                )
            else:
                self.delivered = best.sequence
                self.link.send(encode(message))
                log.info("announcement_sent", device=self.node_id.short(), sequence=best.sequence)
        if checkpoint is not None:
            self.witness(encode(AuditCheckpoint(checkpoint=checkpoint)))
        return True

    def offer(self, announcement: StoredAnnouncement, payload: bytes | None) -> bool:
        """A just-accepted push for this device, encoded for it (None: nothing this agent can
        read): sent if LIVE and newer, parked if WELCOMING; whether it was sent."""
        if self.phase is Phase.LIVE:
            if payload is not None and announcement.sequence > self.delivered:
                self.delivered = announcement.sequence
                self.link.send(payload)
                return True
        elif self.phase is Phase.WELCOMING and (
            self.parked is None or announcement.sequence > self.parked.sequence
        ):
            self.parked = announcement
        return False

    @property
    def reads_targets(self) -> bool:
        """Whether the agent reads Deliver v2 and Announcement v3 (it said Hello v4)."""
        return isinstance(self.hello, Hello)

    @property
    def can_witness(self) -> bool:
        """Whether checkpoints go to this agent: LIVE and new enough (Hello v3 or later)."""
        return self.phase is Phase.LIVE and isinstance(self.hello, WitnessingHello)

    def witness(self, payload: bytes) -> None:
        """Send an encoded AuditCheckpoint; the agent may answer with WITNESS_REPORTS."""
        self.witness_budget += WITNESS_REPORTS
        self.link.send(payload)

    def take_witness_report(self) -> bool:
        """Whether a WitnessReport is within the budget (spending one)."""
        if self.witness_budget <= 0:
            return False
        self.witness_budget -= 1
        return True
