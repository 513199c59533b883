"""The coordinator's logic, free of network I/O, as one object for the adapter and tests.

`CoordinatorService` takes a Database and a clock and wires the three parts together:
admin requests (fleet.coordinator.admin), agent sessions and delivery
(fleet.coordinator.delivery, over the session machine in fleet.coordinator.sessions) and
status with its watchers (fleet.coordinator.status). The mesh adapter
(fleet.coordinator.server) feeds it decoded input and moves what it queues onto
connections; tests drive it directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from fleet.capability import RevocationList
from fleet.coordinator.admin import (
    AUDIT_PAGE,
    AUDIT_PAGE_BYTES,
    MAX_ADMIN_REQUEST,
    MAX_TARGET_CHECK,
    AdminDesk,
    AdminResult,
    Refused,
)
from fleet.coordinator.announcements import StoredAnnouncement
from fleet.coordinator.database import Database
from fleet.coordinator.delivery import Delivery
from fleet.coordinator.enrollment import Enrollment
from fleet.coordinator.refusals import RefusalLimiter, RefusalLimits, RequestFacts
from fleet.coordinator.sessions import AgentLink, AgentSession
from fleet.coordinator.status import StatusBoard
from fleet.coordinator.trust import KnownRevocations
from fleet.coordinator.watchers import StatusWatcher
from fleet.identity import Identity, NodeId
from fleet.protocol.messages import AnyHello, AuditPage, AuditQuery, DeviceStatus
from fleet.wire import Message

__all__ = [
    "AUDIT_PAGE",
    "AUDIT_PAGE_BYTES",
    "MAX_ADMIN_REQUEST",
    "MAX_PENDING",
    "MAX_TARGET_CHECK",
    "AdminResult",
    "CoordinatorService",
    "Refused",
]

MAX_PENDING = 10_000  # unapproved devices remembered; more are turned away unrecorded


class CoordinatorService:
    def __init__(
        self,
        db: Database,
        node_id: NodeId,
        trust_roots: Iterable[NodeId],
        *,
        signer: Identity | None = None,
        clock: Callable[[], float] = time.time,
        max_pending: int = MAX_PENDING,
        refusal_limits: RefusalLimits | None = None,
    ) -> None:
        self.db = db
        self.node_id = node_id
        self.trust_roots = frozenset(trust_roots)
        self.clock = clock
        self.sessions: dict[NodeId, AgentSession] = {}
        self.known_revocations = KnownRevocations(db, self.trust_roots, clock)
        self.refusals = RefusalLimiter(refusal_limits)
        self.status = StatusBoard(db, self.sessions)
        self.delivery = Delivery(
            db,
            node_id,
            self.sessions,
            self.known_revocations,
            self.status,
            clock=clock,
            max_pending=max_pending,
        )
        self.enrollment = Enrollment(
            db, node_id, self.trust_roots, self.known_revocations, self.refusals, clock=clock
        )
        self.admin = AdminDesk(
            db,
            node_id,
            self.trust_roots,
            self.known_revocations,
            self.delivery,
            self.status,
            self.refusals,
            signer=signer,
            clock=clock,
        )

    @property
    def watchers(self) -> set[StatusWatcher]:
        return self.status.watchers

    async def revocations(self) -> RevocationList:
        """The verified revocations (loaded from the database on first use)."""
        return await self.known_revocations.get()

    # admin requests and the audit log (fleet.coordinator.admin)

    async def handle_admin(self, raw: bytes, connection_id: NodeId) -> AdminResult:
        return await self.admin.handle(raw, connection_id)

    async def refuse_unread(self, connection_id: NodeId, facts: RequestFacts) -> AdminResult:
        return await self.admin.refuse_unread(connection_id, facts)

    async def checkpoint(self) -> int | None:
        return await self.admin.checkpoint()

    async def record_suppressed(self, *, force: bool = False) -> bool:
        return await self.admin.record_suppressed(force=force)

    async def audit_page(self, query: AuditQuery) -> AuditPage:
        return await self.admin.audit_page(query)

    # agent sessions and delivery (fleet.coordinator.delivery)

    async def deliver(self, stored: StoredAnnouncement) -> None:
        await self.delivery.deliver(stored)

    async def agent_hello(self, link: AgentLink, hello: AnyHello) -> AgentSession | None:
        await self.enrollment.hello(link.remote_id, hello)  # an unknown device's token
        return await self.delivery.agent_hello(link, hello)

    async def agent_message(self, session: AgentSession, message: Message) -> None:
        await self.delivery.agent_message(session, message)

    async def agent_gone(self, session: AgentSession) -> None:
        await self.delivery.agent_gone(session)

    # status (fleet.coordinator.status)

    def unwatch(self, watcher: StatusWatcher) -> None:
        self.status.unwatch(watcher)

    async def snapshot(self) -> tuple[DeviceStatus, ...]:
        return await self.status.snapshot()

    async def status_of(self, node: NodeId) -> DeviceStatus | None:
        return await self.status.status_of(node)
