"""The whole update chain with every real part: `fleet relay` (TLS), `fleet coordinator`,
three `fleet agent`s with their own chroot Nix stores, a signed binary cache over HTTP, and
`fleetctl` — each a separate process started through the CLI (harness/fleetlab.py).

Each test asserts what an admin sees (fleetctl's output, exit code and `status --json`) and
what happened on the device (its system profile, and the log its switch script appends to).
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from fleet.identity import write_new_key
from harness.fleetlab import FleetLab
from harness.nixlab import Builder
from tests.conftest import Systems

pytestmark = pytest.mark.nix


def pushed_sequence(out: str) -> int:
    """The sequence from fleetctl's `pushed sequence N: ...` line."""
    line = next(line for line in out.splitlines() if line.startswith("pushed sequence "))
    return int(line.removeprefix("pushed sequence ").partition(":")[0])


async def test_push_to_a_tag_reaches_every_agent_direct_and_through_the_relay(
    lab: FleetLab, nix_systems: Systems
) -> None:
    a, b = lab.add_agent("kiosk-1"), lab.add_agent("kiosk-2")
    c = lab.add_agent("router", relay_only=True)
    await lab.launch(a, b, c)
    v1 = nix_systems.v1.path

    push = await lab.fleetctl("push", v1, "--to", "tag:lab", "--wait", "--timeout", "60")
    assert push.code == 0, push
    sequence = pushed_sequence(push.out)
    for agent in (a, b, c):
        assert f"{agent.name}: applied" in push.out, push
        assert await agent.profile() == v1
        assert agent.switches() == [f"switch {v1}"]  # ran exactly once

    rows = await lab.status()
    for agent in (a, b, c):
        row = rows[agent.name]
        assert row["id"] == str(agent.node_id)
        assert row["state"] == "applied", row
        assert row["online"] is True
        assert row["current"]["store_path"] == v1
        assert row["desired"] == {"store_path": v1, "sequence": sequence, "action": "switch"}
        assert row["error"] is None
    assert (rows["kiosk-1"]["path"], rows["kiosk-2"]["path"]) == ("direct", "direct")
    assert rows["router"]["path"] == "relay"  # its only way to the coordinator


async def test_a_failing_switch_rolls_back_and_says_why(
    lab: FleetLab, nix_systems: Systems
) -> None:
    dev = lab.add_agent("kiosk-1")
    await lab.launch(dev)
    v1, broken = nix_systems.v1.path, nix_systems.broken.path
    first = await lab.fleetctl("push", v1, "--to", "kiosk-1", "--wait")
    assert first.code == 0, first

    push = await lab.fleetctl("push", broken, "--to", "kiosk-1", "--wait")
    assert push.code == 3, push
    assert "kiosk-1: rolled-back" in push.err, push
    assert "exited with code 3" in push.err, push
    assert await dev.profile() == v1
    # the broken system ran once and failed, then the previous one was activated again
    assert dev.switches() == [f"switch {v1}", f"switch {broken}", f"switch {v1}"]

    row = (await lab.status())["kiosk-1"]
    assert row["state"] == "rolled-back", row
    assert "exited with code 3" in row["error"], row
    assert row["current"]["store_path"] == v1
    assert row["desired"]["store_path"] == broken
    table = await lab.fleetctl("status")
    assert table.code == 0, table
    assert "rolled-back" in table.out
    assert "exited with code 3" in table.out


async def test_download_failures_activate_nothing_and_show_nix_reason(
    lab: FleetLab, nix_builder: Builder, nix_systems: Systems
) -> None:
    good = lab.add_agent("kiosk-1")
    wrong = lab.add_agent("kiosk-2", trusted_key=nix_builder.wrong_key.public_key)
    await lab.launch(good, wrong)
    v1 = nix_systems.v1.path

    # The device that trusts another Nix key refuses v1; the other applies it.
    push = await lab.fleetctl("push", v1, "--to", "tag:lab", "--wait")
    assert push.code == 3, push
    assert "kiosk-1: applied" in push.out, push
    assert "kiosk-2: failed: download failed (signature)" in push.err, push
    assert await wrong.profile() is None
    assert wrong.switches() == []

    missing = "/nix/store/" + "0" * 32 + "-nixos-system-missing"
    cases = [
        (nix_systems.unsigned.path, "download failed (signature)", "is not signed by any"),
        (missing, "download failed (not-found)", "don't know how to build"),
    ]
    for path, reason, nix_says in cases:
        push = await lab.fleetctl("push", path, "--to", "kiosk-1", "--wait")
        assert push.code == 3, push
        assert f"kiosk-1: failed: {reason}" in push.err, push
        row = (await lab.status())["kiosk-1"]
        assert row["state"] == "failed", row
        assert row["error"].startswith(reason), row
        assert nix_says in row["error"], row
        assert row["desired"]["store_path"] == path
        assert row["current"]["store_path"] == v1  # nothing activated
        assert await good.profile() == v1
        assert good.switches() == [f"switch {v1}"]
    rows = await lab.status()
    assert rows["kiosk-2"]["state"] == "failed"
    assert rows["kiosk-2"]["error"].startswith("download failed (signature)")


