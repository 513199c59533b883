"""Devices and push targets (name, node id, short id, tag:NAME) resolve to exactly the devices
meant; a short id that several devices share is refused with the candidates."""

from __future__ import annotations

import pytest

from fleet.admin.errors import AmbiguousTarget, CoordinatorRefused, TargetError
from fleet.admin.targets import (
    MIN_SHORT_ID,
    find_device,
    is_short_id,
    resolve_push_targets,
    resolve_targets,
)
from fleet.identity import Identity, NodeId
from fleet.protocol.messages import DeviceInfo, TargetCheckReply


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


# ---------------------------------------------------------------- one device, short ids


def _with_id(name: str | None, raw: bytes, *, approved: bool = True) -> DeviceInfo:
    return DeviceInfo(
        node_id=NodeId(raw), name=name, tags=(), approved=approved, first_seen=None, last_seen=None
    )


TWIN_A = b"\x00" * 5 + b"\x11" * 27  # both start with "aaaaaaaa" (40 zero bits)
TWIN_B = b"\x00" * 5 + b"\x99" * 27


@pytest.fixture
def twins() -> list[DeviceInfo]:
    return [
        _with_id("twin-a", TWIN_A),
        _with_id("twin-b", TWIN_B),
        _with_id(None, b"\xff" * 32, approved=False),  # pending, "7777..."
    ]


def test_find_device_by_name_full_id_and_short_id(twins: list[DeviceInfo]) -> None:
    a, b, pending = twins
    assert find_device("twin-b", twins) is b
    assert find_device(str(a.node_id), twins) is a
    assert find_device(b.node_id.short(), twins) is b  # the 10 characters tables show
    assert find_device(str(b.node_id)[:9], twins) is b  # as many as tell it apart
    assert find_device("7777", twins) is pending  # pending devices are found too


def test_a_short_id_shared_by_several_devices_lists_every_candidate(
    twins: list[DeviceInfo],
) -> None:
    a, b, _ = twins
    with pytest.raises(AmbiguousTarget, match="short id of 2 devices") as caught:
        find_device("aaaaaaaa", twins)
    assert set(caught.value.candidates) == {a.node_id, b.node_id}
    message = str(caught.value)
    assert f"twin-a {a.node_id}" in message
    assert f"twin-b {b.node_id}" in message


def test_no_match_and_too_short_are_not_found(twins: list[DeviceInfo]) -> None:
    with pytest.raises(TargetError, match="no device with that name or short id"):
        find_device("bbbbbb", twins)
    with pytest.raises(TargetError, match="no device with that name or short id"):
        find_device("777", twins)  # under MIN_SHORT_ID characters: never a short id
    assert len("777") < MIN_SHORT_ID
    with pytest.raises(TargetError, match="no device with that node id"):
        find_device(str(Identity.generate().node_id), twins)


def test_a_name_wins_over_a_short_id_that_spells_it() -> None:
    named = _with_id("aaaaaaaa", b"\xff" * 32)
    other = _with_id("x", TWIN_A)
    assert find_device("aaaaaaaa", [other, named]) is named


def test_is_short_id() -> None:
    node = str(Identity.generate().node_id)
    assert is_short_id(node[:10])
    assert is_short_id(node[:MIN_SHORT_ID])
    assert not is_short_id(node[: MIN_SHORT_ID - 1])
    assert not is_short_id(node)  # a full id is a full id
    assert not is_short_id("kiosk-1")
    assert not is_short_id("ABCDEF")
    assert not is_short_id("abc018")  # 0, 1, 8 are not in base32


def test_push_targets_take_short_ids_and_still_refuse_pending(twins: list[DeviceInfo]) -> None:
    a, b, pending = twins
    assert resolve_targets([str(b.node_id)[:9], "twin-a"], twins) == (b.node_id, a.node_id)
    with pytest.raises(AmbiguousTarget, match="target 'aaaaaaaa'"):
        resolve_targets(["aaaaaaaa"], twins)
    with pytest.raises(TargetError, match=f"pending approval.*devices approve {pending.node_id}"):
        resolve_targets(["7777"], twins)


async def test_a_push_target_outside_the_scope_is_named_as_such(fleet: list[DeviceInfo]) -> None:
    asked: list[tuple[str, ...]] = []

    async def check(targets: tuple[str, ...]) -> TargetCheckReply:
        asked.append(targets)
        return TargetCheckReply(outside=("lab-1",), scope="tag:kiosk")

    with pytest.raises(TargetError, match=r"'lab-1': out of scope for this certificate") as err:
        await resolve_push_targets(["kiosk-1", "lab-1", "nowhere"], fleet, check)
    assert "its scope is tag:kiosk" in str(err.value)
    assert asked == [("lab-1", "nowhere")]  # only what the scoped list does not resolve
    with pytest.raises(TargetError, match=r"'nowhere': no device with that name"):
        await resolve_push_targets(["nowhere"], fleet, check)
    assert await resolve_push_targets(["kiosk-1"], fleet, check) == _ids(fleet, "kiosk-1")
    assert len(asked) == 2  # resolved targets cost no round trip


async def test_a_coordinator_without_target_check_leaves_the_plain_error(
    fleet: list[DeviceInfo],
) -> None:
    async def check(targets: tuple[str, ...]) -> TargetCheckReply:
        raise CoordinatorRefused("invalid", "fleet.admin.target-check is not an admin request")

    with pytest.raises(TargetError, match="no device with that name"):
        await resolve_push_targets(["lab-1"], fleet, check)
