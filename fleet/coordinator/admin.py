"""Admin requests: authenticate, authorize, carry out, audit (one table of request types).

Authority: every admin request carries the signer's capability chain, checked against the
configured trust roots and the revocations (fleet.capability) before anything else; each
request type then needs the permission fleet.protocol.permissions gives it (the same table
the offline audit verifier replays), and device changes and pushes need every device in
the chain's scope. The announcement inside a push carries its signer's chain as well,
checked the same way (agents check it again themselves).

Ordering that makes acknowledgements trustworthy: an accepted push is stored together with
its targets, the request nonce and its audit row in ONE transaction; `handle` returns only
after that COMMIT (durable: WAL + synchronous=FULL), the adapter sends PushAccepted, and
only THEN delivers it. Read-only requests are not administrative actions: only their nonce
is kept, no audit row.

Idempotence: the reply to a request that changed something (or was refused) is kept with its
nonce, in the transaction that carried it out (fleet.coordinator.nonces). The very same signed
request arriving again (fleetctl retries when an answer does not come in time) gets that reply
again and changes nothing; another request reusing the nonce is refused as a replay.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fleet.audit import sign_checkpoint
from fleet.capability import (
    Authority,
    CapabilityError,
    Chain,
    Permission,
    authority_of,
    certificates_of,
    format_id,
    verify_revocation,
)
from fleet.coordinator import (
    announcements,
    audit,
    enroll_tokens,
    nonces,
    registry,
    trust,
    witnesses,
)
from fleet.coordinator.announcements import StoredAnnouncement
from fleet.coordinator.audit import Outcome
from fleet.coordinator.database import Database, Transaction
from fleet.coordinator.delivery import Delivery
from fleet.coordinator.pushes import BadPush, OpenedPush, open_push
from fleet.coordinator.refusals import (
    RefusalLimiter,
    RequestFacts,
    bounded_detail,
    claimed_type,
)
from fleet.coordinator.registry import DeviceRecord, RegistryError
from fleet.coordinator.status import StatusBoard
from fleet.coordinator.trust import KnownRevocations
from fleet.coordinator.watchers import StatusWatcher
from fleet.identity import Identity, InvalidLabel, NodeId, check_label, normalize_tags
from fleet.identity.labels import TAG_PREFIX
from fleet.log import get_logger
from fleet.protocol.admin import MAX_CLOCK_SKEW, AdminRequestError, OpenedRequest
from fleet.protocol.admin import open_admin_request as _open_admin_request
from fleet.protocol.enroll_token import TOKEN_ID_LEN
from fleet.protocol.messages import (
    AuditPage,
    AuditQuery,
    AuditWitnesses,
    AuditWitnessesReply,
    CertificateChain,
    CertificateLookup,
    DeviceAdd,
    DeviceAddBatch,
    DeviceApprove,
    DeviceBatchAdded,
    DeviceList,
    DeviceListReply,
    DeviceRemove,
    EnrollTokenRevoke,
    ErrorReply,
    GrantRecord,
    NextSequence,
    NextSequenceReply,
    OkReply,
    PushAccepted,
    PushLookup,
    PushLookupReply,
    PushRequest,
    PushRequestV1,
    RevokeRequest,
    StatusQuery,
    StatusRequest,
    StatusSnapshot,
    TargetCheck,
    TargetCheckReply,
)
from fleet.protocol.permissions import ADMIN_ACTIONS, AdminAction
from fleet.vocabulary import InvalidStorePath, check_store_path
from fleet.wire import (
    MAX_FRAME,
    Message,
    SignedEnvelope,
    WireError,
    decode,
    encode,
)

log = get_logger(__name__)

AUDIT_PAGE = 500  # audit entries per AuditPage at most ...
# ... and at most this many bytes of entries (far below MESSAGE_CAP), except that an entry
# larger than this goes alone in its page: an entry the coordinator wrote holds at most two
# 1 MiB fields (request, detail), so a page of one always fits the 8 MiB message cap.
AUDIT_PAGE_BYTES = 2 << 20
AUDIT_ROW_OVERHEAD = 256  # ids, time, hashes, encoding, and a checkpoint, per entry
# A signed admin request is one envelope whose payload is one field of at most 1 MiB (the
# wire limit); anything longer cannot be a valid request and is refused unread.
MAX_ADMIN_REQUEST = MAX_FRAME + 4096
MAX_TARGET_CHECK = 64  # targets answered per TargetCheck
OK = OkReply()


class Refused(Exception):
    """An admin request that is answered with ErrorReply(code, message) and audited."""

    def __init__(self, code: str, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail


class Repeated(Exception):
    """The very request was carried out (or refused) before: answer what it got then."""

    def __init__(self, reply: Message) -> None:
        super().__init__(type(reply).__name__)
        self.reply = reply


@dataclass(frozen=True)
class AdminResult:
    """What to do after a request was handled (and, if it changed anything, committed)."""

    reply: Message
    delivery: StoredAnnouncement | None = None  # deliver after the reply is sent
    watcher: StatusWatcher | None = None  # keep streaming StatusUpdate rows from it


B = TypeVar("B", bound=Message)
B_co = TypeVar("B_co", bound=Message, covariant=True)


@dataclass(frozen=True)
class Request(Generic[B_co]):
    """One authenticated request being carried out (its signer's chain verified)."""

    opened: OpenedRequest
    body: B_co
    authority: Authority
    raw: bytes  # the frame, verbatim, for the audit row
    actor: NodeId
    now: float


Handler = Callable[["AdminDesk", Request[Any]], Awaitable[AdminResult]]


@dataclass(frozen=True)
class AdminRoute:
    action: AdminAction  # name, permission, read-only: fleet.protocol.permissions
    handle: Handler


class AdminDesk:
    """Carries out admin requests, audits them, and signs the audit head (checkpoints)."""

    def __init__(
        self,
        db: Database,
        node_id: NodeId,
        trust_roots: Iterable[NodeId],
        revocations: KnownRevocations,
        delivery: Delivery,
        status: StatusBoard,
        refusals: RefusalLimiter,
        *,
        signer: Identity | None,
        clock: Callable[[], float],
    ) -> None:
        self.db = db
        self.node_id = node_id
        self.trust_roots = frozenset(trust_roots)
        self.revocations = revocations
        self.delivery = delivery
        self.status = status
        self.refusals = refusals
        self.signer = signer  # signs audit checkpoints (None: no checkpoints, for tests)
        self.clock = clock

    # ------------------------------------------------------------------ entry points

    async def handle(self, raw: bytes, connection_id: NodeId) -> AdminResult:
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
            route = ROUTES[type(opened.body)]
            action = route.action.name
            authority = await self._authority(opened.signer, opened.chain, now)
            certified = True
            if route.action.needs is not None:
                require(authority, route.action.needs, signer=str(opened.signer))
            request = Request(opened, opened.body, authority, raw, connection_id, now)
            if route.action.read_only:
                async with self.db.transaction() as tx:
                    await self._use_nonce(tx, opened)
            return await route.handle(self, request)
        except Repeated as repeated:
            log.info(
                "admin_request_repeated",
                actor=connection_id.short(),
                action=action,
                reply=type(repeated.reply).__name__,
            )
            return AdminResult(repeated.reply)
        except Refused as refusal:
            return await self._refuse(
                refusal, RequestFacts.of(raw), connection_id, action, now, opened, certified, raw
            )

    async def refuse_unread(self, connection_id: NodeId, facts: RequestFacts) -> AdminResult:
        """A request over the size cap, whose body the adapter did not keep: refuse, audit."""
        refusal = Refused("too-large", too_large(facts.size))
        return await self._refuse(refusal, facts, connection_id, "unknown", self.clock())

    async def checkpoint(self) -> int | None:
        """Sign the audit head if it moved since the last checkpoint; its sequence, or None.

        A window of suppressed refusals that is over is summed up first, so the periodic
        checkpoint also bounds how long a suppression goes unrecorded.
        """
        await self.record_suppressed()
        if self.signer is None:
            return None
        async with self.db.transaction() as tx:
            head = await audit.head(tx)
            if head is None or head[0] <= await trust.last_checkpoint(tx):
                return None
            now = self.clock()
            sequence, digest = head
            envelope = sign_checkpoint(self.signer, sequence, digest, now)
            await trust.insert_checkpoint(tx, sequence, envelope, now)
        log.info("audit_checkpoint", sequence=sequence)
        self.delivery.hand_out_checkpoint(envelope)
        return sequence

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
        for entry_id, size in await audit.sizes(self.db, low, limit):
            total += size + AUDIT_ROW_OVERHEAD
            if high > low and total > AUDIT_PAGE_BYTES:
                break
            high = entry_id
        entries = await audit.entries_between(self.db, low, high)
        more = await audit.any_after(self.db, high)
        checkpoints = await trust.checkpoints_between(self.db, low, high if more else 2**62)
        page = AuditPage(
            entries=tuple(entries),
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

    # ------------------------------------------------------------------ authentication

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
        if type(opened.body) not in ROUTES:
            raise Refused("invalid", f"{opened.body.wire_type} is not an admin request")
        return opened

    async def _authority(
        self, holder: NodeId, chain: Chain, now: float, /, **detail: Any
    ) -> Authority:
        """The holder's verified authority, or a refusal naming what is wrong with its chain."""
        revoked = await self.revocations.get()
        try:
            return authority_of(holder, chain, self.trust_roots, now, revoked.ids())
        except CapabilityError as exc:
            detail.setdefault("signer", str(holder))
            raise Refused(
                "unauthorized", f"{exc.code}: {exc}", capability=exc.code, **detail
            ) from None

    async def _use_nonce(self, tx: Transaction, opened: OpenedRequest) -> None:
        """Record the request's nonce (a nonce seen before means a replayed request), and
        the certificates of its chain (verified by then, or the request is refused)."""
        await self._spend_nonce(tx, opened)
        await trust.remember_chain(tx, opened.chain, self.clock())

    async def _spend_nonce(self, tx: Transaction, opened: OpenedRequest) -> None:
        """Spend the nonce; Repeated if this very request was answered before (the caller's
        transaction is rolled back: nothing is done twice), Refused if it is a replay."""
        digest = nonces.request_digest(encode(opened.envelope))
        seen = await nonces.spend(
            tx, opened.nonce, opened.signer, opened.issued_at, self.clock(), digest
        )
        if seen is None:
            return
        if seen.reply is not None:
            raise Repeated(decode(seen.reply))  # kept by this coordinator: it decodes
        raise Refused("replay", "this request was already received (replayed nonce)")

    # ------------------------------------------------------------------ refusals

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
            if spend and opened is not None:
                with contextlib.suppress(Refused, Repeated):
                    await self._spend_nonce(tx, opened)
                    reply = ErrorReply(code=refusal.code, message=str(refusal))
                    await nonces.keep_reply(tx, opened.nonce, encode(reply))
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

    async def _accepted(
        self,
        tx: Transaction,
        request: Request[Any],
        detail: dict[str, Any],
        reply: Message = OK,
    ) -> None:
        """The accepted request's audit row and its reply (kept with its nonce, for a repeat
        of the request), in the transaction that carries it out."""
        await audit.append(
            tx,
            time=request.now,
            actor=str(request.actor),
            action=ROUTES[type(request.body)].action.name,
            outcome=Outcome.ACCEPTED,
            detail=detail,
            request=request.raw,
        )
        await nonces.keep_reply(tx, request.opened.nonce, encode(reply))

    # ------------------------------------------------------------------ reads

    async def _next_sequence(self, request: Request[NextSequence]) -> AdminResult:
        return AdminResult(
            NextSequenceReply(sequence=await announcements.max_sequence(self.db) + 1)
        )

    async def _device_list(self, request: Request[DeviceList]) -> AdminResult:
        authority = request.authority
        devices = await registry.all_devices(self.db)
        if Permission.READ not in authority.actions:
            require(authority, Permission.PUSH, signer=str(request.opened.signer))
            devices = [d for d in devices if authority.scope.contains(d.node_id, d.tags)]
        return AdminResult(DeviceListReply(devices=tuple(self.status.info(d) for d in devices)))

    async def _status(self, request: Request[StatusRequest]) -> AdminResult:
        watcher = None
        if request.body.watch:
            # Subscribe before reading the snapshot: an update racing with it arrives
            # after the snapshot and repeats a full row, which is harmless.
            watcher = self.status.watch()
        return AdminResult(StatusSnapshot(devices=await self.status.snapshot()), watcher=watcher)

    async def _status_query(self, request: Request[StatusQuery]) -> AdminResult:
        body = request.body
        if body.limit < 0:
            raise Refused("invalid", "a status page limit is not negative")
        try:  # `kiosk` and `tag:kiosk` alike
            body = dataclasses.replace(body, tags=normalize_tags(body.tags))
        except InvalidLabel as exc:
            raise Refused("invalid", str(exc)) from None
        return AdminResult(await self.status.page(body))

    async def _push_lookup(self, request: Request[PushLookup]) -> AdminResult:
        """Whether a push was accepted: for readers, and for the key that signed it."""
        record = await announcements.accepted(self.db, request.body.sequence)
        if Permission.READ not in request.authority.actions:
            require(request.authority, Permission.PUSH, signer=str(request.opened.signer))
            if record is not None and record.signer != request.opened.signer:
                raise Refused(
                    "unauthorized",
                    f"push {request.body.sequence} was signed by another key; looking it up "
                    "needs the read permission",
                )
        highest = await announcements.max_sequence(self.db)
        return AdminResult(
            PushLookupReply(sequence=request.body.sequence, accepted=record, highest=highest)
        )

    async def _certificate_lookup(self, request: Request[CertificateLookup]) -> AdminResult:
        chain = await trust.chain_of(self.db, request.body.certificate)
        if chain is None:
            raise Refused(
                "not-found",
                f"certificate {format_id(request.body.certificate)} has not been seen by "
                "this coordinator (pass its chain file with --chain)",
            )
        return AdminResult(CertificateChain(chain=chain))

    async def _audit_read(self, request: Request[AuditQuery]) -> AdminResult:
        return AdminResult(await self.audit_page(request.body))

    async def _target_check(self, request: Request[TargetCheck]) -> AdminResult:
        """Which targets name devices that exist, all of them outside the requester's scope.

        Only exact names, full node ids and tags are answered, at most MAX_TARGET_CHECK per
        request: a push key learns no more than that a name it already knows is out of reach.
        """
        body, authority = request.body, request.authority
        if len(body.targets) > MAX_TARGET_CHECK:
            raise Refused("invalid", f"at most {MAX_TARGET_CHECK} targets per check")
        devices = await registry.all_devices(self.db)
        outside = []
        for target in body.targets:
            named = [d for d in devices if names_device(target.strip(), d)]
            if named and not any(authority.scope.contains(d.node_id, d.tags) for d in named):
                outside.append(target)
        return AdminResult(
            TargetCheckReply(outside=tuple(outside), scope=authority.scope.describe())
        )

    async def _audit_witnesses(self, request: Request[AuditWitnesses]) -> AdminResult:
        return AdminResult(AuditWitnessesReply(witnesses=tuple(await witnesses.listed(self.db))))

    # ------------------------------------------------------------------ changes

    async def _push(self, request: Request[PushRequest | PushRequestV1]) -> AdminResult:
        body, now = request.body, request.now
        try:
            push = open_push(body)
        except WireError as exc:
            raise Refused("invalid", f"announcement refused: {exc}") from None
        except BadPush as exc:
            raise Refused("invalid", f"push refused: {exc}") from None
        signer, ann, detail = push.signer, push.announcement, push.detail()
        signer_authority = await self._authority(signer, ann.chain, now, **detail)
        require(signer_authority, Permission.PUSH, **detail)
        try:
            check_store_path(ann.store_path)
        except InvalidStorePath as exc:
            raise Refused("invalid", str(exc), **detail) from None
        if ann.valid_until <= now:
            raise Refused("expired", "the announcement's valid_until has passed", **detail)
        if ann.issued_at > now + MAX_CLOCK_SKEW:
            raise Refused("invalid", "the announcement is issued in the future", **detail)
        async with self.db.transaction() as tx:
            await self._use_nonce(tx, request.opened)
            highest = await announcements.max_sequence(tx)
            if ann.sequence <= highest:
                raise Refused(
                    "conflict",
                    f"sequence {ann.sequence} is not above the highest stored ({highest}); "
                    "ask NextSequence again",
                    highest=highest,
                    **detail,
                )
            known = await registry.approval_of(tx, push.explicit)
            for device in push.explicit:
                if known.get(device) is not True:
                    state = "pending approval" if device in known else "not registered"
                    raise Refused("not-found", f"target device {device} is {state}", **detail)
            targeted = await self._push_targets(tx, push, **detail)
            for device, tags in targeted.items():
                # Both the request's signer and the announcement's: usually the same key.
                require(signer_authority, Permission.PUSH, device, tags, **detail)
                require(request.authority, Permission.PUSH, device, tags, **detail)
            await trust.remember_chain(tx, ann.chain, now)
            stored = await announcements.insert(
                tx,
                signer,
                push.envelope,
                ann,
                now,
                devices=tuple(targeted),
                targets=push.targets,
                proofs=push.proofs,
                legacy=push.legacy,
            )
            reply = PushAccepted(sequence=stored.sequence, devices=stored.devices)
            await self._accepted(tx, request, {**detail, "resolved": len(targeted)}, reply)
        log.info(
            "push_accepted",
            sequence=stored.sequence,
            devices=len(stored.devices),
            store_path=stored.store_path,
            actor=request.actor.short(),
        )
        return AdminResult(reply, delivery=stored)

    async def _push_targets(
        self, tx: Transaction, push: OpenedPush, **detail: Any
    ) -> dict[NodeId, tuple[str, ...]]:
        """Every device the push targets (its explicit ids, then the approved devices whose
        registry tags meet its selector) -> its registry tags, for the scope checks."""
        targeted: dict[NodeId, tuple[str, ...]] = {}
        for device in push.explicit:
            record = await registry.get(tx, device)
            targeted[device] = record.tags if record is not None else ()
        if push.selector:
            for record in await registry.all_devices(tx):
                if record.approved and push.selected(record.node_id, record.tags):
                    targeted.setdefault(record.node_id, record.tags)
        if not targeted:
            tags = ", ".join(push.selector)
            raise Refused("not-found", f"no approved device has a tag of {tags}", **detail)
        return targeted

    async def _change_device(
        self, request: Request[DeviceAdd | DeviceApprove | DeviceRemove]
    ) -> AdminResult:
        body = request.body
        action = ROUTES[type(body)].action.name
        if isinstance(body, DeviceAdd):
            try:  # `kiosk` and `tag:kiosk` alike, before the scope sees them
                body = dataclasses.replace(body, tags=normalize_tags(body.tags))
            except InvalidLabel as exc:
                raise Refused("invalid", str(exc)) from None
        try:
            async with self.db.transaction() as tx:
                await self._device_in_scope(tx, request.authority, body)
                await self._use_nonce(tx, request.opened)
                if isinstance(body, DeviceAdd):
                    record = await registry.add(tx, body.node_id, body.name, body.tags, request.now)
                elif isinstance(body, DeviceApprove):
                    record = await registry.approve(tx, body.node_id)
                else:
                    record = await registry.remove(tx, body.name)
                await self._accepted(
                    tx,
                    request,
                    {
                        "node_id": str(record.node_id),
                        "name": record.name,
                        "tags": list(record.tags),
                    },
                )
        except RegistryError as exc:
            raise Refused(exc.code, str(exc)) from None
        log.info("device_changed", action=action, device=record.node_id.short(), name=record.name)
        if isinstance(body, DeviceRemove):
            self.delivery.drop_device(record.node_id, "device removed from the registry")
        else:
            await self.delivery.approved(record)
        await self.status.publish([record.node_id])
        return AdminResult(OK)

    async def _add_batch(self, request: Request[DeviceAddBatch]) -> AdminResult:
        """Many devices in one transaction: every entry checked first, then all stored, or
        none (the refusal names the 1-based `entry N`, which fleetctl tells as a line)."""
        body, authority = request.body, request.authority
        if not body.devices:
            raise Refused("invalid", "a batch holds at least one device")
        entries: list[tuple[NodeId, str, tuple[str, ...]]] = []
        ids: set[NodeId] = set()
        names: set[str] = set()
        for index, entry in enumerate(body.devices, start=1):
            try:
                name = check_label(entry.name, "device name")
                tags = normalize_tags(entry.tags)
            except InvalidLabel as exc:
                raise Refused("invalid", f"entry {index}: {exc}") from None
            if entry.node_id in ids or name in names:
                raise Refused("invalid", f"entry {index}: its id or name is in the batch twice")
            ids.add(entry.node_id)
            names.add(name)
            self._entry_in_scope(authority, index, entry.node_id, tags)
            entries.append((entry.node_id, name, tags))
        async with self.db.transaction() as tx:
            await self._use_nonce(tx, request.opened)
            by_name, by_id = await registry.names_and_ids(tx)
            added, skipped = [], []
            for index, (node, name, tags) in enumerate(entries, start=1):
                if node in by_id:
                    if body.skip_existing:
                        skipped.append(node)
                        continue
                    raise Refused(
                        "conflict",
                        f"entry {index}: device {node.short()} is already registered"
                        + (f" as {by_id[node]!r}" if by_id[node] else "")
                        + " (skip the devices already registered with --skip-existing)",
                    )
                holder = by_name.get(name)
                if holder is not None:
                    raise Refused(
                        "conflict", f"entry {index}: the name {name!r} is taken by {holder.short()}"
                    )
                added.append((node, name, tags))
            await registry.add_many(tx, added, request.now)
            await self._accepted(
                tx,
                request,
                {
                    "added": len(added),
                    "skipped": len(skipped),
                    "request_sha256": hashlib.sha256(request.raw).hexdigest(),
                    "tags": sorted({t for _, _, tags in added for t in tags}),
                },
            )
        log.info(
            "devices_added", added=len(added), skipped=len(skipped), actor=request.actor.short()
        )
        for node, _, _ in added:
            if node in self.delivery.sessions:  # connected and pending: welcome it now
                record = await registry.get(self.db, node)
                if record is not None:
                    await self.delivery.approved(record)
        await self.status.publish([node for node, _, _ in added])
        return AdminResult(DeviceBatchAdded(added=len(added), skipped=tuple(skipped)))

    def _entry_in_scope(
        self, authority: Authority, index: int, node: NodeId, tags: tuple[str, ...]
    ) -> None:
        """As `_device_in_scope` for a new device, naming the batch entry."""
        try:
            authority.require(Permission.DEVICES, node, tags)
            if not authority.scope.contains(node):  # in scope only by its tags
                authority.require_tags(tags)
        except CapabilityError as exc:
            raise Refused(
                "unauthorized", f"entry {index}: {exc.code}: {exc}", capability=exc.code
            ) from None

    async def _device_in_scope(
        self, tx: Transaction, authority: Authority, body: DeviceAdd | DeviceApprove | DeviceRemove
    ) -> None:
        """A device change needs the device (as it is, and as it will be) inside the scope."""
        if isinstance(body, DeviceRemove):
            existing = await registry.get_by_name(tx, body.name)
            if existing is None:
                return  # the registry refuses it as not-found
        else:
            existing = await registry.get(tx, body.node_id)
        if existing is not None:
            require(authority, Permission.DEVICES, existing.node_id, existing.tags)
        if isinstance(body, DeviceAdd):
            require(authority, Permission.DEVICES, body.node_id, body.tags)
            if not authority.scope.contains(body.node_id):  # in scope only by its tags
                try:
                    authority.require_tags(body.tags)
                except CapabilityError as exc:
                    raise Refused(
                        "unauthorized", f"{exc.code}: {exc}", capability=exc.code
                    ) from None
        elif existing is None and isinstance(body, DeviceApprove):
            require(authority, Permission.DEVICES, body.node_id)

    async def _revoke_enroll_token(self, request: Request[EnrollTokenRevoke]) -> AdminResult:
        """Any `devices` holder may stop a token: its id is known only to who saw the token,
        and stopping one enrolls nobody."""
        token_id = request.body.token_id
        if len(token_id) != TOKEN_ID_LEN:
            raise Refused("invalid", f"a token id is {TOKEN_ID_LEN} bytes")
        async with self.db.transaction() as tx:
            await self._use_nonce(tx, request.opened)
            new = await enroll_tokens.revoke(tx, token_id, request.now)
            await self._accepted(tx, request, {"token": token_id.hex(), "new": new})
        log.info("enroll_token_revoked", token=token_id.hex()[:12], new=new)
        return AdminResult(OkReply())

    async def _grant(self, request: Request[GrantRecord]) -> AdminResult:
        """Record a certificate the signer issued: it must verify and be issued by the signer."""
        chain, now = request.body.chain, request.now
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
        if cert.issuer != request.opened.signer:
            raise Refused(
                "unauthorized",
                f"the certificate was issued by {cert.issuer.short()}, not by the requester",
                **detail,
            )
        async with self.db.transaction() as tx:
            await self._use_nonce(tx, request.opened)
            await trust.remember_chain(tx, chain, now)
            await self._accepted(tx, request, detail)
        log.info("grant_recorded", certificate=format_id(issued), subject=cert.subject.short())
        return AdminResult(OK)

    async def _revoke(self, request: Request[RevokeRequest]) -> AdminResult:
        body, now = request.body, request.now
        revoked = await self.revocations.get()
        try:
            statement = verify_revocation(body.revocation, self.trust_roots, now)
        except CapabilityError as exc:
            raise Refused("unauthorized", f"{exc.code}: {exc}", capability=exc.code) from None
        detail = {"certificate": format_id(statement.certificate), "reason": statement.reason}
        async with self.db.transaction() as tx:
            await self._use_nonce(tx, request.opened)
            new = await trust.store_revocation(
                tx, body.revocation, statement.certificate, str(request.opened.signer), now
            )
            await self._accepted(tx, request, {**detail, "new": new})
        revoked.add(body.revocation, self.trust_roots, now)
        log.info("certificate_revoked", certificate=detail["certificate"], new=new)
        if new:
            self.delivery.hand_out_revocation(body.revocation)
        return AdminResult(OK)


def _route(
    kind: type[B], handle: Callable[[AdminDesk, Request[B]], Awaitable[AdminResult]]
) -> tuple[type[Message], AdminRoute]:
    return kind, AdminRoute(ADMIN_ACTIONS[kind], handle)


# The one table: request type -> action (name, permission, read-only) and handler.
ROUTES: dict[type[Message], AdminRoute] = dict(
    [
        _route(NextSequence, AdminDesk._next_sequence),
        _route(PushRequest, AdminDesk._push),
        _route(PushRequestV1, AdminDesk._push),
        _route(DeviceAdd, AdminDesk._change_device),
        _route(DeviceAddBatch, AdminDesk._add_batch),
        _route(DeviceApprove, AdminDesk._change_device),
        _route(DeviceRemove, AdminDesk._change_device),
        _route(EnrollTokenRevoke, AdminDesk._revoke_enroll_token),
        _route(DeviceList, AdminDesk._device_list),
        _route(StatusRequest, AdminDesk._status),
        _route(GrantRecord, AdminDesk._grant),
        _route(RevokeRequest, AdminDesk._revoke),
        _route(CertificateLookup, AdminDesk._certificate_lookup),
        _route(AuditQuery, AdminDesk._audit_read),
        _route(TargetCheck, AdminDesk._target_check),
        _route(AuditWitnesses, AdminDesk._audit_witnesses),
        _route(StatusQuery, AdminDesk._status_query),
        _route(PushLookup, AdminDesk._push_lookup),
    ]
)
if ROUTES.keys() != ADMIN_ACTIONS.keys():  # every admin request has its handler, and no more
    raise RuntimeError("fleet.coordinator.admin.ROUTES does not match ADMIN_ACTIONS")


def require(
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
        raise Refused("unauthorized", f"{exc.code}: {exc}", capability=exc.code, **detail) from None


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
