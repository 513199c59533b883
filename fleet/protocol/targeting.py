"""Which devices an announcement targets, in a form whose size does not grow with the fleet.

An Announcement v3 names its targets two ways, either or both (docs/protocol.md, "Targets"):
- `selector`: tags; a device is targeted when its own configured tags include one of them
  (the agent's `--tag`, never the coordinator's registry);
- a Merkle root over the sorted explicit device ids (`devices_root`, `devices_count`); the
  coordinator hands each of those devices its TargetProof, and the device checks it against
  the root the admin signed.
The admin builds the tree (`target_tree`), the coordinator rebuilds it from the ids in the
push request and refuses a mismatch, the agent checks one proof (`targets_device`).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fleet.identity import NodeId
from fleet.identity.labels import TAG_PREFIX
from fleet.protocol.messages import Announcement, AnnouncementV2, AnyAnnouncement, TargetProof
from fleet.wire import Message, UnexpectedMessageType, decode
from fleet.wire.merkle import build, sorted_leaves, verify_inclusion


@dataclass(frozen=True)
class TargetTree:
    """The explicit ids of a push as the admin signs them (root, count) and the coordinator
    hands them out (one proof per device)."""

    root: bytes  # b"": no explicit ids
    count: int
    proofs: Mapping[NodeId, TargetProof]

    @property
    def devices(self) -> tuple[NodeId, ...]:
        return tuple(self.proofs)


def target_tree(devices: Iterable[NodeId]) -> TargetTree:
    """The tree over `devices` (any order, duplicates ignored); empty for no devices."""
    by_raw = {d.raw: d for d in devices}
    leaves = sorted_leaves(by_raw)
    if not leaves:
        return TargetTree(root=b"", count=0, proofs={})
    root, proofs = build(leaves)
    return TargetTree(
        root=root,
        count=len(leaves),
        proofs={
            by_raw[leaf]: TargetProof(index=i, hashes=proof)
            for i, (leaf, proof) in enumerate(zip(leaves, proofs, strict=True))
        },
    )


def selects(selector: Iterable[str], tags: Iterable[str]) -> bool:
    """Whether a device with `tags` carries one of the selector's tags."""
    return not set(selector).isdisjoint(tags)


def targets_device(
    announcement: AnyAnnouncement,
    device: NodeId,
    tags: Iterable[str],
    proof: TargetProof | None,
) -> bool:
    """Whether `announcement` targets `device` (with its own `tags`), shown by `proof` when
    it is one of the explicit ids. A v2 announcement lists its devices itself."""
    if isinstance(announcement, AnnouncementV2):
        return any(hmac.compare_digest(device.raw, d.raw) for d in announcement.devices)
    if selects(announcement.selector, tags):
        return True
    return proof is not None and verify_inclusion(
        device.raw,
        proof.index,
        announcement.devices_count,
        proof.hashes,
        announcement.devices_root,
    )


def why_not_targeted(announcement: AnyAnnouncement, tags: Iterable[str]) -> str:
    """What a device that `targets_device` turned down can be told (no secrets: all signed)."""
    if isinstance(announcement, AnnouncementV2):
        return f"it is not among the {len(announcement.devices)} devices listed"
    reasons = []
    if announcement.selector:
        mine = ", ".join(sorted(tags)) or "none"
        wanted = ", ".join(TAG_PREFIX + t for t in announcement.selector)
        reasons.append(f"its own tags ({mine}) meet none of {wanted}")
    if announcement.devices_count:
        reasons.append(f"no valid proof came that it is one of {announcement.devices_count} ids")
    return " and ".join(reasons)


def as_announcement(message: Message) -> AnyAnnouncement:
    """`message` if it is an announcement of a version agents accept; else the wire error."""
    if isinstance(message, Announcement | AnnouncementV2):
        return message
    raise UnexpectedMessageType(f"expected an announcement, got {type(message).__name__}")


def read_announcement(payload: bytes) -> AnyAnnouncement:
    """Decode a signed announcement payload of either version (WireError otherwise)."""
    return as_announcement(decode(payload))
