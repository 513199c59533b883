"""Which admin request is which action, and the capability it needs: the one table.

The coordinator authorizes requests with it (fleet.coordinator.admin adds a handler per
entry) and the offline audit verifier (fleet.audit.authority) replays accepted entries with
it, so the two cannot drift apart. Read-only requests are not administrative actions: the
coordinator keeps only their nonce, never an audit entry, so none can appear accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.capability import Permission
from fleet.protocol.messages import (
    AuditQuery,
    AuditWitnesses,
    CertificateLookup,
    DeviceAdd,
    DeviceAddBatch,
    DeviceApprove,
    DeviceList,
    DeviceRemove,
    EnrollTokenRevoke,
    GrantRecord,
    NextSequence,
    PushLookup,
    PushRequest,
    PushRequestV1,
    RevokeRequest,
    StatusQuery,
    StatusRequest,
    TargetCheck,
)
from fleet.wire import Message


@dataclass(frozen=True)
class AdminAction:
    """An admin request type as authority sees it."""

    name: str  # the audit entry's action
    # The capability the request needs before anything else; None: checked by its handler
    # (a revocation carries its own proof; a device list needs read, or push for its scope).
    needs: Permission | None
    read_only: bool  # only its nonce is kept, no audit entry


_PUSH = AdminAction("push", Permission.PUSH, read_only=False)

# Versions of one request share their action (PushRequestV1: fleetctl before version 3).
ADMIN_ACTIONS: dict[type[Message], AdminAction] = {
    NextSequence: AdminAction("next-sequence", Permission.PUSH, read_only=True),
    PushRequest: _PUSH,
    PushRequestV1: _PUSH,
    DeviceAdd: AdminAction("device-add", Permission.DEVICES, read_only=False),
    DeviceAddBatch: AdminAction("device-add-batch", Permission.DEVICES, read_only=False),
    DeviceApprove: AdminAction("device-approve", Permission.DEVICES, read_only=False),
    DeviceRemove: AdminAction("device-remove", Permission.DEVICES, read_only=False),
    EnrollTokenRevoke: AdminAction("enroll-token-revoke", Permission.DEVICES, read_only=False),
    DeviceList: AdminAction("device-list", None, read_only=True),
    StatusRequest: AdminAction("status", Permission.READ, read_only=True),
    GrantRecord: AdminAction("grant", Permission.GRANT, read_only=False),
    RevokeRequest: AdminAction("revoke", None, read_only=False),
    CertificateLookup: AdminAction("certificate-lookup", Permission.GRANT, read_only=True),
    AuditQuery: AdminAction("audit-read", Permission.AUDIT, read_only=True),
    TargetCheck: AdminAction("target-check", Permission.PUSH, read_only=True),
    AuditWitnesses: AdminAction("audit-witnesses", Permission.AUDIT, read_only=True),
    StatusQuery: AdminAction("status-query", Permission.READ, read_only=True),
    # read, or push for a push the requester signed itself
    PushLookup: AdminAction("push-lookup", None, read_only=True),
}

# A device enrolled with an enrollment token: not an admin request but the admin's signed
# token (Tag.ENROLL_TOKEN) used by a device; it needs what adding the device directly needs,
# so a token delegates nothing its signer could not do with `fleetctl devices add`.
ENROLL_ACTION = AdminAction("enroll", Permission.DEVICES, read_only=False)

# The actions an accepted audit entry can record, by name.
AUDITED_ACTIONS: dict[str, AdminAction] = {
    action.name: action
    for action in (*ADMIN_ACTIONS.values(), ENROLL_ACTION)
    if not action.read_only
}
