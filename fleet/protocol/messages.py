"""Messages of the fleet protocol. Each is a versioned wire schema (see fleet.wire.schema).

Agent connection (ALPN fleet/agent/1): the agent opens one bidirectional "control" stream
and sends Hello; the coordinator answers Welcome and then, whenever there is something for
this device, Deliver (an admin-signed announcement, forwarded verbatim). The agent sends
StatusReport whenever its state changes and AnnouncementRejected for announcements it refuses.
The coordinator also accepts the version-1 to -3 Hello and AnnouncementRejected v1 of older
agents. To agents that said Hello v3 or v4 the coordinator also sends AuditCheckpoint (after
Welcome and after each new checkpoint); they answer with WitnessReport. Agents that said
Hello v4 get Deliver v2 (an Announcement v3 and this device's target proof); older agents
get Deliver v1 with the push's Announcement v2, when the push has one. Hello v4 may carry an
EnrollToken, with which an unknown device is registered and approved on that Hello.

Admin connection (ALPN fleet/admin/1): one bidirectional stream per request. The client sends
one SignedEnvelope (Tag.ADMIN_REQUEST) around an AdminRequest whose `body` is the encoded
request message; the coordinator answers with one reply message (or ErrorReply), and for a
watch keeps sending StatusUpdate messages on the same stream. Requests are signed so that
the audit log can keep the actor's own signed words.

Announcements are signed by an admin (Tag.ANNOUNCEMENT) over every field that matters to a
device, including its sequence and the signer's capability chain; the coordinator cannot
alter or renumber them, and agents check the chain against their own trust roots. Admin
requests carry the signer's chain too, inside the signature, so the audit log keeps it.
The coordinator sends agents the revocations it knows (Revocations) before any Deliver.
"""

from __future__ import annotations

import enum
import json
from typing import Any

from fleet.capability import EMPTY_CHAIN, Chain, SignedRevocation
from fleet.identity import NodeId
from fleet.identity.labels import normalize_tags
from fleet.vocabulary import Action
from fleet.wire import Message, SignedEnvelope
from fleet.wire.merkle import DIGEST_LEN, MAX_LEAVES

__all__ = [
    "Action",
    "AdminRequest",
    "AgentState",
    "Announcement",
    "AnnouncementRejected",
    "AnnouncementRejectedV1",
    "AnnouncementV2",
    "AnyAnnouncement",
    "AnyHello",
    "AuditCheckpoint",
    "AuditEntry",
    "AuditPage",
    "AuditQuery",
    "AuditWitnesses",
    "AuditWitnessesReply",
    "CertificateChain",
    "CertificateLookup",
    "Deliver",
    "DeliverV1",
    "DesiredSystem",
    "DeviceAdd",
    "DeviceAddBatch",
    "DeviceApprove",
    "DeviceBatchAdded",
    "DeviceEntry",
    "DeviceInfo",
    "DeviceList",
    "DeviceListReply",
    "DeviceRemove",
    "DeviceStatus",
    "EnrollToken",
    "EnrollTokenRevoke",
    "ErrorReply",
    "GrantRecord",
    "Hello",
    "HelloV1",
    "HelloV2",
    "HelloV3",
    "NextSequence",
    "NextSequenceReply",
    "OkReply",
    "Progress",
    "PushAccepted",
    "PushLookup",
    "PushLookupReply",
    "PushRecord",
    "PushRequest",
    "PushRequestV1",
    "Rejection",
    "Revocations",
    "RevokeRequest",
    "StatusPage",
    "StatusQuery",
    "StatusReport",
    "StatusRequest",
    "StatusSnapshot",
    "StatusSummary",
    "StatusUpdate",
    "SystemState",
    "TargetCheck",
    "TargetCheckReply",
    "TargetProof",
    "Welcome",
    "Witness",
    "WitnessReport",
    "WitnessingHello",
]


class AgentState(enum.StrEnum):
    """The agent's update procedure; see fleet.agent for the legal transitions."""

    IDLE = "idle"
    DOWNLOADING = "downloading"
    ACTIVATING = "activating"
    CHECKING = "checking"
    APPLIED = "applied"
    ROLLED_BACK = "rolled-back"
    FAILED = "failed"


