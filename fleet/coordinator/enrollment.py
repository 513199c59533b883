"""Enrollment tokens at the coordinator: an unknown device that says Hello with a token is
registered and approved with the token's tags, or the token is refused.

The token is checked as an admin request would be: its signature (Tag.ENROLL_TOKEN), that
it names this coordinator and has not expired, and its signer's chain against the trust
roots and the known revocations at the moment of use; the signer needs what `fleetctl
devices add` needs for a device in scope only by its tags (the `devices` action and every
tag in scope). Uses are counted in one transaction with the registration and its audit
entry, whose actor is the token's signer and whose request is the token itself, so `fleetctl
audit verify` replays its authority like any other. A refusal is audited under the device's
key through the same rate limits as refused admin requests (fleet.coordinator.refusals):
whatever an attacker sends, the log grows by a bounded number of entries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from fleet.capability import CapabilityError, Permission, authority_of
from fleet.coordinator import audit, enroll_tokens, registry, trust
from fleet.coordinator.audit import Outcome
from fleet.coordinator.database import Database
from fleet.coordinator.refusals import RefusalLimiter, RequestFacts, bounded_detail
from fleet.coordinator.trust import KnownRevocations
from fleet.identity import NodeId
from fleet.log import get_logger
from fleet.protocol.enroll_token import EnrollTokenError, OpenedToken, open_enroll_token
from fleet.protocol.messages import AnyHello, Hello
from fleet.protocol.permissions import ENROLL_ACTION
from fleet.wire import encode

log = get_logger(__name__)


class Enrollment:
    """Registers devices that present a valid enrollment token in their Hello."""

    def __init__(
        self,
        db: Database,
        node_id: NodeId,
        trust_roots: Iterable[NodeId],
        revocations: KnownRevocations,
        refusals: RefusalLimiter,
        *,
        clock: Callable[[], float],
    ) -> None:
        self.db = db
        self.node_id = node_id
        self.trust_roots = frozenset(trust_roots)
        self.revocations = revocations
        self.refusals = refusals
        self.clock = clock

    async def hello(self, node: NodeId, hello: AnyHello) -> bool:
        """Enroll `node` if its Hello carries a token and it is not registered; whether it
        was enrolled now. A registered device's token is ignored (and not spent)."""
        if not isinstance(hello, Hello) or hello.enroll_token is None:
            return False
        known = await registry.get(self.db, node)
        if known is not None and known.approved:
            return False
        raw = encode(hello.enroll_token)
        now = self.clock()
        opened: OpenedToken | None = None
        try:
            opened = open_enroll_token(hello.enroll_token, self.node_id, now)
            await self._enroll(node, opened, raw, now)
        except EnrollTokenError as exc:
            await self._refused(node, exc.code, str(exc), opened, raw, now)
            return False
        return True

    async def _enroll(self, node: NodeId, opened: OpenedToken, raw: bytes, now: float) -> None:
        token = opened.token
        revoked = await self.revocations.get()
        try:
            authority = authority_of(
                opened.signer, token.chain, self.trust_roots, now, revoked.ids()
            )
            authority.require(Permission.DEVICES)
            authority.require_tags(token.tags)
        except CapabilityError as exc:
            raise EnrollTokenError("unauthorized", f"{exc.code}: {exc}") from None
        name = f"{token.tags[0][:40]}-{str(node)[:10]}"
        async with self.db.transaction() as tx:
            holder = await registry.get_by_name(tx, name)
            if holder is not None:
                raise EnrollTokenError("conflict", f"the name {name!r} is taken")
            if await enroll_tokens.revoked(tx, token.token_id):
                raise EnrollTokenError("revoked", "the enrollment token was revoked")
            use = await enroll_tokens.take_use(
                tx, token.token_id, opened.signer, token.uses, token.expires_at, now
            )
            if use is None:
                raise EnrollTokenError(
                    "used-up", f"the enrollment token enrolled its {token.uses} device(s) already"
                )
            record = await registry.add(tx, node, name, token.tags, now)
            await trust.remember_chain(tx, token.chain, now)
            await audit.append(
                tx,
                time=now,
                actor=str(opened.signer),
                action=ENROLL_ACTION.name,
                outcome=Outcome.ACCEPTED,
                detail={
                    "node_id": str(node),
                    "name": record.name,
                    "tags": list(record.tags),
                    "token": opened.token_hex,
                    "use": use,
                    "uses": token.uses,
                },
                request=raw,
            )
        log.info(
            "device_enrolled",
            device=node.short(),
            name=name,
            signer=opened.signer.short(),
            use=use,
            uses=token.uses,
        )

    async def _refused(
        self,
        node: NodeId,
        code: str,
        reason: str,
        opened: OpenedToken | None,
        raw: bytes,
        now: float,
    ) -> None:
        facts = RequestFacts.of(raw)
        recorded = self.refusals.admit(str(node), facts.size, certified=False, now=now)
        (log.info if recorded else log.debug)(
            "enrollment_refused", device=node.short(), code=code, reason=reason[:300]
        )
        if not recorded:
            return  # counted into the next suppression summary
        detail = bounded_detail({"code": code, "reason": reason})
        detail.update(facts.detail())
        if opened is not None:
            detail.update(token=opened.token_hex, signer=str(opened.signer))
        async with self.db.transaction() as tx:
            await audit.append(
                tx,
                time=now,
                actor=str(node),
                action=ENROLL_ACTION.name,
                outcome=Outcome.REFUSED,
                detail=detail,
                request=b"",
            )
