"""Messages of the fleet protocol. Each is a versioned wire schema (see fleet.wire.schema).

Agent connection (ALPN fleet/agent/1): the agent opens one bidirectional "control" stream
and sends Hello; the coordinator answers Welcome and then, whenever there is something for
this device, Deliver (an admin-signed announcement, forwarded verbatim). The agent sends
StatusReport whenever its state changes and AnnouncementRejected for announcements it refuses.

Admin connection (ALPN fleet/admin/1): one bidirectional stream per request. The client sends
one SignedEnvelope (Tag.ADMIN_REQUEST) around an AdminRequest whose `body` is the encoded
request message; the coordinator answers with one reply message (or ErrorReply), and for a
watch keeps sending StatusUpdate messages on the same stream. Requests are signed so that
the audit log can keep the actor's own signed words.

Announcements are signed by an admin (Tag.ANNOUNCEMENT) over every field that matters to a
device, including its sequence; the coordinator cannot alter or renumber them.
"""

from __future__ import annotations

import enum

from fleet.identity import NodeId
from fleet.nix.activation import Action
from fleet.wire import Message, SignedEnvelope

__all__ = [
    "Action",
    "AdminRequest",
    "AgentState",
    "Announcement",
    "AnnouncementRejected",
    "Deliver",
    "DesiredSystem",
    "DeviceAdd",
    "DeviceApprove",
    "DeviceInfo",
    "DeviceList",
    "DeviceListReply",
    "DeviceRemove",
    "DeviceStatus",
    "ErrorReply",
    "Hello",
    "NextSequence",
    "NextSequenceReply",
    "OkReply",
    "Progress",
    "PushAccepted",
    "PushRequest",
    "StatusReport",
    "StatusRequest",
    "StatusSnapshot",
    "StatusUpdate",
    "SystemState",
    "Welcome",
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


class Announcement(Message, type="fleet.announcement", version=1):
    """What an admin signs: these devices should run that system, fetched from there."""

    sequence: int  # strictly increasing per coordinator; agents refuse anything not higher
    devices: tuple[NodeId, ...]  # the targeted devices, resolved from names/tags at push time
    targets: tuple[str, ...]  # what the admin typed (names, ids, tag:NAME), for display
    store_path: str
    substituters: tuple[str, ...]  # hints only: agents fetch from their own configured caches
    action: Action
    issued_at: float  # unix seconds
    valid_until: float  # unix seconds; agents refuse it afterwards

    def __post_init__(self) -> None:
        if self.sequence < 1:
            raise ValueError("sequence must be positive")
        if not self.devices:
            raise ValueError("an announcement targets at least one device")
        if self.valid_until <= self.issued_at:
            raise ValueError("valid_until must be after issued_at")


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


class Hello(Message, type="fleet.agent.hello", version=1):
    agent_version: str
    current: SystemState
    last_sequence: int  # highest announcement sequence this device applied (0 = none)
    state: AgentState
    state_since: float


class Welcome(Message, type="fleet.agent.welcome", version=1):
    approved: bool  # False: the device is pending; it stays connected and gets nothing
    name: str | None


class Deliver(Message, type="fleet.agent.deliver", version=1):
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


class AnnouncementRejected(Message, type="fleet.agent.rejected", version=1):
    sequence: int
    reason: str


# ---------------------------------------------------------------- admin <-> coordinator


class AdminRequest(Message, type="fleet.admin.request", version=1):
    """Signed by the admin; binds a request to one coordinator and one moment (no replay)."""

    coordinator: NodeId
    issued_at: float
    nonce: bytes  # 16 random bytes
    body: bytes  # the encoded request message


class NextSequence(Message, type="fleet.admin.next-sequence", version=1):
    pass


class NextSequenceReply(Message, type="fleet.admin.next-sequence-reply", version=1):
    sequence: int


class PushRequest(Message, type="fleet.admin.push", version=1):
    announcement: SignedEnvelope  # Tag.ANNOUNCEMENT


class PushAccepted(Message, type="fleet.admin.push-accepted", version=1):
    sequence: int
    devices: tuple[NodeId, ...]


class DeviceAdd(Message, type="fleet.admin.device-add", version=1):
    node_id: NodeId
    name: str
    tags: tuple[str, ...]


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


class StatusRequest(Message, type="fleet.admin.status", version=1):
    watch: bool  # keep the stream open and send a StatusUpdate on every change


class DesiredSystem(Message):
    store_path: str
    sequence: int
    action: Action


class DeviceStatus(Message):
    """One row of `fleetctl status`; its JSON form is part of the interface contract."""

    node_id: NodeId
    name: str | None
    tags: tuple[str, ...]
    approved: bool
    online: bool
    path: str | None  # "direct", "relay" or None when offline
    last_seen: float | None
    state: AgentState | None
    state_since: float | None
    # The announcement `state` refers to (the agent's last StatusReport.sequence): without it
    # a client cannot tell "applied" of an older push from "applied" of the one it waits for.
    sequence: int | None
    current: SystemState | None
    desired: DesiredSystem | None
    progress: Progress | None
    error: str | None


class StatusSnapshot(Message, type="fleet.admin.status-snapshot", version=1):
    devices: tuple[DeviceStatus, ...]


class StatusUpdate(Message, type="fleet.admin.status-update", version=1):
    device: DeviceStatus


class OkReply(Message, type="fleet.admin.ok", version=1):
    pass


class ErrorReply(Message, type="fleet.admin.error", version=1):
    code: str  # machine-readable: unauthorized, not-found, conflict, invalid, stale, ...
    message: str