# ---------------------------------------------------------------- announcements


class Announcement(Message, type="fleet.announcement", version=3):
    """What an admin signs: these devices should run that system, fetched from there.

    Version 3 names its targets in a size that does not grow with the fleet: `selector`
    (tags; a device whose own tags include one is targeted) and/or a Merkle root over the
    explicit device ids (fleet.wire.merkle, `devices_count` leaves), each device receiving its
    inclusion proof in Deliver v2. What the admin typed travels in PushRequest (audited).
    """

    sequence: int  # strictly increasing per coordinator; agents refuse anything not higher
    selector: tuple[str, ...]  # tags, sorted; empty: no device is targeted by its tags
    devices_root: bytes  # Merkle root over the sorted explicit ids (b"": none)
    devices_count: int  # leaves under devices_root (0: none)
    store_path: str
    substituters: tuple[str, ...]  # hints only: agents fetch from their own configured caches
    action: Action
    issued_at: float  # unix seconds
    valid_until: float  # unix seconds; agents refuse it afterwards
    chain: Chain = EMPTY_CHAIN  # the signer's authority, root first (empty: a trust root)

    def __post_init__(self) -> None:
        if self.sequence < 1:
            raise ValueError("sequence must be positive")
        if not self.selector and self.devices_count == 0:
            raise ValueError("an announcement targets at least one device or tag")
        if (self.devices_count == 0) != (self.devices_root == b""):
            raise ValueError("devices_root and devices_count must be both set or both empty")
        if self.devices_root and len(self.devices_root) != DIGEST_LEN:
            raise ValueError(f"devices_root must be {DIGEST_LEN} bytes")
        if not 0 <= self.devices_count <= MAX_LEAVES:
            raise ValueError(f"devices_count must be 0 to {MAX_LEAVES}")
        if self.selector != normalize_tags(self.selector):
            raise ValueError("selector must be sorted, unique tags")
        if self.valid_until <= self.issued_at:
            raise ValueError("valid_until must be after issued_at")


class AnnouncementV2(Message, type="fleet.announcement", version=2):
    """The announcement of fleetctl before version 3 (still accepted and delivered by
    Deliver v1): it lists every target. Version 2 added `chain` to version 1."""

    sequence: int  # strictly increasing per coordinator; agents refuse anything not higher
    devices: tuple[NodeId, ...]  # the targeted devices, resolved from names/tags at push time
    targets: tuple[str, ...]  # what the admin typed (names, ids, tag:NAME), for display
    store_path: str
    substituters: tuple[str, ...]  # hints only: agents fetch from their own configured caches
    action: Action
    issued_at: float  # unix seconds
    valid_until: float  # unix seconds; agents refuse it afterwards
    chain: Chain = EMPTY_CHAIN  # the signer's authority, root first (empty: a trust root)

    def __post_init__(self) -> None:
        if self.sequence < 1:
            raise ValueError("sequence must be positive")
        if not self.devices:
            raise ValueError("an announcement targets at least one device")
        if self.valid_until <= self.issued_at:
            raise ValueError("valid_until must be after issued_at")


AnyAnnouncement = Announcement | AnnouncementV2  # every announcement agents accept


class EnrollToken(Message, type="fleet.enroll-token", version=1):
    """What an admin signs (Tag.ENROLL_TOKEN) so that devices can enroll themselves: any
    device presenting it in its Hello, unknown to this coordinator, is registered and
    approved with these tags, at most `uses` devices, until `expires_at`. A bearer
    credential: whoever holds the file can enroll a device of their own (docs/security.md).
    """

    coordinator: NodeId  # the one coordinator that honours it
    token_id: bytes  # 16 random bytes: its uses are counted under this id
    tags: tuple[str, ...]  # normalized; inside the signer's scope
    issued_at: float
    expires_at: float
    uses: int  # devices it may enroll at most
    chain: Chain = EMPTY_CHAIN  # the signer's authority, root first (empty: a trust root)


