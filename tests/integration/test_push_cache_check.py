"""`fleetctl push` checks the binary cache before it signs, with every real part: systems built
by real Nix into a chroot store, a `nix-build` result link, a binary cache Nix wrote and
signed, served over HTTP, and real `fleet relay`, `fleet coordinator`, `fleet agent` and
`fleetctl` processes (harness/fleetlab.py).

A refused push must not reach the coordinator at all: no sequence asked for, nothing stored
or audited. That is read from the coordinator's own database (its admin request nonces, its
announcements) and its audit log.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from fleet.identity import Identity
from harness.fleetlab import FleetctlResult, FleetLab
from harness.nixlab import Builder
from tests.conftest import NixCache, Systems

pytestmark = pytest.mark.nix


def nix_build_result(builder: Builder, version: str, link: Path) -> str:
    """`nix-build` as a user runs it, leaving the `result` symlink; the store path it printed."""
    argv = [
        "nix-build", "--store", str(builder.store.root), str(builder.expression),
        "--argstr", "version", version, "--out-link", str(link),
    ]  # fmt: skip
    done = subprocess.run(
        argv, env=builder.env.environ(), capture_output=True, text=True, timeout=120, check=True
    )
    assert link.is_symlink()
    return done.stdout.strip()


def deriver_of(builder: Builder, path: str) -> str:
    argv = ["nix-store", "--store", str(builder.store.root), "--query", "--deriver", path]
    done = subprocess.run(
        argv, env=builder.env.environ(), capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def coordinator_rows(lab: FleetLab) -> dict[str, int]:
    """How many admin requests reached the coordinator (each leaves its nonce) and pushes."""
    database = lab.root / "coordinator" / "coordinator.db"
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return {
            table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
            for table in ("admin_nonces", "announcements", "audit")
        }


def pushed_sequence(result: FleetctlResult) -> int:
    line = next(line for line in result.out.splitlines() if line.startswith("pushed sequence"))
    return int(line.removeprefix("pushed sequence ").partition(":")[0])


async def test_a_result_link_is_checked_in_the_http_cache_and_applied(
    lab: FleetLab, nix_builder: Builder, nix_cache: NixCache, nix_systems: Systems
) -> None:
    dev = lab.add_agent("kiosk-1")
    await lab.launch(dev)
    link = lab.root / "result"
    v1 = nix_build_result(nix_builder, "1", link)
    assert v1 == nix_systems.v1.path

    push = await lab.fleetctl(
        "push", str(link), "--to", "kiosk-1", "--wait",
        "--cache", nix_cache.url, "--trusted-public-key", nix_builder.key.public_key,
    )  # fmt: skip
    assert push.code == 0, push
    assert push.err == "", push
    assert (
        f"cache check: all 2 paths of the closure are in {nix_cache.url}, signed by fleet-test-1"
        in push.out
    ), push
    assert f"pushed sequence 1: {v1} (switch)" in push.out, push
    assert "kiosk-1: applied" in push.out, push
    assert await dev.profile() == v1
    assert dev.switches() == [f"switch {v1}"]


async def test_refused_pushes_never_reach_the_coordinator(
    lab: FleetLab, nix_builder: Builder, nix_cache: NixCache, nix_systems: Systems
) -> None:
    added = await lab.fleetctl(
        "devices", "add", str(Identity.generate().node_id), "--name", "kiosk-1"
    )
    assert added.code == 0, added
    before = coordinator_rows(lab)
    assert before["announcements"] == 0

    v1, v2 = nix_systems.v1.path, nix_systems.v2.path
    trusted = nix_builder.key.public_key
    wrong = nix_builder.wrong_key.public_key
    typo = v1[:11] + ("0" if v1[11] != "0" else "1") + v1[12:]
    never_built = "/nix/store/" + "0" * 32 + "-nixos-system-fleet-test-never"
    # v2's payload leaves the cache: the closure is incomplete
    payload_hash = nix_systems.v2.payload.removeprefix("/nix/store/")[:32]
    (nix_cache.directory / f"{payload_hash}.narinfo").unlink()
    drv = deriver_of(nix_builder, v1)
    assert drv.endswith(".drv")

    cases = [
        (never_built, trusted, 1, f"{never_built} is not in the binary cache ({nix_cache.url})"),
        (typo, trusted, 1, "or check the path for a typo"),
        (nix_systems.unsigned.path, trusted, 1, "has it, but it has no signature"),
        (v1, wrong, 1, "signed only by fleet-test-1, not by a trusted key (fleet-test-wrong-1)"),
        (v2, trusted, 1, f"{nix_systems.v2.payload} (in the closure of {v2}) is not in"),
        (drv, trusted, 2, "is a derivation, not a system: build it first"),
        (v1 + "/bin", trusted, 2, f"is inside the store path {v1}; pass that path itself"),
    ]
    for path, key, code, message in cases:
        refused = await lab.fleetctl(
            "push", path, "--to", "kiosk-1", "--cache", nix_cache.url, "--trusted-public-key", key
        )
        assert refused.code == code, refused
        [line] = refused.err.splitlines()  # one clear line
        assert line.startswith("Error: "), refused
        assert message in line, refused
        assert "Traceback" not in refused.err
        assert refused.out == "", refused

    assert coordinator_rows(lab) == before  # not one request: no sequence, nothing stored
    audit = await lab.fleetctl("audit", "--json")
    assert audit.code == 0, audit
    assert [e["action"] for e in json.loads(audit.out) if e["action"] == "push"] == []

    checked = await lab.fleetctl(
        "push", v1, "--to", "kiosk-1", "--cache", nix_cache.url, "--trusted-public-key", trusted
    )
    assert checked.code == 0, checked
    assert pushed_sequence(checked) == 1  # the refusals took no number

    unchecked = await lab.fleetctl("push", v2, "--to", "kiosk-1")
    assert unchecked.code == 0, unchecked
    assert unchecked.err.startswith("warning: no binary cache configured"), unchecked
    assert len(unchecked.err.splitlines()) == 1, unchecked
    assert pushed_sequence(unchecked) == 2

    skipped = await lab.fleetctl(
        "push", never_built, "--to", "kiosk-1", "--cache", nix_cache.url, "--no-cache-check",
        "--json",
    )  # fmt: skip
    assert skipped.code == 0, skipped
    assert skipped.err == (
        f"notice: --no-cache-check: not checking that the devices can fetch {never_built}\n"
    )
    doc = json.loads(skipped.out)
    assert (doc["sequence"], doc["cache_check"]) == (3, {"result": "skipped"})
    assert coordinator_rows(lab)["announcements"] == 3

    # the same cache read as the directory Nix wrote (file://), as CI that uploads to a mount
    from_disk = await lab.fleetctl(
        "push", v1, "--to", "kiosk-1", "--cache", f"file://{nix_cache.directory}",
        "--trusted-public-key", trusted, "--json",
    )  # fmt: skip
    assert from_disk.code == 0, from_disk
    assert json.loads(from_disk.out)["cache_check"]["result"] == "passed"
