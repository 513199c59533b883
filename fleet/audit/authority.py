"""Checking, offline, that each accepted audit entry's actor had the authority it used.

Entries are replayed in order: every accepted request's chain must lead from a trust root,
be valid at the entry's time, not rely on a certificate revoked by an earlier accepted
revocation, and grant the action the entry records (a push's announcement is checked the
same way), with the coordinator's own table of what each action needs
(fleet.protocol.permissions). Scope needs each device's tags at that time, which the log
does not hold, so it is not re-checked here; the coordinator and, above all, the agents do.
"""

from __future__ import annotations

from collections.abc import Collection

from fleet.audit.record import AuditEntry
from fleet.capability import (
    CapabilityError,
    Permission,
    RevocationList,
    authority_of,
)
from fleet.identity import NodeId
from fleet.protocol.messages import (
    AdminRequest,
    EnrollToken,
    PushRequest,
    PushRequestV1,
    RevokeRequest,
)
from fleet.protocol.permissions import AUDITED_ACTIONS
from fleet.protocol.targeting import as_announcement
from fleet.wire import Tag, WireError, decode, verify_envelope


class AuthorityReplay:
    """An `Authorize` hook for fleet.audit.verify_log; keeps the revocations seen so far."""

    def __init__(self, trust_roots: Collection[NodeId]) -> None:
        self.trust_roots = frozenset(trust_roots)
        self.revoked = RevocationList()

    def __call__(self, entry: AuditEntry, signer: NodeId, request: AdminRequest) -> str | None:
        action = AUDITED_ACTIONS.get(entry.action)
        if action is None:
            return f"unknown action {entry.action[:40]!r}"
        try:
            body = decode(request.body)
            authority = authority_of(
                signer, request.chain, self.trust_roots, entry.time, self.revoked.ids()
            )
            if action.needs is not None:
                authority.require(action.needs)
            if isinstance(body, PushRequest | PushRequestV1):
                ann_signer, message = verify_envelope(body.announcement, Tag.ANNOUNCEMENT)
                ann = as_announcement(message)
                authority_of(
                    ann_signer, ann.chain, self.trust_roots, entry.time, self.revoked.ids()
                ).require(Permission.PUSH)
            if isinstance(body, EnrollToken):  # its device is in scope by these tags only
                authority.require_tags(body.tags)
            if isinstance(body, RevokeRequest):
                self.revoked.add(body.revocation, self.trust_roots, entry.time)
        except CapabilityError as exc:
            return f"{exc.code}: {exc}"
        except (WireError, ValueError, TypeError) as exc:
            return f"request body: {exc}"
        return None