# ---------------------------------------------------------------- agent <-> coordinator


class SystemState(Message):
    """What a device runs: the system profile's current target and generation."""

    store_path: str | None
    generation: int | None


class Progress(Message):
    paths_done: int
    paths_total: int
    bytes_done: int
    bytes_total: int


class HelloV1(Message, type="fleet.agent.hello", version=1):
    """Hello of agents before version 2 (still accepted: they reported no tags)."""

    agent_version: str
    current: SystemState
    last_sequence: int
    state: AgentState
    state_since: float


class HelloV2(Message, type="fleet.agent.hello", version=2):
    """Version 2 added `tags`: the agent's own tags, so the admin can see a registry mismatch."""

    agent_version: str
    current: SystemState
    last_sequence: int  # highest announcement sequence this device applied (0 = none)
    state: AgentState
    state_since: float  # 0: never changed state (a fresh device)
    tags: tuple[str, ...]  # the agent's own --tag values, which its scope checks use


class HelloV3(Message, type="fleet.agent.hello", version=3):
    """Version 3 added `checkpoint`: the audit checkpoint this agent witnessed last (see
    AuditCheckpoint); an agent saying v3 (or later) also understands AuditCheckpoint."""

    agent_version: str
    current: SystemState
    last_sequence: int  # highest announcement sequence this device applied (0 = none)
    state: AgentState
    state_since: float  # 0: never changed state (a fresh device)
    tags: tuple[str, ...]  # the agent's own --tag values, which its scope checks use
    checkpoint: SignedEnvelope | None = None  # Tag.AUDIT_CHECKPOINT, kept by the agent


class Hello(Message, type="fleet.agent.hello", version=4):
    """Version 4 added `enroll_token` (an admin-signed EnrollToken, Tag.ENROLL_TOKEN, with
    which a device the coordinator does not know yet is registered and approved); an agent
    saying v4 also understands Deliver v2 and Announcement v3 (targets as a selector and a
    Merkle root, with a proof per device)."""

    agent_version: str
    current: SystemState
    last_sequence: int  # highest announcement sequence this device applied (0 = none)
    state: AgentState
    state_since: float  # 0: never changed state (a fresh device)
    tags: tuple[str, ...]  # the agent's own --tag values, which its scope checks use
    checkpoint: SignedEnvelope | None = None  # Tag.AUDIT_CHECKPOINT, kept by the agent
    enroll_token: SignedEnvelope | None = None  # Tag.ENROLL_TOKEN, from --enroll-token


AnyHello = Hello | HelloV3 | HelloV2 | HelloV1  # every Hello the coordinator accepts
WitnessingHello = Hello | HelloV3  # the Hellos of agents that understand AuditCheckpoint


class Welcome(Message, type="fleet.agent.welcome", version=1):
    approved: bool  # False: the device is pending; it stays connected and gets nothing
    name: str | None


class Busy(Message, type="fleet.agent.busy", version=1):
    """The coordinator's answer to a Hello it will not serve now, instead of a Welcome: the
    agent closes this connection and dials again after `retry_after` seconds (plus jitter).
    Sent while another connection of the same device is being welcomed, or when the queue of
    Hellos is longer than an agent should wait. Older agents take it as a failed session."""

    retry_after: float
    reason: str


class TargetProof(Message, type="fleet.target-proof", version=1):
    """That a device's id is leaf `index` under an announcement's signed devices_root."""

    index: int
    hashes: tuple[bytes, ...]  # siblings from the leaf up (fleet.wire.merkle)


class Deliver(Message, type="fleet.agent.deliver", version=2):
    """Version 2 carries an Announcement v3 and, for a device among its explicit ids, the
    proof of that (None: the device is targeted by the selector). Sent to Hello v4 agents."""

    announcement: SignedEnvelope  # Tag.ANNOUNCEMENT, exactly as the admin signed it
    proof: TargetProof | None


class DeliverV1(Message, type="fleet.agent.deliver", version=1):
    """An Announcement v2 (it lists its targets itself): for agents older than Hello v4."""

    announcement: SignedEnvelope  # Tag.ANNOUNCEMENT, exactly as the admin signed it


