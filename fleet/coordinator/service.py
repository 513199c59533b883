"""The coordinator's logic, free of network I/O: admin requests, agent sessions, status.

`CoordinatorService` takes a Database and a clock. The mesh adapter (fleet.coordinator.server)
feeds it decoded input and moves what it queues onto connections; tests drive it directly.

Ordering rules that make acknowledgements trustworthy:
- an accepted push is stored together with its targets, the request nonce and its audit row
  in ONE transaction; `handle_admin` returns only after that COMMIT (durable: WAL +
  synchronous=FULL), and the adapter sends PushAccepted, and only THEN calls `deliver`;
- an agent that (re)connects gets the latest announcement for it, so a push committed but
  never delivered (crash, agent offline) reaches it on its next connection;
- an agent being welcomed parks live pushes until the Welcome is out, so no push accepted
  while its lookup ran can slip between the lookup and the Welcome.

Authority: every admin request carries the signer's capability chain, checked against the
configured trust roots and the revocations (fleet.capability) before anything else; each
request type then needs its action, and device changes and pushes need every device in
the chain's scope. The announcement inside a push carries its signer's chain as well,
checked the same way (agents check it again themselves).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fleet.audit import sign_checkpoint
from fleet.capability import (
    Authority,
    CapabilityError,
    Chain,
    Permission,
    RevocationList,
    authority_of,
    certificates_of,
    format_id,
    verify_revocation,
)
from fleet.coordinator import announcements, audit, registry, trust, witnesses
from fleet.coordinator.announcements import StoredAnnouncement
from fleet.coordinator.audit import Outcome
from fleet.coordinator.database import Database, Transaction
from fleet.coordinator.refusals import (
    RefusalLimiter,
    RefusalLimits,
    RequestFacts,
    bounded_detail,
    claimed_type,
)
from fleet.coordinator.registry import DeviceRecord, LastReport, RegistryError
from fleet.coordinator.sessions import AgentLink, AgentSession, Phase
from fleet.coordinator.watchers import StatusWatcher
from fleet.identity import Identity, InvalidLabel, NodeId, normalize_tags
from fleet.identity.labels import TAG_PREFIX
from fleet.log import get_logger
from fleet.protocol.admin import MAX_CLOCK_SKEW, AdminRequestError, OpenedRequest
from fleet.protocol.admin import open_admin_request as _open_admin_request
from fleet.protocol.messages import (
    AgentState,
    Announcement,
    AnnouncementRejected,
    AnnouncementRejectedV1,
    AnyHello,
    AuditCheckpoint,
    AuditPage,
    AuditQuery,
    AuditRow,
    AuditWitnesses,
    AuditWitnessesReply,
    CertificateChain,
    CertificateLookup,
    Deliver,
    DesiredSystem,
    DeviceAdd,
    DeviceApprove,
    DeviceInfo,
    DeviceList,
    DeviceListReply,
    DeviceRemove,
    DeviceStatus,
    ErrorReply,
    GrantRecord,
    Hello,
    NextSequence,
    NextSequenceReply,
    OkReply,
    PushAccepted,
    PushRequest,
    Rejection,
    Revocations,
    RevokeRequest,
    StatusReport,
    StatusRequest,
    StatusSnapshot,
    TargetCheck,
    TargetCheckReply,
    Welcome,
    WitnessReport,
)
from fleet.vocabulary import InvalidStorePath, check_store_path
from fleet.wire import (
    MAX_FRAME,
    Message,
    SignedEnvelope,
    Tag,
    WireError,
    decode,
    encode,
    verify_envelope,
)

log = get_logger(__name__)

MAX_PENDING = 10_000  # unapproved devices remembered; more are turned away unrecorded
AUDIT_PAGE = 500  # audit entries per AuditPage at most ...
# ... and at most this many bytes of entries (far below MESSAGE_CAP), except that an entry
# larger than this goes alone in its page: an entry the coordinator wrote holds at most two
# 1 MiB fields (request, detail), so a page of one always fits the 8 MiB message cap.
AUDIT_PAGE_BYTES = 2 << 20
AUDIT_ROW_OVERHEAD = 256  # ids, time, hashes, encoding, and a checkpoint, per entry
# A signed admin request is one envelope whose payload is one field of at most 1 MiB (the
# wire limit); anything longer cannot be a valid request and is refused unread.
MAX_ADMIN_REQUEST = MAX_FRAME + 4096

ACTIONS: dict[type[Message], str] = {
    NextSequence: "next-sequence",
    PushRequest: "push",
    DeviceAdd: "device-add",
    DeviceApprove: "device-approve",
    DeviceRemove: "device-remove",
    DeviceList: "device-list",
    StatusRequest: "status",
    GrantRecord: "grant",
    RevokeRequest: "revoke",
    CertificateLookup: "certificate-lookup",
    AuditQuery: "audit-read",
    TargetCheck: "target-check",
    AuditWitnesses: "audit-witnesses",
}
# The capability each request needs (revocation authority is checked by verify_revocation).
NEEDS: dict[type[Message], Permission | None] = {
    NextSequence: Permission.PUSH,
    PushRequest: Permission.PUSH,
    DeviceAdd: Permission.DEVICES,
    DeviceApprove: Permission.DEVICES,
    DeviceRemove: Permission.DEVICES,
    DeviceList: None,  # read: every device; push alone: those in its scope (to resolve targets)
    StatusRequest: Permission.READ,
    GrantRecord: Permission.GRANT,
    RevokeRequest: None,
    CertificateLookup: Permission.GRANT,
    AuditQuery: Permission.AUDIT,
    TargetCheck: Permission.PUSH,
    AuditWitnesses: Permission.AUDIT,
}
# Reads are not administrative actions: only their nonce is kept, no audit row.
READ_ONLY = (
    NextSequence,
    DeviceList,
    StatusRequest,
    CertificateLookup,
    AuditQuery,
    TargetCheck,
    AuditWitnesses,
)
MAX_TARGET_CHECK = 64  # targets answered per TargetCheck


class Refused(Exception):
    """An admin request that is answered with ErrorReply(code, message) and audited."""

    def __init__(self, code: str, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class AdminResult:
    """What to do after a request was handled (and, if it changed anything, committed)."""

    reply: Message
    delivery: StoredAnnouncement | None = None  # deliver after the reply is sent
    watcher: StatusWatcher | None = None  # keep streaming StatusUpdate rows from it


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
        self.signer = signer  # signs audit checkpoints (None: no checkpoints, for tests)
        self.clock = clock
        self.max_pending = max_pending
        self.sessions: dict[NodeId, AgentSession] = {}
        self.watchers: set[StatusWatcher] = set()
        self._revoked: RevocationList | None = None
        self.refusals = RefusalLimiter(refusal_limits)

    async def revocations(self) -> RevocationList:
        """The verified revocations (loaded from the database on first use)."""
        if self._revoked is None:
            revoked = RevocationList()
            for problem in revoked.add_all(
                await trust.all_revocations(self.db), self.trust_roots, self.clock()
            ):
                log.warning("revocation_ignored", reason=str(problem))
            self._revoked = revoked
        return self._revoked

    async def checkpoint(self) -> int | None:
        """Sign the audit head if it moved since the last checkpoint; its sequence, or None.

        A window of suppressed refusals that is over is summed up first, so the periodic
        checkpoint also bounds how long a suppression goes unrecorded.
        """
        await self.record_suppressed()
        if self.signer is None:
            return None
        async with self.db.transaction() as tx:
            head = await tx.fetchone("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1")
            if head is None or int(head["id"]) <= await trust.last_checkpoint(tx):
                return None
            now = self.clock()
            sequence = int(head["id"])
            envelope = sign_checkpoint(self.signer, sequence, bytes(head["hash"]), now)
            await trust.insert_checkpoint(tx, sequence, envelope, now)
        log.info("audit_checkpoint", sequence=sequence)
        self._hand_out_checkpoint(envelope)
        return sequence

    def _hand_out_checkpoint(self, envelope: SignedEnvelope) -> None:
        """Send a new checkpoint to every live agent that can witness it (Hello v3)."""
        payload = encode(AuditCheckpoint(checkpoint=envelope))
        for session in self.sessions.values():
            if session.phase is Phase.LIVE and isinstance(session.hello, Hello):
                session.witness_budget += 2
                session.link.send(payload)

    # ------------------------------------------------------------------ admin requests

    async def handle_admin(self, raw: bytes, connection_id: NodeId) -> AdminResult:
        """Authenticate, authorize and carry out one admin request (its frame, verbatim).

        Never raises for bad input: every refusal becomes an audited ErrorReply.
        """
        now = self.clock()
        action = "unknown"
        opened: OpenedRequest | None = None
        certified = False  # the signer's chain verified: refusals spend only its own bucket
        try:
            if len(raw) > MAX_ADMIN_REQUEST:
                raise Refused("too-large", too_large(len(raw)))
            opened = self._open(raw, connection_id, now)
            action = ACTIONS[type(opened.body)]
            authority = await self._authority(opened.signer, opened.chain, now)
            certified = True
            return await self._dispatch(opened, authority, raw, connection_id, now)
        except Refused as refusal:
            return await self._refuse(
                refusal, RequestFacts.of(raw), connection_id, action, now, opened, certified, raw
            )

    async def refuse_unread(self, connection_id: NodeId, facts: RequestFacts) -> AdminResult:
        """A request over the size cap, whose body the adapter did not keep: refuse, audit."""
        refusal = Refused("too-large", too_large(facts.size))
        return await self._refuse(refusal, facts, connection_id, "unknown", self.clock())

    async def _refuse(
        self,
        refusal: Refused,
        facts: RequestFacts,
        actor: NodeId,
        action: str,
        now: float,
        opened: OpenedRequest | None = None,
        certified: bool = False,
        raw: bytes = b"",
    ) -> AdminResult:
        recorded = await self._audit_refusal(
            refusal, facts, actor, action, opened, certified, raw, now
        )
        # Refusals over the rate limits are logged at debug only: the log must not grow
        # with what an attacker sends any more than the audit log does.
        (log.info if recorded else log.debug)(
            "admin_refused",
            actor=actor.short(),
            action=action,
            code=refusal.code,
            reason=str(refusal)[:300],
            size=facts.size,
            recorded=recorded,
        )
        return AdminResult(ErrorReply(code=refusal.code, message=str(refusal)))

    def _open(self, raw: bytes, connection_id: NodeId, now: float) -> OpenedRequest:
        try:
            envelope = decode(raw, SignedEnvelope)
        except WireError as exc:
            raise Refused("invalid", f"not a signed admin request: {exc}") from None
        try:
            opened = _open_admin_request(envelope, self.node_id, now=now)
        except AdminRequestError as exc:
            raise Refused(exc.code, str(exc), signer=str(envelope.signer)) from None
        if opened.signer != connection_id:
            raise Refused(
                "unauthorized",
                f"request signed by {opened.signer.short()} but sent over a connection "
                f"authenticated as {connection_id.short()}",
                signer=str(opened.signer),
            )
        if type(opened.body) not in ACTIONS:
            raise Refused("invalid", f"{opened.body.wire_type} is not an admin request")
        return opened

    async def _authority(
        self, holder: NodeId, chain: Chain, now: float, /, **detail: Any
    ) -> Authority:
        """The holder's verified authority, or a refusal naming what is wrong with its chain."""
        revoked = await self.revocations()
        try:
            return authority_of(holder, chain, self.trust_roots, now, revoked.ids())
        except CapabilityError as exc:
            detail.setdefault("signer", str(holder))
            raise Refused(
                "unauthorized", f"{exc.code}: {exc}", capability=exc.code, **detail
            ) from None

    @staticmethod
    def _require(
        authority: Authority,
        action: Permission,
        device: NodeId | None = None,
        tags: Iterable[str] = (),
        /,
        **detail: Any,
    ) -> None:
        try:
            authority.require(action, device, tags)
        except CapabilityError as exc:
            raise Refused(
                "unauthorized", f"{exc.code}: {exc}", capability=exc.code, **detail
            ) from None

    async def _dispatch(
        self, opened: OpenedRequest, authority: Authority, raw: bytes, actor: NodeId, now: float
    ) -> AdminResult:
        body = opened.body
        needed = NEEDS[type(body)]
        if needed is not None:
            self._require(authority, needed, signer=str(opened.signer))
        if isinstance(body, READ_ONLY):
            async with self.db.transaction() as tx:
                await self._use_nonce(tx, opened)
            if isinstance(body, CertificateLookup):
                chain = await trust.chain_of(self.db, body.certificate)
                if chain is None:
                    raise Refused(
                        "not-found",
                        f"certificate {format_id(body.certificate)} has not been seen by "
                        "this coordinator (pass its chain file with --chain)",
                    )
                return AdminResult(CertificateChain(chain=chain))
            if isinstance(body, AuditQuery):
                return AdminResult(await self.audit_page(body))
            if isinstance(body, AuditWitnesses):
                return AdminResult(
                    AuditWitnessesReply(witnesses=tuple(await witnesses.listed(self.db)))
                )
            if isinstance(body, NextSequence):
                return AdminResult(
                    NextSequenceReply(sequence=await announcements.max_sequence(self.db) + 1)
                )
            if isinstance(body, TargetCheck):
                return AdminResult(await self._target_check(authority, body))
            if isinstance(body, DeviceList):
                devices = await registry.all_devices(self.db)
                if Permission.READ not in authority.actions:
                    self._require(authority, Permission.PUSH, signer=str(opened.signer))
                    devices = [d for d in devices if authority.scope.contains(d.node_id, d.tags)]
                return AdminResult(DeviceListReply(devices=tuple(self._info(d) for d in devices)))
            assert isinstance(body, StatusRequest)
            watcher = None
            if body.watch:
                # Subscribe before reading the snapshot: an update racing with it arrives
                # after the snapshot and repeats a full row, which is harmless.
                watcher = StatusWatcher()
                self.watchers.add(watcher)
            return AdminResult(StatusSnapshot(devices=await self.snapshot()), watcher=watcher)
        if isinstance(body, PushRequest):
            return await self._push(opened, authority, body, raw, actor, now)
        if isinstance(body, GrantRecord):
            return await self._grant(opened, body, raw, actor, now)
        if isinstance(body, RevokeRequest):
            return await self._revoke(opened, body, raw, actor, now)
        return await self._change_device(opened, authority, body, raw, actor, now)

    async def _target_check(self, authority: Authority, body: TargetCheck) -> TargetCheckReply:
        """Which targets name devices that exist, all of them outside the requester's scope.

        Only exact names, full node ids and tags are answered, at most MAX_TARGET_CHECK per
        request: a push key learns no more than that a name it already knows is out of reach.
        """
        if len(body.targets) > MAX_TARGET_CHECK:
            raise Refused("invalid", f"at most {MAX_TARGET_CHECK} targets per check")
        devices = await registry.all_devices(self.db)
        outside = []
        for target in body.targets:
            named = [d for d in devices if names_device(target.strip(), d)]
            if named and not any(authority.scope.contains(d.node_id, d.tags) for d in named):
                outside.append(target)
        return TargetCheckReply(outside=tuple(outside), scope=authority.scope.describe())

    async def _use_nonce(self, tx: Transaction, opened: OpenedRequest) -> None:
        """Record the request's nonce (a nonce seen before means a replayed request), and
        the certificates of its chain (verified by then, or the request is refused)."""
        await self._spend_nonce(tx, opened)
        await trust.remember_chain(tx, opened.chain, self.clock())

    async def _spend_nonce(self, tx: Transaction, opened: OpenedRequest) -> None:
        await tx.execute(
            "DELETE FROM admin_nonces WHERE issued_at < ?",
            (self.clock() - 2 * MAX_CLOCK_SKEW,),
        )
        seen = await tx.fetchone("SELECT 1 FROM admin_nonces WHERE nonce = ?", (opened.nonce,))
        if seen is not None:
            raise Refused("replay", "this request was already received (replayed nonce)")
        await tx.execute(
            "INSERT INTO admin_nonces (nonce, signer, issued_at) VALUES (?, ?, ?)",
            (opened.nonce, str(opened.signer), opened.issued_at),
        )

    async def _audit_refusal(
        self,
        refusal: Refused,
        facts: RequestFacts,
        actor: NodeId,
        action: str,
        opened: OpenedRequest | None,
        certified: bool,
        raw: bytes,
        now: float,
    ) -> bool:
        """Audit a refusal, bounded and rate-limited (fleet.coordinator.refusals); whether
        it got its own entry (False: it is counted into the next suppression summary).

        The request's bytes are never kept, only its size and digest (whoever holds a copy
        can match it). The nonce of an authenticated request is spent even when refused,
        so it cannot be replayed later when it might pass; for keys without a valid
        certificate only when recorded, so nothing an outsider sends beyond its rate limit
        is stored.
        """
        admitted = self.refusals.admit(str(actor), facts.size, certified=certified, now=now)
        spend = opened is not None and refusal.code != "replay" and (certified or admitted)
        if not admitted and not spend:
            return False
        detail = bounded_detail({"code": refusal.code, "reason": str(refusal), **refusal.detail})
        detail.update(facts.detail())
        claimed = opened.body.wire_type if opened is not None else claimed_type(raw)
        if claimed is not None:
            detail["claimed"] = claimed
        async with self.db.transaction() as tx:
            if spend:
                assert opened is not None
                with contextlib.suppress(Refused):
                    await self._spend_nonce(tx, opened)
            if admitted:
                await audit.append(
                    tx,
                    time=now,
                    actor=str(actor),
                    action=action,
                    outcome=Outcome.REFUSED,
                    detail=detail,
                    request=b"",
                )
        return admitted

    async def record_suppressed(self, *, force: bool = False) -> bool:
        """Write the summary of refusals suppressed by the rate limits, once their window
        is over (or now, if `force`); whether one was written."""
        now = self.clock()
        window = self.refusals.take_summary(now, force=force)
        if window is None:
            return False
        async with self.db.transaction() as tx:
            await audit.append(
                tx,
                time=now,
                actor=str(self.node_id),
                action="refusals-suppressed",
                outcome=Outcome.REFUSED,
                detail=window.detail(now),
                request=b"",
            )
        log.warning(
            "admin_refusals_suppressed",
            refusals=window.refusals,
            keys=len(window.keys),
            bytes=window.bytes,
        )
        return True

    async def _push(
        self,
        opened: OpenedRequest,
        authority: Authority,
        body: PushRequest,
        raw: bytes,
        actor: NodeId,
        now: float,
    ) -> AdminResult:
        try:
            signer, ann = verify_envelope(body.announcement, Tag.ANNOUNCEMENT, Announcement)
        except WireError as exc:
            raise Refused("invalid", f"announcement refused: {exc}") from None
        detail: dict[str, Any] = {
            "sequence": ann.sequence,
            "store_path": ann.store_path,
            "action": ann.action.value,
            "devices": [str(d) for d in ann.devices],
            "targets": list(ann.targets),
            "signer": str(signer),
        }
        signer_authority = await self._authority(signer, ann.chain, now, **detail)
        self._require(signer_authority, Permission.PUSH, **detail)
        try:
            check_store_path(ann.store_path)
        except InvalidStorePath as exc:
            raise Refused("invalid", str(exc), **detail) from None
        if ann.valid_until <= now:
            raise Refused("expired", "the announcement's valid_until has passed", **detail)
        if ann.issued_at > now + MAX_CLOCK_SKEW:
            raise Refused("invalid", "the announcement is issued in the future", **detail)
        async with self.db.transaction() as tx:
            await self._use_nonce(tx, opened)
            highest = await announcements.max_sequence(tx)
            if ann.sequence <= highest:
                raise Refused(
                    "conflict",
                    f"sequence {ann.sequence} is not above the highest stored ({highest}); "
                    "ask NextSequence again",
                    highest=highest,
                    **detail,
                )
            known = await registry.approval_of(tx, ann.devices)
            for device in dict.fromkeys(ann.devices):
                if known.get(device) is not True:
                    state = "pending approval" if device in known else "not registered"
                    raise Refused("not-found", f"target device {device} is {state}", **detail)
            for device in dict.fromkeys(ann.devices):
                record = await registry.get(tx, device)
                tags = record.tags if record is not None else ()
                # Both the request's signer and the announcement's: usually the same key.
                self._require(signer_authority, Permission.PUSH, device, tags, **detail)
                self._require(authority, Permission.PUSH, device, tags, **detail)
            await trust.remember_chain(tx, ann.chain, now)
            stored = await announcements.insert(tx, signer, body.announcement, ann, now)
            await audit.append(
                tx,
                time=now,
                actor=str(actor),
                action="push",
                outcome=Outcome.ACCEPTED,
                detail=detail,
                request=raw,
            )
        log.info(
            "push_accepted",
            sequence=stored.sequence,
            devices=len(stored.devices),
            store_path=stored.store_path,
            actor=actor.short(),
        )
        return AdminResult(
            PushAccepted(sequence=stored.sequence, devices=stored.devices), delivery=stored
        )

    async def _change_device(
        self,
        opened: OpenedRequest,
        authority: Authority,
        body: Message,
        raw: bytes,
        actor: NodeId,
        now: float,
    ) -> AdminResult:
        action = ACTIONS[type(body)]
        if isinstance(body, DeviceAdd):
            try:  # `kiosk` and `tag:kiosk` alike, before the scope sees them
                body = dataclasses.replace(body, tags=normalize_tags(body.tags))
            except InvalidLabel as exc:
                raise Refused("invalid", str(exc)) from None
        try:
            async with self.db.transaction() as tx:
                await self._device_in_scope(tx, authority, body)
                await self._use_nonce(tx, opened)
                if isinstance(body, DeviceAdd):
                    record = await registry.add(tx, body.node_id, body.name, body.tags, now)
                elif isinstance(body, DeviceApprove):
                    record = await registry.approve(tx, body.node_id)
                else:
                    assert isinstance(body, DeviceRemove)
                    record = await registry.remove(tx, body.name)
                await audit.append(
                    tx,
                    time=now,
                    actor=str(actor),
                    action=action,
                    outcome=Outcome.ACCEPTED,
                    detail={
                        "node_id": str(record.node_id),
                        "name": record.name,
                        "tags": list(record.tags),
                    },
                    request=raw,
                )
        except RegistryError as exc:
            raise Refused(exc.code, str(exc)) from None
        log.info("device_changed", action=action, device=record.node_id.short(), name=record.name)
        session = self.sessions.get(record.node_id)
        if isinstance(body, DeviceRemove):
            if session is not None:
                self._drop(session, "device removed from the registry")
        elif session is not None and session.phase is Phase.PENDING:
            session.phase = Phase.WELCOMING
            await self._welcome(session, record)
        await self._publish([record.node_id])
        return AdminResult(OkReply())

    async def _device_in_scope(self, tx: Transaction, authority: Authority, body: Message) -> None:
        """A device change needs the device (as it is, and as it will be) inside the scope."""
        if isinstance(body, DeviceRemove):
            row = await tx.fetchone("SELECT node_id FROM devices WHERE name = ?", (body.name,))
            if row is None:
                return  # the registry refuses it as not-found
            existing = await registry.get(tx, NodeId.parse(str(row["node_id"])))
        else:
            assert isinstance(body, DeviceAdd | DeviceApprove)
            existing = await registry.get(tx, body.node_id)
        if existing is not None:
            self._require(authority, Permission.DEVICES, existing.node_id, existing.tags)
        if isinstance(body, DeviceAdd):
            self._require(authority, Permission.DEVICES, body.node_id, body.tags)
            if not authority.scope.contains(body.node_id):  # in scope only by its tags
                try:
                    authority.require_tags(body.tags)
                except CapabilityError as exc:
                    raise Refused(
                        "unauthorized", f"{exc.code}: {exc}", capability=exc.code
                    ) from None
        elif existing is None and isinstance(body, DeviceApprove):
            self._require(authority, Permission.DEVICES, body.node_id)

    async def _grant(
        self, opened: OpenedRequest, body: GrantRecord, raw: bytes, actor: NodeId, now: float
    ) -> AdminResult:
        """Record a certificate the signer issued: it must verify and be issued by the signer."""
        chain = body.chain
        if not chain.certificates:
            raise Refused("invalid", "a grant record carries the new certificate's chain")
        authority = await self._authority(
            chain_subject(chain), chain, now, note="the granted chain itself"
        )
        issued = authority.certificate_ids[-1]
        _, cert = certificates_of(chain)[-1]
        detail: dict[str, Any] = {
            "certificate": format_id(issued),
            "issuer": str(cert.issuer),
            "subject": str(cert.subject),
            "actions": list(cert.actions),
            "scope": cert.scope.describe(),
            "not_before": cert.not_before,
            "not_after": cert.not_after,
            "may_delegate": cert.may_delegate,
        }
        if cert.issuer != opened.signer:
            raise Refused(
                "unauthorized",
                f"the certificate was issued by {cert.issuer.short()}, not by the requester",
                **detail,
            )
        async with self.db.transaction() as tx:
            await self._use_nonce(tx, opened)
            await trust.remember_chain(tx, chain, now)
            await audit.append(
                tx,
                time=now,
                actor=str(actor),
                action="grant",
                outcome=Outcome.ACCEPTED,
                detail=detail,
                request=raw,
            )
        log.info("grant_recorded", certificate=format_id(issued), subject=cert.subject.short())
        return AdminResult(OkReply())

    async def _revoke(
        self, opened: OpenedRequest, body: RevokeRequest, raw: bytes, actor: NodeId, now: float
    ) -> AdminResult:
        revoked = await self.revocations()
        try:
            statement = verify_revocation(body.revocation, self.trust_roots, now)
        except CapabilityError as exc:
            raise Refused("unauthorized", f"{exc.code}: {exc}", capability=exc.code) from None
        detail = {"certificate": format_id(statement.certificate), "reason": statement.reason}
        async with self.db.transaction() as tx:
            await self._use_nonce(tx, opened)
            new = await trust.store_revocation(
                tx, body.revocation, statement.certificate, str(opened.signer), now
            )
            await audit.append(
                tx,
                time=now,
                actor=str(actor),
                action="revoke",
                outcome=Outcome.ACCEPTED,
                detail={**detail, "new": new},
                request=raw,
            )
        revoked.add(body.revocation, self.trust_roots, now)
        log.info("certificate_revoked", certificate=detail["certificate"], new=new)
        if new:
            payload = encode(Revocations(revocations=(body.revocation,)))
            for session in self.sessions.values():
                if session.phase is Phase.LIVE:
                    session.link.send(payload)
        return AdminResult(OkReply())

    async def audit_page(self, query: AuditQuery) -> AuditPage:
        """Entries after `query.after`, with the checkpoints that cover them.

        A page holds at most AUDIT_PAGE entries and AUDIT_PAGE_BYTES bytes of them (at
        least one entry, however large), so any log can be read page by page.
        """
        if query.after <= 0:
            await self.record_suppressed(force=True)  # a reader sees every refusal counted
        await self.checkpoint()  # hand out a signed head with every read of the log
        limit = max(1, min(query.limit, AUDIT_PAGE))
        low = query.after
        total, high = 0, low
        for row in await self.db.fetchall(audit.SIZES, (low, limit)):
            total += int(row["size"]) + AUDIT_ROW_OVERHEAD
            if high > low and total > AUDIT_PAGE_BYTES:
                break
            high = int(row["id"])
        rows = await self.db.fetchall(
            "SELECT * FROM audit WHERE id > ? AND id <= ? ORDER BY id", (low, high)
        )
        more = (
            await self.db.fetchone("SELECT 1 FROM audit WHERE id > ? LIMIT 1", (high,))
        ) is not None
        entries = [audit.entry_of_row(r) for r in rows]
        checkpoints = await trust.checkpoints_between(self.db, low, high if more else 2**62)
        page = AuditPage(
            entries=tuple(
                AuditRow(
                    id=e.id,
                    time=e.time,
                    actor=e.actor,
                    action=e.action,
                    outcome=e.outcome,
                    detail=e.detail,
                    request=e.request,
                    prev_hash=e.prev_hash,
                    hash=e.hash,
                )
                for e in entries
            ),
            checkpoints=tuple(checkpoints),
            more=more,
        )
        try:
            encode(page)
        except WireError as exc:  # only a row written around the coordinator can do this
            raise Refused(
                "unreadable",
                f"audit entries {low + 1}..{high} cannot be sent ({exc}); the state database "
                "holds an entry this coordinator never wrote",
            ) from None
        return page

    # ------------------------------------------------------------------ delivery

    async def deliver(self, stored: StoredAnnouncement) -> None:
        """Send a just-accepted announcement to every targeted device that is connected."""
        payload = encode(Deliver(announcement=stored.envelope))
        sent = 0
        for node in stored.devices:
            session = self.sessions.get(node)
            if session is None:
                continue
            if session.phase is Phase.LIVE:
                if stored.sequence > session.delivered:
                    session.delivered = stored.sequence
                    session.link.send(payload)
                    sent += 1
            elif session.phase is Phase.WELCOMING:
                session.park(stored)
        log.info("push_delivered", sequence=stored.sequence, live=sent, targets=len(stored.devices))
        await self._publish(stored.devices)

    # ------------------------------------------------------------------ agent sessions

    async def agent_hello(self, link: AgentLink, hello: AnyHello) -> AgentSession | None:
        """An agent said Hello: record it, welcome it, and send what it is missing.

        Returns None if the agent was turned away (too many pending devices).
        """
        node = link.remote_id
        now = self.clock()
        session = AgentSession(link, hello, now)
        session.phase = Phase.WELCOMING  # park pushes accepted while we look things up
        previous = self.sessions.get(node)
        self.sessions[node] = session
        if previous is not None:
            self._drop(previous, "replaced by a newer connection from the same device")
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
                        if isinstance(hello, Hello) and hello.checkpoint is not None:
                            await witnesses.record(tx, node, hello.checkpoint, self.node_id, now)
        except BaseException:
            self._drop(session, "coordinator error")
            raise
        if full or device is None:
            log.warning("agent_turned_away", device=node.short(), reason="too many pending")
            self._drop(session, "too many devices waiting for approval")
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
                await self._welcome(session, device)
            else:
                session.phase = Phase.PENDING
                session.parked = None
                link.send(encode(Welcome(approved=False, name=None)))
        await self._publish([node])
        return session

    async def _welcome(self, session: AgentSession, device: DeviceRecord) -> None:
        """Welcome(approved=True), then the latest announcement the agent does not have."""
        if (await registry.last_report(self.db, session.node_id)) is None:
            # A device approved while connected: what its Hello said becomes its status.
            async with self.db.transaction() as tx:
                await registry.save_hello(tx, session.node_id, session.hello, self.clock())
        latest = await announcements.latest_for(self.db, session.node_id)
        revoked = await self.revocations()
        checkpoint = (
            await witnesses.latest_checkpoint(self.db) if isinstance(session.hello, Hello) else None
        )
        # No await from here on: the parked push and the lookup are merged atomically.
        if session.phase is not Phase.WELCOMING:
            return
        session.phase = Phase.LIVE
        session.link.send(encode(Welcome(approved=True, name=device.name)))
        if len(revoked):
            # Before any Deliver: the agent must know them when it checks announcements.
            session.link.send(encode(Revocations(revocations=tuple(revoked.signed()))))
        self._send_latest(session, latest)
        if checkpoint is not None:  # after any Deliver: witnessing never delays an update
            session.witness_budget += 2
            session.link.send(encode(AuditCheckpoint(checkpoint=checkpoint)))

    def _send_latest(self, session: AgentSession, latest: StoredAnnouncement | None) -> None:
        """Deliver the newer of the looked-up and the parked announcement, if the agent lacks it."""
        best = latest
        if session.parked is not None and (best is None or session.parked.sequence > best.sequence):
            best = session.parked
        session.parked = None
        if best is None:
            return
        if best.sequence <= session.delivered:
            return
        if best.expired(self.clock()):
            log.info("announcement_expired", device=session.node_id.short(), seq=best.sequence)
            return
        session.delivered = best.sequence
        session.link.send(encode(Deliver(announcement=best.envelope)))
        log.info("announcement_sent", device=session.node_id.short(), sequence=best.sequence)

    async def agent_message(self, session: AgentSession, message: Message) -> None:
        """A StatusReport, AnnouncementRejected or WitnessReport from an agent (others: ignored)."""
        if session.phase is not Phase.LIVE or self.sessions.get(session.node_id) is not session:
            return  # pending devices get nothing and are not listened to
        now = self.clock()
        session.last_seen = now
        if isinstance(message, StatusReport):
            session.progress = message.progress
            if message.state is AgentState.APPLIED and message.sequence is not None:
                session.delivered = max(session.delivered, message.sequence)
            if self._report_changed(session, message):
                async with self.db.transaction() as tx:
                    await registry.save_report(tx, session.node_id, message, now)
                    await registry.touch(tx, session.node_id, now)
            session.last_report = message
        elif isinstance(message, WitnessReport):
            if session.witness_budget <= 0:
                return  # more reports than checkpoints it was sent: not worth a disk write
            session.witness_budget -= 1
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
        await self._publish([session.node_id])

    @staticmethod
    def _report_changed(session: AgentSession, report: StatusReport) -> bool:
        """False for a report that only moves progress forward (not worth a disk write)."""
        last = session.last_report
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

    async def agent_gone(self, session: AgentSession) -> None:
        """The connection ended; only the device's current session marks it offline."""
        was_current = self.sessions.get(session.node_id) is session
        session.phase = Phase.GONE
        if not was_current:
            return
        del self.sessions[session.node_id]
        async with self.db.transaction() as tx:
            await registry.touch(tx, session.node_id, self.clock())
        log.info("agent_gone", device=session.node_id.short())
        await self._publish([session.node_id])

    def _drop(self, session: AgentSession, reason: str) -> None:
        session.phase = Phase.GONE
        if self.sessions.get(session.node_id) is session:
            del self.sessions[session.node_id]
        session.link.close(reason)

    # ------------------------------------------------------------------ status

    def unwatch(self, watcher: StatusWatcher) -> None:
        watcher.close()
        self.watchers.discard(watcher)

    async def snapshot(self) -> tuple[DeviceStatus, ...]:
        devices = await registry.all_devices(self.db)
        reports = await registry.last_reports(self.db)
        desired = await announcements.latest_desired(self.db)
        rejections = await registry.latest_rejections(self.db)
        return tuple(
            self._row(
                d,
                reports.get(str(d.node_id)),
                desired.get(str(d.node_id)),
                rejections.get(str(d.node_id)),
            )
            for d in devices
        )

    async def status_of(self, node: NodeId) -> DeviceStatus | None:
        device = await registry.get(self.db, node)
        if device is None:
            return None
        latest = await announcements.latest_for(self.db, node)
        report = await registry.last_report(self.db, node)
        rejection = await registry.latest_rejection(self.db, node)
        return self._row(
            device, report, latest.desired() if latest is not None else None, rejection
        )

    def _info(self, device: DeviceRecord) -> DeviceInfo:
        """A registry entry, with the time of the last message of a connected device."""
        info = device.info()
        session = self.sessions.get(device.node_id)
        if session is None or session.phase is Phase.GONE:
            return info
        return dataclasses.replace(info, last_seen=session.last_seen)

    def _row(
        self,
        device: DeviceRecord,
        report: LastReport | None,
        desired: DesiredSystem | None,
        rejection: Rejection | None,
    ) -> DeviceStatus:
        session = self.sessions.get(device.node_id)
        live = session if session is not None and session.phase is not Phase.GONE else None
        if (
            rejection is not None
            and report is not None
            and report.sequence is not None
            and report.sequence > rejection.sequence
            and report.reported_at >= rejection.time
        ):
            rejection = None  # the device has worked on a newer push since
        return DeviceStatus(
            node_id=device.node_id,
            name=device.name,
            tags=device.tags,
            agent_tags=device.agent_tags,
            approved=device.approved,
            online=live is not None,
            path=live.link.path if live is not None else None,
            last_seen=live.last_seen if live is not None else device.last_seen,
            state=report.state if report is not None else None,
            state_since=report.state_since if report is not None else None,
            sequence=report.sequence if report is not None else None,
            current=report.current if report is not None else None,
            desired=desired,
            progress=live.progress if live is not None else None,
            error=report.error if report is not None else None,
            rejection=rejection,
        )

    async def _publish(self, nodes: Iterable[NodeId]) -> None:
        """Send fresh rows for `nodes` to every watcher (only computed if someone watches)."""
        if not self.watchers:
            return
        rows = []
        for node in dict.fromkeys(nodes):
            row = await self.status_of(node)
            if row is None:
                row = self._removed_row(node)
            rows.append(row)
        for watcher in list(self.watchers):
            for row in rows:
                if not watcher.offer(row):
                    self.watchers.discard(watcher)
                    log.warning("status_watcher_dropped", reason="fell behind")
                    break

    @staticmethod
    def _removed_row(node: NodeId) -> DeviceStatus:
        """A device no longer in the registry: name None, not approved, offline."""
        return DeviceStatus(
            node_id=node,
            name=None,
            tags=(),
            agent_tags=None,
            approved=False,
            online=False,
            path=None,
            last_seen=None,
            state=None,
            state_since=None,
            sequence=None,
            current=None,
            desired=None,
            progress=None,
            error=None,
            rejection=None,
        )


def names_device(target: str, device: DeviceRecord) -> bool:
    """Whether a push target, as fleetctl takes it, names this device exactly (name, full
    node id or `tag:NAME`; short ids are left to the admin's own, scoped, list)."""
    if target.startswith(TAG_PREFIX):
        return target[len(TAG_PREFIX) :] in device.tags
    return target == device.name or target == str(device.node_id)


def too_large(size: int) -> str:
    return (
        f"request of {size} bytes is larger than an admin request can be "
        f"(at most {MAX_ADMIN_REQUEST} bytes)"
    )


def chain_subject(chain: Chain) -> NodeId:
    """The subject of a chain's last certificate (signatures checked by the caller after)."""
    try:
        return certificates_of(chain)[-1][1].subject
    except CapabilityError as exc:
        raise Refused("invalid", f"grant record: {exc}") from None
