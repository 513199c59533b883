"""A push request opened and checked before anything is stored: what the admin signed, which
devices it names, and the proof each explicit device will be handed.

Pure checks, no database: the signature of the announcement (and of its Announcement v2 for
old agents, which must say the same thing), and that the explicit ids in the request are
exactly the leaves under the signed root. The admin desk (fleet.coordinator.admin) then
resolves the selector against the registry and checks approval and scope for every device.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fleet.identity import NodeId
from fleet.protocol.messages import (
    Announcement,
    AnnouncementV2,
    AnyAnnouncement,
    PushRequest,
    PushRequestV1,
    TargetProof,
)
from fleet.protocol.targeting import as_announcement, selects, target_tree
from fleet.wire import SignedEnvelope, Tag, verify_envelope


class BadPush(Exception):
    """A push request that says inconsistent things (code: `invalid`)."""


@dataclass(frozen=True)
class OpenedPush:
    signer: NodeId
    envelope: SignedEnvelope  # as the admin signed it: what agents get
    announcement: AnyAnnouncement
    explicit: tuple[NodeId, ...]  # the ids it names (the leaves, or a v2 one's list)
    proofs: Mapping[NodeId, TargetProof]  # of each explicit id (none for a v2 announcement)
    targets: tuple[str, ...]  # as the admin typed them
    legacy: SignedEnvelope | None  # Announcement v2 of the same push, for old agents

    @property
    def selector(self) -> tuple[str, ...]:
        ann = self.announcement
        return ann.selector if isinstance(ann, Announcement) else ()

    def selected(self, node: NodeId, tags: Iterable[str]) -> bool:
        """Whether a device (with its registry tags) is targeted: explicit id or selector."""
        return node in self.explicit or selects(self.selector, tags)

    def detail(self) -> dict[str, Any]:
        """What the audit row says the admin signed (the request itself is kept too)."""
        ann = self.announcement
        detail: dict[str, Any] = {
            "sequence": ann.sequence,
            "store_path": ann.store_path,
            "action": ann.action.value,
            "devices": [str(d) for d in self.explicit],
            "targets": list(self.targets),
            "signer": str(self.signer),
        }
        if isinstance(ann, Announcement):
            detail["selector"] = list(ann.selector)
            detail["devices_root"] = ann.devices_root.hex()
            detail["devices_count"] = ann.devices_count
            detail["legacy"] = self.legacy is not None
        return detail


def open_push(body: PushRequest | PushRequestV1) -> OpenedPush:
    """Verify the signatures and the target tree; WireError or BadPush when they fail."""
    signer, message = verify_envelope(body.announcement, Tag.ANNOUNCEMENT)
    ann = as_announcement(message)
    if isinstance(body, PushRequestV1):
        if not isinstance(ann, AnnouncementV2):
            raise BadPush("a push request v1 carries an announcement v2")
        devices = tuple(dict.fromkeys(ann.devices))
        return OpenedPush(signer, body.announcement, ann, devices, {}, ann.targets, None)
    if not isinstance(ann, Announcement):
        raise BadPush("a push request v2 carries an announcement v3")
    tree = target_tree(body.devices)
    if tree.count != ann.devices_count or tree.root != ann.devices_root:
        raise BadPush(
            f"the request's {tree.count} device ids are not the {ann.devices_count} under "
            "the signed root"
        )
    if body.legacy is not None:
        _check_legacy(body.legacy, signer, ann)
    return OpenedPush(
        signer, body.announcement, ann, tree.devices, tree.proofs, body.targets, body.legacy
    )


def _check_legacy(legacy: SignedEnvelope, signer: NodeId, ann: Announcement) -> None:
    """That `legacy` is an Announcement v2 by `signer` saying what `ann` says (an old agent
    checks its own id in the list it carries)."""
    legacy_signer, message = verify_envelope(legacy, Tag.ANNOUNCEMENT)
    old = as_announcement(message)
    if not isinstance(old, AnnouncementV2) or legacy_signer != signer:
        raise BadPush("the legacy announcement must be a v2 one by the same signer")
    same = (
        old.sequence,
        old.store_path,
        old.substituters,
        old.action,
        old.issued_at,
        old.valid_until,
        old.chain,
    ) == (
        ann.sequence,
        ann.store_path,
        ann.substituters,
        ann.action,
        ann.issued_at,
        ann.valid_until,
        ann.chain,
    )
    if not same:
        raise BadPush("the legacy announcement does not say what the announcement says")