class StatusReport(Message, type="fleet.agent.status", version=1):
    state: AgentState
    since: float  # when this state was entered (unix seconds)
    sequence: int | None  # the announcement being worked on or last finished
    desired: str | None  # its store path
    current: SystemState
    progress: Progress | None
    error: str | None  # why it failed or rolled back
    exit_code: int | None  # of switch-to-configuration, when it ran and failed
    log_tail: str | None  # tail of the activation output


class AnnouncementRejectedV1(Message, type="fleet.agent.rejected", version=1):
    """The rejection of agents before version 2 (still accepted, without a code)."""

    sequence: int
    reason: str


class AnnouncementRejected(Message, type="fleet.agent.rejected", version=2):
    """Version 2 added `code` (fleet.agent.verify.AnnouncementRefused.code)."""

    sequence: int  # 0 when the announcement could not even be read
    code: str  # scope, expired, replay, not-admin, revoked, bad-signature, ...
    reason: str


class AuditCheckpoint(Message, type="fleet.agent.audit-checkpoint", version=1):
    """The coordinator's newest signed audit checkpoint, for agents to witness (Hello v3 only)."""

    checkpoint: SignedEnvelope  # Tag.AUDIT_CHECKPOINT


class WitnessReport(Message, type="fleet.agent.witness", version=1):
    """A checkpoint the agent keeps, sent back so that admins can check the log against it."""

    checkpoint: SignedEnvelope  # Tag.AUDIT_CHECKPOINT, as the agent received it


class Revocations(Message, type="fleet.agent.revocations", version=1):
    """Revocations the coordinator knows; the agent verifies each before believing it."""

    revocations: tuple[SignedRevocation, ...]


# ---------------------------------------------------------------- admin <-> coordinator


class AdminRequest(Message, type="fleet.admin.request", version=2):
    """Signed by the admin; binds a request to one coordinator and one moment (no replay).

    Version 2 added `chain`, the signer's capability chain (empty for a trust root).
    """

    coordinator: NodeId
    issued_at: float
    nonce: bytes  # 16 random bytes
    body: bytes  # the encoded request message
    chain: Chain = EMPTY_CHAIN


class NextSequence(Message, type="fleet.admin.next-sequence", version=1):
    pass


class NextSequenceReply(Message, type="fleet.admin.next-sequence-reply", version=1):
    sequence: int


class PushRequest(Message, type="fleet.admin.push", version=2):
    """Version 2 carries an Announcement v3 and what its root does not show: the explicit
    device ids (the leaves: the coordinator checks them against the root and hands each
    device its proof) and the targets as typed, both signed with the request and audited.
    `legacy` is the same push as an Announcement v2 (same sequence, system and validity,
    every resolved device listed), for agents older than Hello v4; None: they get nothing."""

    announcement: SignedEnvelope  # Tag.ANNOUNCEMENT, an Announcement v3
    devices: tuple[NodeId, ...]  # the leaves under devices_root, in any order
    targets: tuple[str, ...]  # what the admin typed (names, ids, tag:NAME), for display
    legacy: SignedEnvelope | None = None  # Tag.ANNOUNCEMENT, an AnnouncementV2


class PushRequestV1(Message, type="fleet.admin.push", version=1):
    """The push of fleetctl before version 3: an Announcement v2 that lists its targets."""

    announcement: SignedEnvelope  # Tag.ANNOUNCEMENT


class PushAccepted(Message, type="fleet.admin.push-accepted", version=1):
    sequence: int
    devices: tuple[NodeId, ...]


class DeviceAdd(Message, type="fleet.admin.device-add", version=1):
    node_id: NodeId
    name: str
    tags: tuple[str, ...]


class DeviceEntry(Message):
    """One device of a DeviceAddBatch (one line of `fleetctl devices add --from FILE`)."""

    node_id: NodeId
    name: str
    tags: tuple[str, ...]


