"""fleetctl's admin commands as real processes against a real `fleet coordinator`: short ids
wherever a device is expected, `--json` on every command, and a grant that could not be
recorded (exit 4) recorded later with `record-grant`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleet.capability import authority_of, certificates_of, format_id, read_chain
from fleet.identity import Identity, NodeId, load_identity
from harness.cli import fleetctl_argv
from harness.coordinator_process import CoordinatorProcess, Lab
from tests.integration.test_capabilities_cli import fleetctl, keygen
from tests.integration.test_coordinator import FakeAgent, endpoint
from tests.integration.test_fleetctl import _fleetctl as fleetctl_async

STORE = "/nix/store/" + "d" * 32 + "-nixos-system-v3"


@dataclass
class Admin:
    lab: Lab
    coord: CoordinatorProcess
    key: Path

    @property
    def root(self) -> str:
        return str(self.lab.admin.node_id)

    def argv(self, *args: str) -> list[str]:
        host, port = self.coord.address
        target = f"{self.coord.node_id}@{host}:{port}"
        return fleetctl_argv("--coordinator", target, "--key", str(self.key), *args)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return fleetctl(*self.argv(*args)[len(fleetctl_argv()) :])

    def json(self, *args: str) -> Any:
        """Run with --json: exit 0, stdout one JSON document, nothing for people on stderr."""
        result = self.run(*args, "--json")
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        return json.loads(result.stdout)


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[Admin]:
    """A coordinator whose trust root is the admin's key (made with `fleetctl org init`)."""
    root_key = tmp_path / "root.key"
    init = fleetctl("org", "init", "--out", str(root_key), "--json")
    assert init.returncode == 0, init.stderr
    root = load_identity(root_key)
    assert json.loads(init.stdout) == {"id": str(root.node_id), "key_file": str(root_key)}
    coordinator_key = tmp_path / "coordinator.key"
    keygen(coordinator_key)
    lab = Lab(tmp_path, root, coordinator_key, root_key, tmp_path / "state", [])
    yield Admin(lab, lab.start(), root_key)
    for running in lab.running:
        if running.proc.poll() is None:
            running.stop()


def _twin(first_bytes: bytes) -> NodeId:
    """A node id whose text starts with 'aaaaaaaa' (40 zero bits): twins share a short id."""
    return NodeId(b"\x00" * 5 + first_bytes + os.urandom(27 - len(first_bytes)))


async def test_short_ids_name_devices_everywhere_and_ambiguity_lists_candidates(
    admin: Admin, tmp_path: Path
) -> None:
    twin_a, twin_b = _twin(b"\x10"), _twin(b"\x90")
    router = NodeId.parse(keygen(tmp_path / "router.key"))
    for node, name in ((twin_a, "kiosk-1"), (twin_b, "kiosk-2"), (router, "router")):
        doc = admin.json("devices", "add", str(node), "--name", name, "--tag", "kiosk")
        assert doc == {"name": name, "id": str(node), "tags": ["kiosk"], "approved": True}

    # a device that connected on its own is pending; the short id a table shows approves it
    device = Identity.generate()
    pending = device.node_id
    async with endpoint(device) as ep:
        agent = await FakeAgent.connect(ep, admin.coord)
        for _ in range(50):
            listed = json.loads((await fleetctl_async(admin.argv("devices", "list", "--json")))[1])
            if any(d["id"] == str(pending) for d in listed):
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("the connected device never showed up as pending")
        code, out, err = await fleetctl_async(admin.argv("devices", "approve", pending.short()))
        assert code == 0, err
        assert out == f"approved {pending.short()}\n"
        await agent.conn.close()
    listed = admin.json("devices", "list")
    assert {d["id"]: d["approved"] for d in listed}[str(pending)] is True

    pushed = admin.json("push", STORE, "--to", router.short())
    assert pushed["devices"] == [str(router)]  # the full id is what got signed

    for args in (["push", STORE, "--to", "aaaaaaaa"], ["devices", "remove", "aaaa"]):
        refused = admin.run(*args)
        assert refused.returncode == 1
        assert refused.stdout == ""
        assert "short id of 2 devices" in refused.stderr
        assert f"kiosk-1 {twin_a}" in refused.stderr
        assert f"kiosk-2 {twin_b}" in refused.stderr
        assert "Traceback" not in refused.stderr
    pushes = [e for e in admin.json("audit") if e["action"] == "push"]
    assert len(pushes) == 1  # the ambiguous push was not sent

    removed = admin.json("devices", "remove", str(twin_b)[:12])
    assert removed == {"name": "kiosk-2", "id": str(twin_b), "removed": True}
    # now only kiosk-1 starts with aaaaaaaa: the same short id is no longer ambiguous
    assert admin.json("devices", "remove", "aaaaaaaa")["name"] == "kiosk-1"
    assert {d["name"] for d in admin.json("devices", "list")} == {"router", None}

    not_signed = admin.run(
        "grant", router.short(), "--allow", "read", "--scope", "*",
        "--out", str(tmp_path / "x.chain"),
    )  # fmt: skip
    assert not_signed.returncode == 2
    assert "full node id" in not_signed.stderr
    assert not (tmp_path / "x.chain").exists()


