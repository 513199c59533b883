"""Enrollment at fleet scale, with real processes: `fleetctl devices add --from FILE` (CSV,
JSON lines, stdin; a bad line refuses the whole file) and enrollment tokens presented by
real `fleet agent`s (valid: registered, approved, tagged, and reached by a push to its tag;
expired, outside the signer's scope, used up, revoked: refused, and all of it in the audit
log)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from fleet.admin.enroll_token_file import write_token_file
from fleet.capability import read_chain
from fleet.identity import Identity, load_identity, write_new_key
from fleet.protocol.enroll_token import format_token_file, make_enroll_token
from fleet.protocol.messages import EnrollToken
from fleet.wire import decode
from harness.fleetlab import Agent, FleetctlResult, FleetLab
from tests.conftest import Systems

pytestmark = pytest.mark.nix


def ids(n: int) -> list[str]:
    return [str(Identity.generate().node_id) for _ in range(n)]


async def devices(lab: FleetLab) -> dict[str, dict[str, Any]]:
    listed = await lab.fleetctl("devices", "list", "--json")
    assert listed.code == 0, listed
    return {row["id"]: row for row in json.loads(listed.out)}


async def audit(lab: FleetLab) -> list[dict[str, Any]]:
    result = await lab.fleetctl("audit", "--json")
    assert result.code == 0, result
    entries: list[dict[str, Any]] = json.loads(result.out)
    return entries


async def fleetctl_stdin(lab: FleetLab, text: str, *args: str) -> FleetctlResult:
    argv = lab.fleetctl_argv(*args)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=lab.env,
    )
    out, err = await asyncio.wait_for(proc.communicate(text.encode()), 60)
    assert proc.returncode is not None
    return FleetctlResult(argv, proc.returncode, out.decode(), err.decode())


async def test_bulk_add_from_csv_json_lines_and_stdin(lab: FleetLab, tmp_path: Path) -> None:
    a, b, c, d, e, f = ids(6)
    csv_file = tmp_path / "devices.csv"
    csv_file.write_text(f"id,name,tags\n{a},kiosk-1,kiosk berlin\n\n{b},kiosk-2,tag:kiosk\n")
    jsonl = tmp_path / "devices.jsonl"
    jsonl.write_text(
        json.dumps({"id": c, "name": "router-1", "tags": ["router"]})
        + "\n"
        + json.dumps({"id": d, "name": "router-2", "tags": "router edge"})
        + "\n"
    )
    added = await lab.fleetctl("devices", "add", "--from", str(csv_file))
    assert added.code == 0, added
    assert f"added 2 devices from {csv_file}" in added.out
    added = await lab.fleetctl("devices", "add", "--from", str(jsonl), "--json")
    assert added.code == 0, added
    assert json.loads(added.out) == {"added": 2, "skipped": []}
    piped = await fleetctl_stdin(
        lab, f"name,id\nscreen-1,{e}\nscreen-2,{f}\n", "devices", "add", "--from", "-"
    )
    assert piped.code == 0, piped
    assert "added 2 devices from stdin" in piped.out

    listed = await devices(lab)
    assert {listed[x]["name"]: (listed[x]["tags"], listed[x]["approved"]) for x in listed} == {
        "kiosk-1": (["berlin", "kiosk"], True),
        "kiosk-2": (["kiosk"], True),
        "router-1": (["router"], True),
        "router-2": (["edge", "router"], True),
        "screen-1": ([], True),
        "screen-2": ([], True),
    }
    batches = [e for e in await audit(lab) if e["action"] == "device-add-batch"]
    assert [(e["outcome"], e["detail"]["added"]) for e in batches] == [("accepted", 2)] * 3


async def test_a_bad_line_refuses_the_whole_file_and_stores_nothing(
    lab: FleetLab, tmp_path: Path
) -> None:
    a, b, c = ids(3)
    cases = {
        "bad id": (f"id,name,tags\n{a},ok-1,\nnot-an-id,ok-2,\n", "line 3: bad id"),
        "duplicate id": (f"id,name\n{a},ok-1\n{b},ok-2\n{a},ok-3\n", "line 4: id"),
        "unknown column": (f"id,name,color\n{a},ok-1,red\n", "line 1: unknown column 'color'"),
        "bad tag": (f"id,name,tags\n{a},ok-1,good\n{b},ok-2,bad/tag\n", "line 3: tag"),
        "json key": (json.dumps({"id": a, "name": "ok-1", "owner": "x"}), "line 1: unknown key"),
    }
    for what, (text, expected) in cases.items():
        path = tmp_path / f"{what.replace(' ', '-')}.txt"
        path.write_text(text)
        result = await lab.fleetctl("devices", "add", "--from", str(path))
        assert result.code == 1, (what, result)
        assert expected in result.err, (what, result)
        assert "Traceback" not in result.err
    assert await devices(lab) == {}

    # Refused by the coordinator (already registered), told as the file's line.
    await lab.fleetctl("devices", "add", b, "--name", "taken")
    path = tmp_path / "existing.csv"
    path.write_text(f"id,name\n{a},new-1\n{b},new-2\n{c},new-3\n")
    result = await lab.fleetctl("devices", "add", "--from", str(path))
    assert result.code == 1, result
    assert f"{path} line 3: device {b[:10]} is already registered as 'taken'" in result.err
    assert set(await devices(lab)) == {b}  # nothing of the file stored
    skipped = await lab.fleetctl("devices", "add", "--from", str(path), "--skip-existing", "--json")
    assert skipped.code == 0, skipped
    assert json.loads(skipped.out) == {"added": 2, "skipped": [b]}
    listed = await devices(lab)
    assert {row["name"] for row in listed.values()} == {"taken", "new-1", "new-3"}


async def test_bulk_add_outside_the_admins_scope_names_the_line(
    lab: FleetLab, tmp_path: Path
) -> None:
    scoped_key, chain = await scoped_admin(lab, tmp_path, "kiosk")
    a, b = ids(2)
    path = tmp_path / "mixed.csv"
    path.write_text(f"id,name,tags\n{a},kiosk-1,kiosk\n{b},router-1,router\n")
    result = await lab.fleetctl(
        "--cert", str(chain), "devices", "add", "--from", str(path), key=scoped_key
    )
    assert result.code == 1, result
    assert f"{path} line 3: " in result.err, result
    assert "(tags router) is outside the scope tag:kiosk" in result.err, result
    assert await devices(lab) == {}


async def scoped_admin(lab: FleetLab, tmp_path: Path, tag: str) -> tuple[Path, Path]:
    """A key granted `devices` on tag:TAG by the root, and its chain file."""
    key = tmp_path / f"scoped-{tag}.key"
    subject = write_new_key(key).node_id
    chain = tmp_path / f"scoped-{tag}.chain"
    granted = await lab.fleetctl(
        "grant", str(subject), "--allow", "devices", "--scope", f"tag:{tag}", "--out", str(chain)
    )
    assert granted.code == 0, granted
    return key, chain


def with_token(agent: Agent, token: Path) -> Agent:
    agent.daemon.args += ["--enroll-token", str(token)]
    return agent


async def test_enrollment_tokens_valid_expired_out_of_scope_and_used_up(
    lab: FleetLab, nix_systems: Systems, tmp_path: Path
) -> None:
    token = tmp_path / "kiosk.token"
    created = await lab.fleetctl(
        "enroll-token", "create", "--tag", "kiosk", "--expires", "1h", "--out", str(token)
    )
    assert created.code == 0, created
    assert stat.S_IMODE(os.stat(token).st_mode) == 0o600
    expired = tmp_path / "expired.token"
    made = await lab.fleetctl(
        "enroll-token", "create", "--tag", "kiosk", "--expires", "1s", "--out", str(expired)
    )
    assert made.code == 0, made
    # A token its signer could not have made with fleetctl: tags outside its scope.
    scoped_key, chain = await scoped_admin(lab, tmp_path, "kiosk")
    forged = tmp_path / "forged.token"
    envelope = make_enroll_token(
        load_identity(scoped_key),
        lab.coordinator_id,
        ("router",),
        lifetime=3600,
        uses=1,
        chain=read_chain(chain),
    )
    write_token_file(forged, format_token_file(envelope, decode(envelope.payload, EnrollToken)))
    withdrawn = tmp_path / "withdrawn.token"
    made = await lab.fleetctl(
        "enroll-token", "create", "--tag", "kiosk", "--expires", "1h", "--out", str(withdrawn)
    )
    assert made.code == 0, made
    revoked = await lab.fleetctl("enroll-token", "revoke", str(withdrawn))
    assert revoked.code == 0, revoked
    await asyncio.sleep(1.5)  # `expired` is now

    good = with_token(lab.add_agent("first", tags=("kiosk",)), token)
    await lab.start_agents(good)
    rows = await lab.wait_status(
        lambda rows: any(r["id"] == str(good.node_id) for r in rows.values())
    )
    listed = await devices(lab)
    assert listed[str(good.node_id)]["approved"] is True
    assert listed[str(good.node_id)]["tags"] == ["kiosk"]
    name = listed[str(good.node_id)]["name"]
    assert rows  # seen in the status too

    replay = with_token(lab.add_agent("second", tags=("kiosk",)), token)  # single use
    late = with_token(lab.add_agent("late", tags=("kiosk",)), expired)
    outside = with_token(lab.add_agent("outside", tags=("router",)), forged)
    stopped = with_token(lab.add_agent("stopped", tags=("kiosk",)), withdrawn)
    await lab.start_agents(replay, late, outside, stopped)

    push = await lab.fleetctl("push", nix_systems.v1.path, "--to", "tag:kiosk", "--wait")
    assert push.code == 0, push
    assert f"{name}: applied" in push.out, push
    assert await good.profile() == nix_systems.v1.path

    async def refused_all() -> list[dict[str, Any]]:
        while True:
            entries = [e for e in await audit(lab) if e["action"] == "enroll"]
            if len([e for e in entries if e["outcome"] == "refused"]) >= 4:
                return entries
            await asyncio.sleep(0.5)

    entries = await asyncio.wait_for(refused_all(), 30)
    accepted = [e for e in entries if e["outcome"] == "accepted"]
    assert len(accepted) == 1
    assert accepted[0]["actor"] == str(lab.admin_id)  # who signed the token
    assert accepted[0]["detail"]["node_id"] == str(good.node_id)  # which device used it
    refused = {e["actor"]: e["detail"]["code"] for e in entries if e["outcome"] == "refused"}
    assert refused == {
        str(replay.node_id): "used-up",
        str(late.node_id): "expired",
        str(outside.node_id): "unauthorized",
        str(stopped.node_id): "revoked",
    }
    listed = await devices(lab)
    for agent in (replay, late, outside, stopped):  # connected, but only pending
        assert listed[str(agent.node_id)]["approved"] is False
    verified = await lab.fleetctl("audit", "verify")
    assert verified.code == 0, verified
    armored = token.read_text().split("-----")[2].strip()[:40]  # never in a log
    for daemon in (lab.coordinator, *(a.daemon for a in (good, replay, late, outside, stopped))):
        assert armored not in daemon.tail(10_000)
