"""Delivery: agents' sessions driven against the database, and pushes sent to them.

The session machine itself is fleet.coordinator.sessions; this part does the lookups and
writes around its moves. An agent that (re)connects gets the latest announcement for it,
so a push committed but never delivered (crash, agent offline) reaches it on its next
connection; a push accepted while its lookup runs is parked by the session and merged.
"""

from __future__ import annotations

from collections.abc import Callable

from fleet.capability import RevocationList, SignedRevocation
from fleet.coordinator import announcements, registry, witnesses
from fleet.coordinator.announcements import StoredAnnouncement
from fleet.coordinator.database import Database
from fleet.coordinator.registry import DeviceRecord
from fleet.coordinator.sessions import AgentLink, AgentSession, Phase
from fleet.coordinator.status import StatusBoard
from fleet.coordinator.trust import KnownRevocations
from fleet.identity import NodeId
from fleet.log import get_logger
from fleet.protocol.messages import (
    AgentState,
    AnnouncementRejected,
    AnnouncementRejectedV1,
    AnyHello,
    AuditCheckpoint,
    Revocations,
    StatusReport,
    WitnessingHello,
    WitnessReport,
)
from fleet.wire import Message, SignedEnvelope, encode

log = get_logger(__name__)


class Delivery:
    """Every connected agent's session (one per device), and what is sent to them."""

    def __init__(
        self,
        db: Database,
        node_id: NodeId,
        sessions: dict[NodeId, AgentSession],
        revocations: KnownRevocations,
        status: StatusBoard,
        *,
        clock: Callable[[], float],
        max_pending: int,
    ) -> None:
        self.db = db
        self.node_id = node_id
        self.revocations = revocations
        self.status = status
        self.clock = clock
        self.max_pending = max_pending
        self.sessions = sessions  # shared with the StatusBoard, which only reads it

    async def deliver(self, stored: StoredAnnouncement) -> None:
        """Send a just-accepted announcement to every targeted device that is connected, each
        with its own target proof (one encoding shared by all devices without one)."""
        shared: dict[bool, bytes | None] = {}  # by reads_targets, for devices without a proof
        sent = unreadable = 0
        for node in stored.devices:
            session = self.sessions.get(node)
            if session is None:
                continue
            reads = session.reads_targets
            if reads and node in stored.proofs and not stored.lists_devices:
                payload: bytes | None = _encoded(stored.deliver_to(node, reads))
            else:
                if reads not in shared:
                    shared[reads] = _encoded(stored.deliver_to(node, reads))
                payload = shared[reads]
            if payload is None and session.live:
                unreadable += 1
            if session.offer(stored, payload):
                sent += 1
        log.info("push_delivered", sequence=stored.sequence, live=sent, targets=len(stored.devices))
        if unreadable:
            log.warning(
                "push_not_for_old_agents",
                sequence=stored.sequence,
                devices=unreadable,
                detail="no Announcement v2 for agents before Hello v4; upgrade those agents",
            )
        await self.status.publish(stored.devices)

    def hand_out_checkpoint(self, envelope: SignedEnvelope) -> None:
        """Send a new checkpoint to every live agent that can witness it (Hello v3 or later)."""
        payload = encode(AuditCheckpoint(checkpoint=envelope))
        for session in self.sessions.values():
            if session.can_witness:
                session.witness(payload)

    def hand_out_revocation(self, revocation: SignedRevocation) -> None:
        payload = encode(Revocations(revocations=(revocation,)))
        for session in self.sessions.values():
            if session.live:
                session.link.send(payload)

    async def agent_hello(self, link: AgentLink, hello: AnyHello) -> AgentSession | None:
        """An agent said Hello: record it, welcome it, and send what it is missing.

        Returns None if the agent was turned away (too many pending devices).
        """
        node = link.remote_id
        now = self.clock()
        session = AgentSession(link, hello, now)
        previous = self.sessions.get(node)
        self.sessions[node] = session
        if previous is not None:
            self.drop(previous, "replaced by a newer connection from the same device")
        try:
            async with self.db.transaction() as tx:
                device = await registry.get(tx, node)
                if device is None and await registry.pending_count(tx) >= self.max_pending:
                    full = True
                else:
                    full = False
                    device = await registry.record_seen(
                        tx, node, now, registry.reported_tags(hello)
                    )
                    if device.approved:
                        await registry.save_hello(tx, node, hello, now)
                        if isinstance(hello, WitnessingHello) and hello.checkpoint is not None:
                            await witnesses.record(tx, node, hello.checkpoint, self.node_id, now)
        except BaseException:
            self.drop(session, "coordinator error")
            raise
        if full or device is None:
            log.warning("agent_turned_away", device=node.short(), reason="too many pending")
            self.drop(session, "too many devices waiting for approval")
            return None
        log.info(
            "agent_hello",
            device=node.short(),
            name=device.name,
            approved=device.approved,
            last_sequence=hello.last_sequence,
            path=link.path,
            tags_mismatch=device.tags_mismatch,
        )
        if session.phase is Phase.WELCOMING:
            if device.approved:
                await self.welcome(session, device)
            else:
                session.turn_away_pending()
        await self.status.publish([node])
        return session

    async def approved(self, device: DeviceRecord) -> None:
        """An admin approved (or re-added) a device: welcome it if it waits connected."""
        session = self.sessions.get(device.node_id)
        if session is not None and session.phase is Phase.PENDING:
            session.approved()
            await self.welcome(session, device)

    async def welcome(self, session: AgentSession, device: DeviceRecord) -> None:
        """Look up what a WELCOMING session needs, then take it LIVE in one step."""
        if (await registry.last_report(self.db, session.node_id)) is None:
            # A device approved while connected: what its Hello said becomes its status.
            async with self.db.transaction() as tx:
                await registry.save_hello(tx, session.node_id, session.hello, self.clock())
        latest = await announcements.latest_for(self.db, session.node_id)
        revoked: RevocationList = await self.revocations.get()
        checkpoint = (
            await witnesses.latest_checkpoint(self.db)
            if isinstance(session.hello, WitnessingHello)
            else None
        )
        session.go_live(device.name, latest, revoked.signed(), checkpoint, self.clock())

    async def agent_message(self, session: AgentSession, message: Message) -> None:
        """A StatusReport, AnnouncementRejected or WitnessReport from an agent (others: ignored)."""
        if not session.live or self.sessions.get(session.node_id) is not session:
            return  # pending devices get nothing and are not listened to
        now = self.clock()
        session.last_seen = now
        if isinstance(message, StatusReport):
            session.progress = message.progress
            if message.state is AgentState.APPLIED and message.sequence is not None:
                session.delivered = max(session.delivered, message.sequence)
            if _report_changed(session.last_report, message):
                async with self.db.transaction() as tx:
                    await registry.save_report(tx, session.node_id, message, now)
                    await registry.touch(tx, session.node_id, now)
            session.last_report = message
        elif isinstance(message, WitnessReport):
            if not session.take_witness_report():
                return  # more reports than checkpoints it was sent: not worth a disk write
            async with self.db.transaction() as tx:
                await witnesses.record(tx, session.node_id, message.checkpoint, self.node_id, now)
            return
        elif isinstance(message, AnnouncementRejected | AnnouncementRejectedV1):
            code = message.code if isinstance(message, AnnouncementRejected) else "unknown"
            log.info(
                "announcement_rejected",
                device=session.node_id.short(),
                sequence=message.sequence,
                code=code,
                reason=message.reason,
            )
            async with self.db.transaction() as tx:
                await registry.save_rejection(
                    tx, session.node_id, message.sequence, code, message.reason, now
                )
                await registry.touch(tx, session.node_id, now)
        else:
            return
        await self.status.publish([session.node_id])

    async def agent_gone(self, session: AgentSession) -> None:
        """The connection ended; only the device's current session marks it offline."""
        was_current = self.sessions.get(session.node_id) is session
        session.move(Phase.GONE)
        if not was_current:
            return
        del self.sessions[session.node_id]
        async with self.db.transaction() as tx:
            await registry.touch(tx, session.node_id, self.clock())
        log.info("agent_gone", device=session.node_id.short())
        await self.status.publish([session.node_id])

    def drop(self, session: AgentSession, reason: str) -> None:
        if self.sessions.get(session.node_id) is session:
            del self.sessions[session.node_id]
        session.close(reason)

    def drop_device(self, node: NodeId, reason: str) -> None:
        session = self.sessions.get(node)
        if session is not None:
            self.drop(session, reason)


def _encoded(message: Message | None) -> bytes | None:
    return encode(message) if message is not None else None


def _report_changed(last: StatusReport | None, report: StatusReport) -> bool:
    """False for a report that only moves progress forward (not worth a disk write)."""
    if last is None:
        return True
    return (
        last.state,
        last.since,
        last.sequence,
        last.desired,
        last.current,
        last.error,
        last.exit_code,
        last.log_tail,
    ) != (
        report.state,
        report.since,
        report.sequence,
        report.desired,
        report.current,
        report.error,
        report.exit_code,
        report.log_tail,
    )