def test_every_admin_command_prints_one_json_document(admin: Admin, tmp_path: Path) -> None:
    lead_id = keygen(tmp_path / "lead.key")
    chain_file = tmp_path / "lead.chain"
    granted = admin.json(
        "grant", lead_id, "--allow", "push,read", "--scope", "tag:lab", "--expires", "2h",
        "--out", str(chain_file),
    )  # fmt: skip
    [(cert_id, cert)] = certificates_of(read_chain(chain_file))
    assert granted["certificate"] == format_id(cert_id)
    assert granted["subject"] == lead_id
    assert granted["recorded"] is True
    assert granted["record_error"] is None
    assert granted["not_after"].endswith("Z")

    device = keygen(tmp_path / "d.key")
    assert admin.json("devices", "add", device, "--name", "lab-1", "--tag", "lab")["id"] == device
    assert admin.json("devices", "approve", "lab-1")["id"] == device
    assert admin.json("devices", "remove", device)["name"] == "lab-1"

    listed = admin.json("audit")
    assert admin.json("audit", "list") == listed  # `audit list` is `audit`
    assert [e["action"] for e in listed] == [
        "grant", "device-add", "device-approve", "device-remove",
    ]  # fmt: skip
    assert all(e["time"].endswith("Z") for e in listed)
    grant_detail = listed[0]["detail"]
    assert grant_detail["certificate"] == format_id(cert_id)
    assert grant_detail["not_after"] == granted["not_after"]  # ISO 8601, as the grant said
    assert [e["action"] for e in admin.json("audit", "list", "--actor", admin.root[:8])] == [
        e["action"] for e in listed
    ]

    verified = admin.json("audit", "verify")
    assert verified["intact"] is True
    assert verified["entries"] == len(listed)
    assert verified["trust_roots"] == [admin.root]
    assert admin.json("audit", "--verify")["intact"] is True
    before_subcommand = admin.run("audit", "--json", "verify")  # --json given to `audit`
    assert json.loads(before_subcommand.stdout)["intact"] is True

    export = tmp_path / "audit.jsonl"
    exported = admin.json("audit", "export", "--out", str(export))
    assert exported == {
        "file": str(export),
        "coordinator": str(admin.coord.node_id),
        "entries": len(listed),
        "checkpoints": exported["checkpoints"],
    }
    offline_verify = ("audit", "verify", "--file", str(export), "--json", "--trust-root")
    offline = fleetctl(*offline_verify, admin.root)
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)["intact"] is True
    broken = fleetctl(*offline_verify, str(Identity.generate().node_id))
    assert broken.returncode == 1
    assert json.loads(broken.stdout)["intact"] is False  # a result, not a crash
    assert "audit log is NOT intact" in broken.stderr

    revoked = admin.json("revoke", format_id(cert_id), "--reason", "test")
    assert revoked == {"certificate": format_id(cert_id), "revoked": True, "reason": "test"}
    assert cert.subject == NodeId.parse(lead_id)


def test_a_grant_that_cannot_be_recorded_exits_4_and_is_recorded_later(
    admin: Admin, tmp_path: Path
) -> None:
    subject = keygen(tmp_path / "ci.key")
    out = tmp_path / "ci.chain"
    nobody = f"{Identity.generate().node_id}@127.0.0.1:9"
    grant = (
        "grant", subject, "--allow", "push", "--scope", "tag:ci", "--expires", "1h",
        "--out", str(out),
    )  # fmt: skip
    offline = ("--coordinator", nobody, "--key", str(admin.key), "--timeout", "1")
    result = fleetctl(*offline, *grant)
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr
    chain = read_chain(out)
    [(cert_id, cert)] = certificates_of(chain)
    assert result.stdout == format_id(cert_id) + "\n"
    [line] = result.stderr.splitlines()  # one line says it all
    assert line.startswith("Error: the grant was NOT recorded in the coordinator's audit log")
    assert "cannot reach coordinator" in line
    assert f"is valid and was written to {out} (certificate {format_id(cert_id)})" in line
    assert line.endswith(f"fleetctl record-grant {out}")
    # the chain really is valid: the subject can use it before anything is recorded
    authority = authority_of(cert.subject, chain, {admin.lab.admin.node_id}, time.time())
    assert authority.scope.describe() == "tag:ci"

    as_json = fleetctl(*offline, *grant, "--json")
    assert as_json.returncode == 4
    doc = json.loads(as_json.stdout)
    assert (doc["recorded"], doc["chain_file"]) == (False, str(out))
    assert "cannot reach coordinator" in doc["record_error"]

    no_settings = fleetctl("--config", "/dev/null", "--key", str(admin.key), *grant)
    assert no_settings.returncode == 4
    assert "no coordinator" in no_settings.stderr

    assert [e for e in admin.json("audit") if e["action"] == "grant"] == []
    recorded = admin.run("record-grant", str(out))
    assert recorded.returncode == 0, recorded.stderr
    latest = read_chain(out)
    [(latest_id, _)] = certificates_of(latest)
    assert recorded.stdout == f"recorded certificate {format_id(latest_id)} for {subject}\n"
    [entry] = [e for e in admin.json("audit") if e["action"] == "grant"]
    assert entry["detail"]["certificate"] == format_id(latest_id)

    other = tmp_path / "other.key"
    keygen(other)
    host, port = admin.coord.address
    wrong_key = fleetctl(
        "--coordinator", f"{admin.coord.node_id}@{host}:{port}", "--key", str(other),
        "record-grant", str(out),
    )  # fmt: skip
    assert wrong_key.returncode == 1
    assert "record it with the issuer's key" in wrong_key.stderr