class DeviceAddBatch(Message, type="fleet.admin.device-add-batch", version=1):
    """Many DeviceAdds as one request and one transaction: all are stored, or none.

    `skip_existing`: devices already registered are left as they are (and named in the
    reply) instead of refusing the whole batch.
    """

    devices: tuple[DeviceEntry, ...]
    skip_existing: bool


class DeviceBatchAdded(Message, type="fleet.admin.device-batch-added", version=1):
    added: int
    skipped: tuple[NodeId, ...]  # already registered (only with skip_existing)


class EnrollTokenRevoke(Message, type="fleet.admin.enroll-token-revoke", version=1):
    """Stop an enrollment token (by its id) before it expires or is used up."""

    token_id: bytes


class DeviceApprove(Message, type="fleet.admin.device-approve", version=1):
    node_id: NodeId


class DeviceRemove(Message, type="fleet.admin.device-remove", version=1):
    name: str


class DeviceList(Message, type="fleet.admin.device-list", version=1):
    pass


class DeviceInfo(Message):
    node_id: NodeId
    name: str | None
    tags: tuple[str, ...]
    approved: bool
    first_seen: float | None
    last_seen: float | None


class DeviceListReply(Message, type="fleet.admin.device-list-reply", version=1):
    devices: tuple[DeviceInfo, ...]


class TargetCheck(Message, type="fleet.admin.target-check", version=1):
    """Push targets a key's scoped device list does not resolve: are they outside its scope?

    A key with `push` but not `read` lists only the devices in its scope, so a name outside
    it looks unknown; this asks the coordinator, which answers only for exact names, full
    node ids and `tag:NAME` (no short-id prefixes, which would let it enumerate the fleet).
    """

    targets: tuple[str, ...]


class TargetCheckReply(Message, type="fleet.admin.target-check-reply", version=1):
    outside: tuple[str, ...]  # the targets that name only devices outside the scope
    scope: str  # the requester's scope, as `fleetctl grant --scope` writes it


class StatusRequest(Message, type="fleet.admin.status", version=1):
    watch: bool  # keep the stream open and send a StatusUpdate on every change


class DesiredSystem(Message):
    store_path: str
    sequence: int
    action: Action


class Rejection(Message):
    """An announcement the device refused, and why (kept per device and sequence)."""

    sequence: int
    code: str
    reason: str
    time: float  # when the coordinator received the rejection


class DeviceStatus(Message):
    """One row of `fleetctl status`; its JSON form is part of the interface contract."""

    node_id: NodeId
    name: str | None
    tags: tuple[str, ...]  # the registry's (`fleetctl devices add --tag`)
    agent_tags: tuple[str, ...] | None  # what the agent itself reported (None: not reported)
    approved: bool
    online: bool
    path: str | None  # "direct", "relay" or None when offline
    last_seen: float | None  # the last message from the device (or its disconnection)
    state: AgentState | None
    state_since: float | None  # None: the device never reported a state change
    # The announcement `state` refers to (the agent's last StatusReport.sequence): without it
    # a client cannot tell "applied" of an older push from "applied" of the one it waits for.
    sequence: int | None
    current: SystemState | None
    desired: DesiredSystem | None
    progress: Progress | None
    error: str | None
    # The device's latest rejection, unless the device reported work on a newer push after it
    # (an old refusal superseded by later work is not shown; a refused replay of an older
    # announcement is).
    rejection: Rejection | None


class StatusSnapshot(Message, type="fleet.admin.status-snapshot", version=2):
    """Version 2: DeviceStatus gained agent_tags and rejection."""

    devices: tuple[DeviceStatus, ...]


class StatusUpdate(Message, type="fleet.admin.status-update", version=2):
    """Version 2: DeviceStatus gained agent_tags and rejection."""

    device: DeviceStatus


class StatusQuery(Message, type="fleet.admin.status-query", version=1):
    """One page of the status rows that match some filters (`fleetctl status` at any size).

    A row matches when its state is one of `states` (empty: any state, also none), it has
    every tag of `tags` (the registry's) and, with `offline`, it is not connected. Rows come
    in node id order after `after` (None: from the first); the coordinator sends at most
    `limit` of them, and fewer when the page would grow too large (`StatusPage.more`). With
    `summary` the page also counts every matching row (limit 0: the summary alone).
    """

    states: tuple[AgentState, ...]
    tags: tuple[str, ...]
    offline: bool
    after: NodeId | None
    limit: int
    summary: bool


