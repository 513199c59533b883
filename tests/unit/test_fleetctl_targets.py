"""Push targets (name, node id, tag:NAME) resolve to exactly the approved devices meant."""

from __future__ import annotations

import pytest

from fleet.admin.errors import TargetError
from fleet.admin.targets import resolve_targets
from fleet.identity import Identity, NodeId
from fleet.protocol.messages import DeviceInfo


def _device(name: str | None, *tags: str, approved: bool = True) -> DeviceInfo:
    return DeviceInfo(
        node_id=Identity.generate().node_id,
        name=name,
        tags=tags,
        approved=approved,
        first_seen=None,
        last_seen=None,
    )


@pytest.fixture
def fleet() -> list[DeviceInfo]:
    return [
        _device("kiosk-1", "kiosk", "lobby"),
        _device("kiosk-2", "kiosk"),
        _device("router", "edge"),
        _device(None, "kiosk", approved=False),  # pending: never a target
    ]


def _ids(devices: list[DeviceInfo], *names: str) -> tuple[NodeId, ...]:
    by_name = {d.name: d.node_id for d in devices}
    return tuple(by_name[n] for n in names)


def test_name_id_and_tag_resolve_in_order_without_duplicates(fleet: list[DeviceInfo]) -> None:
    router_id = str(fleet[2].node_id)
    got = resolve_targets(["tag:kiosk", router_id, "kiosk-1"], fleet)
    assert got == _ids(fleet, "kiosk-1", "kiosk-2", "router")


def test_tag_skips_pending_devices(fleet: list[DeviceInfo]) -> None:
    assert resolve_targets(["tag:kiosk"], fleet) == _ids(fleet, "kiosk-1", "kiosk-2")


def test_unknown_name_is_named_in_the_error(fleet: list[DeviceInfo]) -> None:
    with pytest.raises(TargetError, match=r"'kiosk-9'.*no device with that name"):
        resolve_targets(["kiosk-1", "kiosk-9"], fleet)


def test_unknown_node_id_is_an_error(fleet: list[DeviceInfo]) -> None:
    stranger = str(Identity.generate().node_id)
    with pytest.raises(TargetError, match="no device with that node id"):
        resolve_targets([stranger], fleet)


def test_tag_matching_nothing_is_an_error(fleet: list[DeviceInfo]) -> None:
    with pytest.raises(TargetError, match="no approved device has tag 'printer'"):
        resolve_targets(["tag:printer"], fleet)


def test_tag_with_only_pending_devices_says_so() -> None:
    devices = [_device(None, "new", approved=False)]
    with pytest.raises(TargetError, match="1 pending approval"):
        resolve_targets(["tag:new"], devices)


def test_pending_device_by_id_is_refused_with_the_approve_command(
    fleet: list[DeviceInfo],
) -> None:
    pending = fleet[3].node_id
    with pytest.raises(TargetError, match=f"pending approval.*devices approve {pending}"):
        resolve_targets([str(pending)], fleet)


def test_empty_tag_and_no_targets_are_errors(fleet: list[DeviceInfo]) -> None:
    with pytest.raises(TargetError, match="empty tag"):
        resolve_targets(["tag:"], fleet)
    with pytest.raises(TargetError, match="no target"):
        resolve_targets([], fleet)
