"""Attack: poisoning the audit log from outside (issue 10, item 1), and the error a push-only
key gets for a target outside its scope (item 4). Real `fleet coordinator` and `fleetctl`
processes; the attacker is a mesh client with a key nobody certified.

Before the fix, twelve 0.9 MiB garbage requests stored 11 MB in the audit log (every refusal
kept the raw request) and from then on `fleetctl audit`, `audit verify` and `audit export`
failed for every admin after 20 s: an audit page of up to 500 rows no longer fitted the
8 MiB message cap. A request over 1 MiB got no reply at all and no audit entry.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.coordinator import audit
from fleet.coordinator.database import Database
from fleet.identity import Identity, load_identity
from fleet.protocol.admin import make_admin_request
from fleet.protocol.messages import DeviceList
from fleet.wire import encode
from harness.attack.audit_poisoning import PER_REFUSAL, Attacked, framed, send_raw
from harness.cli import run_fleet
from harness.coordinator_process import Lab

GARBAGE = 12  # requests, as in the issue
GARBAGE_SIZE = 900 * 1024
OVER_CAP = (1_200_000, 9 << 20)  # over the 1 MiB request cap, and over the 8 MiB message cap
NORMAL = 10.0  # seconds an audit command may take on a loaded two-core machine (0.8 s idle)
STORE = "/nix/store/" + "d" * 32 + "-nixos-system-v3"


@pytest.fixture
def attacked(tmp_path: Path) -> Iterator[Attacked]:
    coordinator_key, admin_key = tmp_path / "coordinator.key", tmp_path / "admin.key"
    for key in (coordinator_key, admin_key):
        assert run_fleet("keygen", str(key)).returncode == 0
    lab = Lab(tmp_path, load_identity(admin_key), coordinator_key, admin_key, tmp_path / "st", [])
    yield Attacked(lab, lab.start())
    for running in lab.running:
        if running.proc.poll() is None:
            running.stop()


async def test_an_uncertified_key_cannot_poison_the_audit_log(attacked: Attacked) -> None:
    coord = attacked.coord
    attacker = Identity.generate()
    before = attacked.stored()
    signed = encode(make_admin_request(attacker, coord.node_id, DeviceList()))
    frames = [framed(os.urandom(GARBAGE_SIZE)) for _ in range(GARBAGE)]
    frames += [framed(signed)] + [framed(os.urandom(size)) for size in OVER_CAP]
    replies = await send_raw(coord, attacker, frames)

    # Every request was answered, and says why it was refused.
    codes = [r.code for r in replies]
    assert codes == ["invalid"] * GARBAGE + ["unauthorized", "too-large", "too-large"]
    assert "larger than an admin request can be" in replies[-1].message

    entries, size = attacked.stored()
    sent = sum(len(f) for f in frames)
    recorded = entries - before[0]
    assert 1 <= recorded < len(frames)  # the per-key rate limit: the rest is only counted
    assert size - before[1] <= recorded * PER_REFUSAL, (size, sent)
    print(f"\naudit poisoning: {sent} bytes sent, {size - before[1]} stored in {recorded} entries")

    listed, took = attacked.fleetctl("audit", "--json")
    assert listed.returncode == 0, listed.stderr
    assert took < NORMAL
    rows = json.loads(listed.stdout)
    suppressed = [r for r in rows if r["action"] == "refusals-suppressed"]
    assert len(suppressed) == 1
    detail = suppressed[0]["detail"]
    assert detail["suppressed"] == len(frames) - recorded
    assert detail["reason"].startswith(f"{len(frames) - recorded} refusals from 1 key suppressed")
    assert detail["top"][0]["key"] == str(attacker.node_id)
    mine = [r for r in rows if r["actor"] == str(attacker.node_id)]
    assert all(r["request"] == "" for r in mine)  # no byte of what it sent
    assert {r["detail"]["request_size"] for r in mine} <= {len(f) - 4 for f in frames}
    assert all(len(r["detail"]["request_sha256"]) == 64 for r in mine)

    verified, took = attacked.fleetctl("audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert "audit log intact" in verified.stdout
    assert took < NORMAL
    export = attacked.lab.tmp / "audit.jsonl"
    exported, took = attacked.fleetctl("audit", "export", "--out", str(export))
    assert exported.returncode == 0, exported.stderr
    assert took < NORMAL
    assert export.stat().st_size < 64 * 1024


async def test_a_log_poisoned_before_the_fix_can_still_be_read_verified_and_exported(
    attacked: Attacked,
) -> None:
    """Rows as the old code wrote them (each refusal with its 0.9 MiB raw request), put
    into the coordinator's database directly while it is stopped."""
    assert attacked.coord.stop() == 0
    db = await Database.open(attacked.db)
    try:
        async with db.transaction() as tx:
            for index in range(GARBAGE):
                await audit.append(
                    tx, time=time.time() + index, actor=str(Identity.generate().node_id),
                    action="unknown", outcome="refused",
                    detail={"code": "invalid", "reason": "not a signed admin request"},
                    request=os.urandom(GARBAGE_SIZE),
                )  # fmt: skip
    finally:
        await db.close()
    attacked.coord = attacked.lab.start()
    listed, took = attacked.fleetctl("audit", "--json")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == GARBAGE
    verified, _ = attacked.fleetctl("audit", "verify", "--json")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["entries"] == GARBAGE
    export = attacked.lab.tmp / "old.jsonl"
    exported, _ = attacked.fleetctl("audit", "export", "--out", str(export))
    assert exported.returncode == 0, exported.stderr
    assert export.stat().st_size > GARBAGE * GARBAGE_SIZE  # every byte of it, base64
    print(f"\nold poisoned log ({GARBAGE} x {GARBAGE_SIZE} B): fleetctl audit in {took:.2f} s")


async def test_a_push_only_key_hears_out_of_scope_for_a_target_outside_it(
    attacked: Attacked, tmp_path: Path
) -> None:
    ci_key, ci_chain = tmp_path / "ci.key", tmp_path / "ci.chain"
    assert run_fleet("keygen", str(ci_key)).returncode == 0
    ci_id = str(load_identity(ci_key).node_id)
    granted, _ = attacked.fleetctl(
        "grant", ci_id, "--allow", "push", "--scope", "tag:prod", "--expires", "1d",
        "--out", str(ci_chain),
    )  # fmt: skip
    assert granted.returncode == 0, granted.stderr
    for name, tag in (("prod-1", "prod"), ("lab-1", "lab")):
        node = Identity.generate().node_id
        added, _ = attacked.fleetctl("devices", "add", str(node), "--name", name, "--tag", tag)
        assert added.returncode == 0, added.stderr

    async def push(*targets: str) -> subprocess.CompletedProcess[str]:
        args = ["push", STORE, "--no-cache-check", *(a for t in targets for a in ("--to", t))]
        done, _ = await asyncio.to_thread(attacked.fleetctl, *args, key=ci_key, cert=ci_chain)
        return done

    outside = await push("prod-1", "lab-1")
    assert outside.returncode != 0
    assert (
        "target 'lab-1': out of scope for this certificate (its scope is tag:prod)"
        in outside.stderr
    )
    assert "Traceback" not in outside.stderr
    by_tag = await push("tag:lab")
    assert by_tag.returncode != 0
    assert "target 'tag:lab': out of scope for this certificate" in by_tag.stderr
    unknown = await push("nowhere")
    assert unknown.returncode != 0
    assert "target 'nowhere': no device with that name" in unknown.stderr
    inside = await push("prod-1")
    assert inside.returncode == 0, inside.stderr
    assert "pushed sequence 1" in inside.stdout