class StatusSummary(Message):
    """The rows matching a StatusQuery, counted: all of them, online, and per state."""

    devices: int
    online: int
    pending: int  # not approved
    states: dict[str, int]  # AgentState value (or "unknown": never reported) -> devices


class StatusPage(Message, type="fleet.admin.status-page", version=1):
    devices: tuple[DeviceStatus, ...]
    summary: StatusSummary | None  # when asked for
    more: bool  # rows after these match: ask again with after = the last row's node id


class PushLookup(Message, type="fleet.admin.push-lookup", version=1):
    """Was a push of this sequence accepted, and what was it (`fleetctl push --status`)?"""

    sequence: int


class PushRecord(Message):
    """An accepted push, as the coordinator stored it."""

    signer: NodeId
    store_path: str
    action: Action
    targets: tuple[str, ...]  # as the admin typed them
    devices: int  # how many devices it targets
    issued_at: float
    valid_until: float
    accepted_at: float


class PushLookupReply(Message, type="fleet.admin.push-lookup-reply", version=1):
    sequence: int
    accepted: PushRecord | None  # None: no push of this sequence was accepted
    highest: int  # the highest sequence accepted so far (0: none)


class GrantRecord(Message, type="fleet.admin.grant", version=1):
    """Tell the coordinator about a certificate the signer issued (for the audit log)."""

    chain: Chain  # the subject's whole chain; its last certificate is the new one


class RevokeRequest(Message, type="fleet.admin.revoke", version=1):
    revocation: SignedRevocation


class CertificateLookup(Message, type="fleet.admin.certificate-lookup", version=1):
    """The chain ending at a certificate the coordinator has seen (to revoke it)."""

    certificate: bytes


class CertificateChain(Message, type="fleet.admin.certificate-chain", version=1):
    chain: Chain


class AuditQuery(Message, type="fleet.admin.audit", version=1):
    after: int  # entries with a higher id (0: from the start)
    limit: int  # at most this many (the coordinator may send fewer)


class AuditEntry(Message):
    """One entry of the hash-chained audit log: the one shape everywhere, stored (the
    coordinator's audit table), sent (AuditPage), exported and verified (fleet.audit)."""

    id: int
    time: float
    actor: str  # node id (text) of the authenticated connection
    action: str
    outcome: str  # fleet.audit.Outcome
    detail: str  # JSON object, exactly as hashed
    request: bytes  # the actor's signed request, verbatim
    prev_hash: bytes
    hash: bytes  # fleet.audit.entry_hash: over everything above

    def details(self) -> dict[str, Any]:
        """`detail` as an object ({} if it is not one)."""
        try:
            value = json.loads(self.detail)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


class AuditPage(Message, type="fleet.admin.audit-page", version=1):
    entries: tuple[AuditEntry, ...]
    checkpoints: tuple[SignedEnvelope, ...]  # Tag.AUDIT_CHECKPOINT covering these entries
    more: bool  # entries after these exist: ask again with after = the last id


class AuditWitnesses(Message, type="fleet.admin.audit-witnesses", version=1):
    """The checkpoints agents reported keeping (to check the log against them)."""


class Witness(Message):
    """One distinct checkpoint agents reported, with one of them and how many."""

    checkpoint: SignedEnvelope  # Tag.AUDIT_CHECKPOINT
    device: NodeId  # the device that reported it most recently
    devices: int  # how many devices reported it
    reported_at: float


class AuditWitnessesReply(Message, type="fleet.admin.audit-witnesses-reply", version=1):
    witnesses: tuple[Witness, ...]


class OkReply(Message, type="fleet.admin.ok", version=1):
    pass


class ErrorReply(Message, type="fleet.admin.error", version=1):
    code: str  # machine-readable: unauthorized, not-found, conflict, invalid, stale, ...
    message: str
