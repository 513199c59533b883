"""The JSON of `status --json` / `devices list --json` (a contract) and the text tables."""

from __future__ import annotations

import dataclasses
import json

from fleet.admin.views import (
    age,
    device_json,
    device_table,
    iso_utc,
    short_store_path,
    status_json,
    status_table,
)
from fleet.identity import Identity
from fleet.protocol.messages import AgentState, DeviceInfo, Progress, Rejection
from fleet.vocabulary import Action
from tests.admin_standin import desired, device_status

NOW = 1_700_000_000.0
V1 = "/nix/store/" + "a" * 32 + "-nixos-system-kiosk-1"
V2 = "/nix/store/" + "b" * 32 + "-nixos-system-kiosk-2"


def test_iso_utc_is_z_suffixed_milliseconds() -> None:
    assert iso_utc(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(1_700_000_000.25) == "2023-11-14T22:13:20.250Z"
    assert iso_utc(None) is None


def test_status_json_has_every_contract_field() -> None:
    node = Identity.generate().node_id
    status = device_status(
        node,
        "kiosk-1",
        tags=("kiosk", "lobby"),
        state=AgentState.DOWNLOADING,
        sequence=7,
        current=V1,
        generation=3,
        desired=desired(V2, 7, Action.BOOT),
        progress=Progress(paths_done=1, paths_total=4, bytes_done=10, bytes_total=40),
        error=None,
        agent_tags=("kiosk", "lobby"),
        now=NOW,
    )
    got = status_json(status)
    assert got == {
        "name": "kiosk-1",
        "id": str(node),
        "tags": ["kiosk", "lobby"],
        "agent_tags": ["kiosk", "lobby"],
        "tags_mismatch": False,
        "approved": True,
        "online": True,
        "path": "direct",
        "last_seen": iso_utc(NOW),
        "state": "downloading",
        "state_since": iso_utc(NOW - 5),
        "sequence": 7,
        "current": {"store_path": V1, "generation": 3},
        "desired": {"store_path": V2, "sequence": 7, "action": "boot"},
        "progress": {"paths_done": 1, "paths_total": 4, "bytes_done": 10, "bytes_total": 40},
        "error": None,
        "rejection": None,
    }
    assert json.loads(json.dumps(got)) == got  # plain JSON types only


def test_a_rejection_is_in_json_and_table_with_its_reason_and_iso_time() -> None:
    node = Identity.generate().node_id
    refused = Rejection(sequence=9, code="expired", reason="announcement 9 expired 3 s ago",
                        time=NOW - 60)  # fmt: skip
    status = device_status(
        node, "kiosk-1", state=AgentState.APPLIED, sequence=8, rejection=refused, now=NOW
    )
    got = status_json(status)
    assert got["rejection"] == {
        "sequence": 9,
        "code": "expired",
        "reason": "announcement 9 expired 3 s ago",
        "time": "2023-11-14T22:12:20.000Z",
    }
    assert got["state"] == "applied"  # what the device runs is unchanged
    text = status_table([status], NOW)
    assert "rejected #9 (1m)" in text
    assert "expired: announcement 9 expired 3 s ago" in text


def test_tags_the_agent_reported_otherwise_are_flagged() -> None:
    node = Identity.generate().node_id
    status = device_status(node, "kiosk-1", tags=("kiosk",), agent_tags=("lobby",), now=NOW)
    got = status_json(status)
    assert (got["tags"], got["agent_tags"], got["tags_mismatch"]) == (["kiosk"], ["lobby"], True)
    assert "kiosk (agent: lobby!)" in status_table([status], NOW)
    bare = device_status(node, "kiosk-1", tags=("kiosk",), agent_tags=(), now=NOW)
    assert "kiosk (agent: none!)" in status_table([bare], NOW)
    unknown = device_status(node, "kiosk-1", tags=("kiosk",), agent_tags=None, now=NOW)
    assert status_json(unknown)["tags_mismatch"] is False  # an old agent reports no tags
    assert "agent:" not in status_table([unknown], NOW)


def test_a_state_without_a_time_shows_no_age() -> None:
    node = Identity.generate().node_id
    status = dataclasses.replace(device_status(node, "kiosk-1", now=NOW), state_since=None)
    assert status_json(status)["state_since"] is None
    row = status_table([status], NOW).splitlines()[1]
    assert " idle " in f"{row} "
    assert "d)" not in row  # not "idle (19675d)"


def test_status_json_of_an_unknown_device_keeps_its_shape() -> None:
    node = Identity.generate().node_id
    status = device_status(node, None, online=False, state=None, error="rolled back: exit 1")
    got = status_json(status)
    assert got["online"] is False
    assert got["path"] is None
    assert got["state"] is None
    assert got["state_since"] is None
    assert got["current"] == {"store_path": None, "generation": None}
    assert got["desired"] == {"store_path": None, "sequence": None, "action": None}
    assert got["error"] == "rolled back: exit 1"


def test_device_json() -> None:
    node = Identity.generate().node_id
    info = DeviceInfo(
        node_id=node, name=None, tags=(), approved=False, first_seen=NOW, last_seen=None
    )
    assert device_json(info) == {
        "name": None,
        "id": str(node),
        "tags": [],
        "approved": False,
        "first_seen": iso_utc(NOW),
        "last_seen": None,
    }


def test_short_store_path_and_age() -> None:
    assert short_store_path(V1) == "aaaaaaaa-nixos-system-kiosk-1"
    assert short_store_path("/weird") == "/weird"
    assert short_store_path(None) == "-"
    assert [age(NOW - d, NOW) for d in (3, 125, 7300, 200_000)] == ["3s", "2m", "2h", "2d"]
    assert age(None, NOW) == "-"


def test_status_table_has_a_row_per_device_with_what_people_look_for() -> None:
    a, b = Identity.generate().node_id, Identity.generate().node_id
    rows = [
        device_status(
            b,
            "kiosk-2",
            state=AgentState.ROLLED_BACK,
            sequence=7,
            current=V1,
            generation=3,
            desired=desired(V2, 7),
            error="switch-to-configuration exited 1",
            online=False,
            now=NOW - 120,
        ),
        device_status(
            a,
            "kiosk-1",
            tags=("kiosk",),
            state=AgentState.DOWNLOADING,
            sequence=7,
            current=V1,
            generation=3,
            desired=desired(V2, 7),
            progress=Progress(paths_done=2, paths_total=4, bytes_done=1 << 20, bytes_total=4 << 20),
            now=NOW,
        ),
    ]
    lines = status_table(rows, NOW).splitlines()
    assert lines[0].split() == [
        "NAME",
        "ID",
        "TAGS",
        "LINK",
        "STATE",
        "CURRENT",
        "DESIRED",
        "ERROR",
    ]
    assert len(lines) == 3
    first, second = lines[1], lines[2]  # sorted by name
    assert first.startswith("kiosk-1")
    assert a.short() in first
    assert "direct" in first
    assert "downloading (5s) 2/4 paths, 1.0/4.0 MiB" in first
    assert "aaaaaaaa-nixos-system-kiosk-1 (gen 3)" in first
    assert "#7 switch bbbbbbbb-nixos-system-kiosk-2" in first
    assert second.startswith("kiosk-2")
    assert "offline (2m)" in second
    assert "rolled-back" in second
    assert second.endswith("switch-to-configuration exited 1")
    # columns line up: every row's STATE cell starts where the header's does
    col = lines[0].index("STATE")
    assert all(line[col - 2 : col] == "  " for line in lines)


def test_empty_tables_show_the_header() -> None:
    assert status_table([], NOW).split() == [
        "NAME",
        "ID",
        "TAGS",
        "LINK",
        "STATE",
        "CURRENT",
        "DESIRED",
        "ERROR",
    ]
    assert device_table([], NOW).startswith("NAME")


def test_device_table_marks_pending_devices() -> None:
    node = Identity.generate().node_id
    info = DeviceInfo(
        node_id=node, name=None, tags=(), approved=False, first_seen=NOW - 60, last_seen=NOW
    )
    line = device_table([info], NOW).splitlines()[1]
    assert line.split()[:4] == ["(pending)", str(node), "-", "no"]
    assert "1m ago" in line
