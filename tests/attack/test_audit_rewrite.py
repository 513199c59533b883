"""Attack (issue 10, item 5): whoever controls the coordinator's database rewrites its audit log.

Real processes through the CLI (harness/fleetlab.py): a relay, a coordinator, one agent and
fleetctl. Admin actions fill the log; `fleetctl audit verify` passes and remembers the signed
checkpoint; an export is kept; the agent receives the checkpoint. Then the coordinator is
stopped and its SQLite file rewritten the way an attacker with the database would: one entry
edited, every later hash recomputed (the chain is internally consistent again), every
checkpoint and every witness report the agents made deleted. After the restart the
coordinator signs a fresh checkpoint over the forged head, so the log verifies on its own;
what catches it is a checkpoint kept elsewhere: fleetctl's memory, the export, the agent.
Before the witnesses existed `audit verify` said "intact" here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleet.audit import GENESIS, make_entry, open_checkpoint
from fleet.identity import NodeId, write_new_key
from fleet.wire import SignedEnvelope, decode
from harness.fleetlab import FleetLab, read_log_events

FAKE_CACHE = "http://127.0.0.1:9"  # nothing is pushed: the agent never fetches
FAKE_NIX_KEY = "cache-1:" + base64.b64encode(bytes(32)).decode()
FORGED = 2  # the entry the attacker edits


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[FleetLab]:
    lab = FleetLab(tmp_path / "lab", substituter=FAKE_CACHE, trusted_key=FAKE_NIX_KEY)
    try:
        await lab.start()
        yield lab
    finally:
        print(await lab.close())


def rewrite_history(db: Path, entry: int) -> None:
    """Edit `entry`, recompute every hash from it on, delete checkpoints and witness reports."""
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
        conn.execute("DROP TRIGGER IF EXISTS audit_no_delete")
        rows = conn.execute("SELECT * FROM audit ORDER BY id").fetchall()
        prev = GENESIS if entry == 1 else bytes(rows[entry - 2]["hash"])
        for row in rows[entry - 1 :]:
            detail = json.loads(row["detail"])
            if row["id"] == entry:
                detail["name"] = "nothing-to-see"
            forged = make_entry(
                id=row["id"],
                time=row["time"],
                actor=row["actor"],
                action=row["action"],
                outcome=row["outcome"],
                detail=detail,
                request=bytes(row["request"]),
                prev_hash=prev,
            )
            conn.execute(
                "UPDATE audit SET detail = ?, prev_hash = ?, hash = ? WHERE id = ?",
                (forged.detail, forged.prev_hash, forged.hash, forged.id),
            )
            prev = forged.hash
        conn.execute("DELETE FROM audit_checkpoints")
        conn.execute("DELETE FROM audit_witnesses")
        conn.commit()
    finally:
        conn.close()


def stored_hash(db: Path, entry: int) -> bytes:
    conn = sqlite3.connect(db)
    try:
        return bytes(conn.execute("SELECT hash FROM audit WHERE id = ?", (entry,)).fetchone()[0])
    finally:
        conn.close()


async def held_checkpoint(state: Path, coordinator: NodeId, sequence: int) -> bytes:
    """Wait until the agent holds a checkpoint of `sequence` entries; its head."""
    path = state / "audit-checkpoint.bin"
    deadline = time.monotonic() + 30
    while True:
        if path.exists():
            checkpoint = open_checkpoint(decode(path.read_bytes(), SignedEnvelope), coordinator)
            if checkpoint.sequence >= sequence:
                return checkpoint.head
        assert time.monotonic() < deadline, "the agent never received the checkpoint"
        await asyncio.sleep(0.1)


async def wait_event(events: object, name: str, timeout: float = 60) -> None:
    assert callable(events)
    deadline = time.monotonic() + timeout
    while not any(e.get("event") == name for e in events()):
        assert time.monotonic() < deadline, f"no {name} event within {timeout:.0f} s"
        await asyncio.sleep(0.1)


async def test_a_rewritten_audit_log_is_caught_by_every_witness(
    lab: FleetLab, tmp_path: Path
) -> None:
    kiosk = lab.add_agent("kiosk")
    await lab.launch(kiosk)  # entry 1: devices add kiosk
    for index in range(3):  # entries 2..4
        decoy = write_new_key(tmp_path / f"decoy{index}.key").node_id
        added = await lab.fleetctl("devices", "add", str(decoy), "--name", f"decoy{index}")
        assert added.code == 0, added
    memory = tmp_path / "admin-state"
    first = await lab.fleetctl("audit", "verify", "--state-dir", str(memory))
    assert first.code == 0, first
    assert "audit log intact: 4 entries" in first.out
    assert "remembered here" not in first.out  # nothing to remember yet
    remembered = json.loads(
        (memory / "audit-checkpoints" / f"{lab.coordinator_id}.json").read_text()
    )
    assert remembered["sequence"] == 4
    again = await lab.fleetctl("audit", "verify", "--state-dir", str(memory))
    assert again.code == 0, again
    assert "consistent with the checkpoint remembered here (entry 4)" in again.out
    export = tmp_path / "audit.jsonl"
    assert (await lab.fleetctl("audit", "export", "--out", str(export))).code == 0
    agent_state = lab.root / "agents" / "kiosk" / "state"
    honest_head = await held_checkpoint(agent_state, lab.coordinator_id, 4)
    assert honest_head.hex() == remembered["head"]

    # The attack: offline, with the database in hand.
    assert await lab.coordinator.stop() == 0
    db = lab.root / "coordinator" / "coordinator.db"
    rewrite_history(db, FORGED)
    forged_head = stored_hash(db, 4)
    lab.coordinator.start()
    await lab.coordinator.wait_ready()

    caught = await lab.fleetctl("audit", "verify", "--state-dir", str(memory))
    assert caught.code == 1, caught
    assert "audit log is NOT intact: entry 4: rewritten" in caught.err
    assert forged_head.hex()[:16] in caught.err
    assert honest_head.hex()[:16] in caught.err
    assert "remembered" in caught.err
    assert "Traceback" not in caught.err
    after = json.loads((memory / "audit-checkpoints" / f"{lab.coordinator_id}.json").read_text())
    assert after == remembered  # a failed verify does not adopt the forged head
    lab.env["FLEET_STATE_DIR"] = str(memory)  # the setting, as the environment gives it
    listing = await lab.fleetctl("audit", "--json")
    assert listing.code == 0, listing  # the log is still shown as it is, with a warning
    assert len(json.loads(listing.out)) == 4
    assert "warning: audit log is NOT intact: entry 4: rewritten" in listing.err

    against = await lab.fleetctl(
        "audit", "verify", "--state-dir", str(tmp_path / "fresh-1"), "--against", str(export)
    )
    assert against.code == 1, against
    assert f"entry {FORGED}: rewritten" in against.err
    assert f"the export {export}" in against.err

    # A machine with no memory of the log: the agent's checkpoint, reported in its Hello
    # after it reconnects, is the coordinator's own signature over the honest head.
    await wait_event(lambda: read_log_events(lab.coordinator.log_path or Path()), "agent_hello")
    fresh = await lab.fleetctl(
        "audit", "verify", "--json", "--state-dir", str(tmp_path / "fresh-2")
    )
    assert fresh.code == 1, fresh
    problem = json.loads(fresh.out)["problem"]
    assert problem.startswith("entry 4: rewritten"), problem
    assert f"device {kiosk.node_id}" in problem
    assert honest_head.hex()[:16] in problem
    # The coordinator's own code noticed too (its operator sees it in the journal), and the
    # agent saw the fork itself (same index, another head) and kept the honest checkpoint.
    await wait_event(lab.coordinator.events, "audit_witness_conflict")
    await wait_event(kiosk.daemon.events, "agent_audit_fork")
    assert await held_checkpoint(agent_state, lab.coordinator_id, 4) == honest_head
