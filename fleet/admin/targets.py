"""Push targets as admins write them (a device name, a node id or `tag:NAME`) -> node ids.

Resolution happens on the admin's side, against the coordinator's device list, so that the
signed announcement lists exactly the devices the admin meant: the coordinator cannot widen
a push by changing a tag later.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from fleet.admin.errors import TargetError
from fleet.identity import InvalidNodeId, NodeId
from fleet.protocol.messages import DeviceInfo

TAG_PREFIX = "tag:"


def _label(device: DeviceInfo) -> str:
    return device.name or device.node_id.short()


def _by_id(devices: Sequence[DeviceInfo], node_id: NodeId) -> DeviceInfo | None:
    for device in devices:
        if device.node_id == node_id:
            return device
    return None


def _resolve_one(target: str, devices: Sequence[DeviceInfo]) -> list[DeviceInfo]:
    if target.startswith(TAG_PREFIX):
        tag = target[len(TAG_PREFIX) :]
        if not tag:
            raise TargetError(f"target {target!r}: empty tag name")
        tagged = [d for d in devices if tag in d.tags]
        approved = [d for d in tagged if d.approved]
        if not approved:
            pending = f" ({len(tagged)} pending approval)" if tagged else ""
            raise TargetError(f"target {target!r}: no approved device has tag {tag!r}{pending}")
        return approved
    named = [d for d in devices if d.name == target]
    if not named:
        try:
            node_id = NodeId.parse(target)
        except InvalidNodeId:
            raise TargetError(f"target {target!r}: no device with that name") from None
        found = _by_id(devices, node_id)
        if found is None:
            raise TargetError(f"target {target!r}: no device with that node id")
        named = [found]
    device = named[0]
    if not device.approved:
        raise TargetError(
            f"target {target!r}: device {_label(device)} is pending approval "
            f"(fleetctl devices approve {device.node_id})"
        )
    return [device]


def resolve_targets(targets: Iterable[str], devices: Sequence[DeviceInfo]) -> tuple[NodeId, ...]:
    """The node ids of every approved device the targets name, in order, without duplicates.

    Raises TargetError naming the first target that matches nothing (or only pending devices).
    """
    resolved: list[NodeId] = []
    seen: set[NodeId] = set()
    targets = list(targets)
    if not targets:
        raise TargetError("no target given (--to NAME, NODEID or tag:NAME)")
    for target in targets:
        for device in _resolve_one(target.strip(), devices):
            if device.node_id not in seen:
                seen.add(device.node_id)
                resolved.append(device.node_id)
    return tuple(resolved)
