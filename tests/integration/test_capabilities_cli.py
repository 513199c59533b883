"""The capability model and the audit trail through the real CLIs: `fleetctl org init`,
`grant`, scoped pushes, `revoke`, `audit`, `audit verify` (also after editing, deleting
and reordering rows in the coordinator's SQLite file) and an export verified offline."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet.identity import load_identity
from harness.cli import cli_env, fleetctl_argv, run_fleet
from harness.coordinator_process import CoordinatorProcess, Lab

STORE = "/nix/store/" + "d" * 32 + "-nixos-system-v2"


def fleetctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fleetctl_argv(*args), capture_output=True, text=True, env=cli_env(), timeout=60
    )


def keygen(path: Path) -> str:
    result = run_fleet("keygen", str(path))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@dataclass
class Org:
    lab: Lab
    coord: CoordinatorProcess
    root_key: Path
    lead_key: Path
    ci_key: Path
    lead_chain: Path
    ci_chain: Path
    ci_cert: str

    def target(self) -> str:
        host, port = self.coord.address
        return f"{self.coord.node_id}@{host}:{port}"

    def as_root(self, *args: str) -> subprocess.CompletedProcess[str]:
        return fleetctl("--coordinator", self.target(), "--key", str(self.root_key), *args)

    def as_lead(self, *args: str) -> subprocess.CompletedProcess[str]:
        return fleetctl(
            "--coordinator", self.target(), "--key", str(self.lead_key),
            "--cert", str(self.lead_chain), *args,
        )  # fmt: skip

    def as_ci(self, *args: str) -> subprocess.CompletedProcess[str]:
        return fleetctl(
            "--coordinator", self.target(), "--key", str(self.ci_key),
            "--cert", str(self.ci_chain), *args,
        )  # fmt: skip

    def restart(self) -> None:
        assert self.coord.stop() == 0
        self.coord = self.lab.start()


@pytest.fixture
def org(tmp_path: Path) -> Iterator[Org]:
    root_key = tmp_path / "root.key"
    init = fleetctl("org", "init", "--out", str(root_key))
    assert init.returncode == 0, init.stderr
    root_id = init.stdout.strip()
    assert f"--trust-root {root_id}" in init.stderr
    assert (root_key.stat().st_mode & 0o777) == 0o600
    coordinator_key = tmp_path / "coordinator.key"
    keygen(coordinator_key)
    lab = Lab(tmp_path, load_identity(root_key), coordinator_key, root_key, tmp_path / "st", [])
    coord = lab.start()
    lead_key, ci_key = tmp_path / "lead.key", tmp_path / "ci.key"
    lead_id, ci_id = keygen(lead_key), keygen(ci_key)
    lead_chain, ci_chain = tmp_path / "lead.chain", tmp_path / "ci.chain"
    state = Org(lab, coord, root_key, lead_key, ci_key, lead_chain, ci_chain, "")

    grant = state.as_root(
        "grant", lead_id, "--allow", "push,devices,read", "--scope", "tag:prod,tag:lab",
        "--expires", "30d", "--delegate", "--out", str(lead_chain),
    )  # fmt: skip
    assert grant.returncode == 0, grant.stderr
    assert "may delegate" in grant.stderr
    sub = state.as_lead(
        "grant", ci_id, "--allow", "push,read", "--scope", "tag:prod", "--expires", "7d",
        "--out", str(ci_chain),
    )  # fmt: skip
    assert sub.returncode == 0, sub.stderr
    state.ci_cert = sub.stdout.strip()
    too_wide = state.as_lead(
        "grant", ci_id, "--allow", "push,audit", "--scope", "tag:prod", "--out",
        str(tmp_path / "x.chain"),
    )  # fmt: skip
    assert too_wide.returncode == 1
    assert "grants audit, which its issuer" in too_wide.stderr
    yield state
    for running in lab.running:
        if running.proc.poll() is None:
            running.stop()


def test_scoped_ci_key_then_revoked(org: Org, tmp_path: Path) -> None:
    prod, lab = keygen(tmp_path / "prod.key"), keygen(tmp_path / "lab.key")
    for node, name, tag in ((prod, "prod-1", "prod"), (lab, "lab-1", "lab")):
        added = org.as_lead("devices", "add", node, "--name", name, "--tag", tag)
        assert added.returncode == 0, added.stderr
    office = org.as_lead("devices", "add", keygen(tmp_path / "o.key"), "--name", "o", "--tag", "x")
    assert office.returncode == 1
    assert "outside the scope" in office.stderr

    pushed = org.as_ci("push", STORE, "--to", "prod-1")
    assert pushed.returncode == 0, pushed.stderr
    assert "pushed sequence 1" in pushed.stdout
    outside = org.as_ci("push", STORE, "--to", "lab-1")
    assert outside.returncode == 1
    assert "outside the scope tag:prod" in outside.stderr
    cannot_add = org.as_ci("devices", "add", keygen(tmp_path / "c.key"), "--name", "c")
    assert cannot_add.returncode == 1
    assert "may not devices" in cannot_add.stderr

    revoked = org.as_lead("revoke", org.ci_cert, "--reason", "leaked")
    assert revoked.returncode == 0, revoked.stderr
    after = org.as_ci("push", STORE, "--to", "prod-1")
    assert after.returncode == 1
    assert "has been revoked" in after.stderr
    org.restart()
    still = org.as_ci("push", STORE, "--to", "prod-1")
    assert "has been revoked" in still.stderr

    listing = org.as_root("audit", "--json")
    assert listing.returncode == 0, listing.stderr
    entries = json.loads(listing.stdout)
    seen = [(e["action"], e["outcome"]) for e in entries]
    for expected in [
        ("grant", "accepted"),
        ("device-add", "accepted"),
        ("push", "accepted"),
        ("push", "refused"),
        ("revoke", "accepted"),
    ]:
        assert expected in seen
    ci_id = load_identity(org.ci_key).node_id
    mine = json.loads(org.as_root("audit", "--json", "--actor", str(ci_id)[:12]).stdout)
    assert mine
    assert {e["actor"] for e in mine} == {str(ci_id)}
    assert json.loads(org.as_root("audit", "--json", "--since", "2099-01-01").stdout) == []
    table = org.as_root("audit", "--since", "1h")
    assert "unauthorized/scope" in table.stdout
    no_audit = org.as_lead("audit")
    assert "may not audit" in no_audit.stderr

    verified = org.as_root("audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert "audit log intact" in verified.stdout
    assert "audit log intact" in org.as_root("audit", "--verify").stdout
    export = tmp_path / "audit.jsonl"
    assert org.as_root("audit", "export", "--out", str(export)).returncode == 0
    root_id = str(load_identity(org.root_key).node_id)
    offline = fleetctl("audit", "verify", "--file", str(export), "--trust-root", root_id)
    assert offline.returncode == 0, offline.stderr
    assert "audit log intact" in offline.stdout
    other_root = str(load_identity(org.ci_key).node_id)
    wrong = fleetctl("audit", "verify", "--file", str(export), "--trust-root", other_root)
    assert wrong.returncode == 1
    assert "accepted without authority" in wrong.stderr


def tamper(db: Path, *statements: str) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
        conn.execute("DROP TRIGGER IF EXISTS audit_no_delete")
        for statement in statements:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


SWAP_2_5 = [
    "UPDATE audit SET id = 1000 WHERE id = 2",
    "UPDATE audit SET id = 2 WHERE id = 5",
    "UPDATE audit SET id = 5 WHERE id = 1000",
]


@pytest.mark.parametrize(
    ("statements", "named"),
    [
        (['UPDATE audit SET detail = \'{"name":"evil"}\' WHERE id = 3'], "entry 3: content"),
        (["DELETE FROM audit WHERE id = 4"], "entry 4: missing"),
        (SWAP_2_5, "entry 2: "),
        (["DELETE FROM audit WHERE id >= 6"], "entry 6: missing"),
    ],
    ids=["edit", "delete", "reorder", "truncate"],
)
def test_audit_verify_names_the_first_bad_entry(
    org: Org, tmp_path: Path, statements: list[str], named: str
) -> None:
    for index in range(4):
        node = keygen(tmp_path / f"d{index}.key")
        assert (
            org.as_lead("devices", "add", node, "--name", f"d{index}", "--tag", "lab").returncode
            == 0
        )
    before = org.as_root("audit", "verify")  # 2 grants + 4 device-adds, sealed by a checkpoint
    assert before.returncode == 0, before.stderr
    assert "6 entries" in before.stdout
    assert org.coord.stop() == 0
    tamper(org.lab.state_dir / "coordinator.db", *statements)
    org.coord = org.lab.start()
    broken = org.as_root("audit", "verify")
    assert broken.returncode == 1
    assert "audit log is NOT intact" in broken.stderr
    assert named in broken.stderr