async def test_an_agent_down_during_the_push_gets_it_when_it_starts(
    lab: FleetLab, nix_systems: Systems
) -> None:
    dev = lab.add_agent("kiosk-1")
    await lab.launch(dev)
    v1, v2 = nix_systems.v1.path, nix_systems.v2.path
    assert (await lab.fleetctl("push", v1, "--to", "kiosk-1", "--wait")).code == 0
    assert await dev.daemon.stop() == 0

    push = await lab.start_fleetctl("push", v2, "--to", "kiosk-1", "--wait", "--timeout", "60")
    await push.wait_for_output("kiosk-1: offline; it gets the push when it connects")
    await lab.start_agents(dev)
    result = await push.finish(90)
    assert result.code == 0, result
    assert "kiosk-1: applied" in result.out
    assert await dev.profile() == v2
    assert dev.switches() == [f"switch {v1}", f"switch {v2}"]


async def test_a_push_survives_kill_9_of_the_coordinator_right_after_the_ack(
    lab: FleetLab, nix_systems: Systems
) -> None:
    dev = lab.add_agent("kiosk-1")
    await lab.register(dev)  # registered, but not running yet: nothing is delivered
    v1 = nix_systems.v1.path
    push = await lab.start_fleetctl("push", v1, "--to", "kiosk-1")
    line = await push.wait_for_output("pushed sequence")
    lab.coordinator.kill9()
    assert (await push.finish()).code == 0
    sequence = pushed_sequence(line)

    lab.coordinator.start()  # same key, state directory and port
    await lab.coordinator.wait_ready()
    await lab.start_agents(dev)
    rows = await lab.wait_status(lambda rows: rows["kiosk-1"]["state"] == "applied")
    assert rows["kiosk-1"]["desired"]["sequence"] == sequence
    assert rows["kiosk-1"]["current"]["store_path"] == v1
    assert await dev.profile() == v1
    assert dev.switches() == [f"switch {v1}"]


async def test_a_non_admin_push_and_a_replayed_announcement_are_refused(
    lab: FleetLab, nix_systems: Systems
) -> None:
    dev = lab.add_agent("kiosk-1")
    await lab.launch(dev)
    v1, v2 = nix_systems.v1.path, nix_systems.v2.path

    intruder = lab.root / "intruder.key"
    write_new_key(intruder)
    refused = await lab.fleetctl("push", v1, "--to", "kiosk-1", key=intruder)
    assert refused.code == 1, refused
    assert "coordinator refused (unauthorized)" in refused.err
    assert "pushed sequence" not in refused.out
    assert (await lab.status())["kiosk-1"]["desired"]["store_path"] is None
    assert dev.switches() == []

    for path in (v1, v2):
        assert (await lab.fleetctl("push", path, "--to", "kiosk-1", "--wait")).code == 0
    # A coordinator that turned rogue (here: its database edited while it was stopped)
    # hands the device the older, genuinely signed announcement of v1 as the newest one.
    assert await lab.coordinator.stop() == 0
    replay_oldest_announcement(lab.root / "coordinator" / "coordinator.db")
    lab.coordinator.start()
    await lab.coordinator.wait_ready()

    def replay_refused(rows: dict[str, dict[str, Any]]) -> bool:
        return (rows["kiosk-1"]["rejection"] or {}).get("code") == "replay"

    rows = await lab.wait_status(replay_refused)
    assert "not newer than 2" in rows["kiosk-1"]["rejection"]["reason"], rows
    assert rows["kiosk-1"]["error"] is None, rows
    assert rows["kiosk-1"]["current"]["store_path"] == v2
    assert await dev.profile() == v2
    assert dev.switches() == [f"switch {v1}", f"switch {v2}"]


def replay_oldest_announcement(database: Path) -> None:
    """Store announcement 1's signed envelope, verbatim, as a new highest sequence."""
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        top = db.execute("SELECT max(sequence) FROM announcements").fetchone()[0]
        columns = "signer, envelope, store_path, action, issued_at, valid_until, targets, legacy"
        db.execute(
            f"INSERT INTO announcements (sequence, {columns}, received_at) "  # noqa: S608
            f"SELECT ?, {columns}, received_at FROM announcements WHERE sequence = 1",
            (top + 1,),
        )
        db.execute(
            "INSERT INTO announcement_devices (node_id, sequence, proof) "
            "SELECT node_id, ?, proof FROM announcement_devices WHERE sequence = 1",
            (top + 1,),
        )
