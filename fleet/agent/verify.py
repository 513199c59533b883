"""Checks an announcement must pass before the agent does anything with it.

The coordinator is not trusted with what devices run: it only forwards what an admin signed.
So the agent checks, in this order, and refuses at the first failure (nothing else happens):
1. the envelope is signed for Tag.ANNOUNCEMENT and the signature verifies;
2. the signer's capability chain (inside the signed announcement) leads from one of the
   agent's own trust roots, is valid now, is not revoked (revocations the agent verified
   itself) and grants `push` (fleet.capability);
3. the announcement targets this device: one of its selector's tags is among the tags the
   agent is configured with (never tags from the coordinator), or the proof delivered with
   it shows this node id under the signed root of explicit ids (fleet.protocol.targeting;
   a v2 announcement lists the id itself); and the device, with those tags, is inside the
   chain's scope;
4. the sequence is higher than anything applied or in progress (no replay, no downgrade);
5. it has not expired (`valid_until` >= now);
6. the store path is a well-formed top-level store path.
The exact announcement already in progress (same sequence, same signed bytes) is a
duplicate delivery, not an attack: the coordinator resends the latest one on reconnect.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection, Iterable, Set
from dataclasses import dataclass

from fleet.capability import CapabilityError, NotSubject, Permission, UnknownRoot, authority_of
from fleet.identity import NodeId
from fleet.protocol.messages import AnyAnnouncement, TargetProof
from fleet.protocol.targeting import as_announcement, targets_device, why_not_targeted
from fleet.vocabulary import InvalidStorePath, check_store_path
from fleet.wire import SignedEnvelope, Tag, WireError, verify_envelope


class AnnouncementRefused(Exception):
    """An announcement the agent will not act on. `reason` goes upstream verbatim."""

    def __init__(self, sequence: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.sequence = sequence  # 0 when it could not even be read
        # bad-signature, not-admin (no authority from a trust root), a capability refusal
        # (revoked, expired-certificate, scope, action, widened, broken-link, not-delegable),
        # not-for-us, replay, expired, bad-path
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Accepted:
    announcement: AnyAnnouncement
    envelope: SignedEnvelope
    duplicate: bool  # the very announcement already accepted: nothing new to do


def _capability_code(exc: CapabilityError) -> str:
    if isinstance(exc, UnknownRoot | NotSubject):
        return "not-admin"
    return "expired-certificate" if exc.code == "expired" else exc.code


def verify_announcement(
    envelope: SignedEnvelope,
    *,
    trust_roots: Collection[NodeId],
    device: NodeId,
    floor: int,
    current: SignedEnvelope | None,
    now: float,
    tags: Iterable[str] = (),
    revoked: Set[bytes] = frozenset(),
    proof: TargetProof | None = None,
) -> Accepted:
    """Accept or raise AnnouncementRefused.

    `floor` is the highest sequence applied or in progress; `current` is the envelope of
    the announcement in progress (or last finished), used to recognise a duplicate delivery;
    `proof` is what came with it in Deliver v2 (None: Deliver v1, or targeted by selector).
    """
    tags = tuple(tags)
    try:
        signer, message = verify_envelope(envelope, Tag.ANNOUNCEMENT)
        announcement = as_announcement(message)
    except WireError as exc:
        raise AnnouncementRefused(0, "bad-signature", f"announcement refused: {exc}") from None
    except (ValueError, TypeError) as exc:  # __post_init__ checks of a signed but bad message
        raise AnnouncementRefused(0, "invalid", f"announcement refused: {exc}") from None
    seq = announcement.sequence
    try:
        authority = authority_of(signer, announcement.chain, trust_roots, now, revoked)
        authority.require(Permission.PUSH)
    except CapabilityError as exc:
        raise AnnouncementRefused(
            seq, _capability_code(exc), f"announcement {seq} is signed by {signer}: {exc}"
        ) from None
    if not targets_device(announcement, device, tags, proof):
        raise AnnouncementRefused(
            seq,
            "not-for-us",
            f"announcement {seq} does not target this device ({device.short()}): "
            + why_not_targeted(announcement, tags),
        )
    try:
        authority.require(Permission.PUSH, device, tags)
    except CapabilityError as exc:
        raise AnnouncementRefused(
            seq, _capability_code(exc), f"announcement {seq} is signed by {signer}: {exc}"
        ) from None
    if seq <= floor:
        if (
            seq == floor
            and current is not None
            and hmac.compare_digest(current.payload, envelope.payload)
        ):
            return Accepted(announcement, envelope, duplicate=True)
        raise AnnouncementRefused(
            seq,
            "replay",
            f"announcement {seq} is not newer than {floor}, the last one applied or in "
            "progress (replayed or older announcement)",
        )
    if announcement.valid_until < now:
        raise AnnouncementRefused(
            seq,
            "expired",
            f"announcement {seq} expired {now - announcement.valid_until:.0f} s ago",
        )
    try:
        check_store_path(announcement.store_path)
    except InvalidStorePath as exc:
        raise AnnouncementRefused(seq, "bad-path", f"announcement {seq}: {exc}") from None
    return Accepted(announcement, envelope, duplicate=False)
