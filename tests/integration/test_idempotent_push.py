"""A push whose answer is lost is never reported failed (issue 12): real processes.

The coordinator is started with FLEET_TEST_LOSE_PUSH_ANSWERS (fleet/coordinator/lossy.py):
it commits, audits and delivers pushes as always but never sends the first answers, as if
they were lost on a slow network. fleetctl sends the very same signed request again; the
coordinator answers the repeat with the original acceptance. When every answer is lost,
fleetctl says the outcome is unknown and how to check it, and `push --status` tells.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleet.coordinator.lossy import LOSE_PUSH_ANSWERS
from fleet.identity import Identity
from harness.fleetlab import FleetLab

STORE = "/nix/store/" + "b" * 32 + "-nixos-system-kiosk"
REPLY_TIMEOUT = "3"  # fleetctl --timeout: seconds for each answer


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[FleetLab]:
    """Relay and coordinator only (no agents, no Nix): pushes are checked at the coordinator."""
    lab = FleetLab(tmp_path / "lab", substituter="http://127.0.0.1:9", trusted_key="k:AAAA")
    lab.coordinator.env = {**lab.env, LOSE_PUSH_ANSWERS: "4"}
    try:
        await lab.start()
        yield lab
    finally:
        print(await lab.close())


async def test_a_lost_answer_is_retried_into_the_original_acceptance_and_never_reported_failed(
    lab: FleetLab,
) -> None:
    device = Identity.generate().node_id
    added = await lab.fleetctl("devices", "add", str(device), "--name", "kiosk-1")
    assert added.code == 0, added

    # Answers 1-3 lost: every send of the first push goes unanswered.
    unknown = await lab.fleetctl(
        "--timeout", REPLY_TIMEOUT, "push", STORE, "--to", "kiosk-1", "--no-cache-check"
    )
    assert unknown.code == 1, unknown
    assert "Traceback" not in unknown.err
    error = unknown.err.strip().splitlines()[-1]
    assert error.startswith("Error: no answer from the coordinator within 3 s to 3 sends")
    assert "the outcome of the push of sequence 1 is unknown" in error
    assert "`fleetctl push --status 1` shows whether it was accepted" in error
    status = await lab.fleetctl("push", "--status", "1", "--json")
    assert status.code == 0, status
    record = json.loads(status.out)
    assert (record["accepted"], record["store_path"], record["devices"]) == (True, STORE, 1)

    # Answer 4 lost: the second push's first send; its repeat gets the original acceptance.
    pushed = await lab.fleetctl(
        "--timeout", REPLY_TIMEOUT, "--log-level", "warning",
        "push", STORE, "--to", "kiosk-1", "--no-cache-check", "--json",
    )  # fmt: skip
    assert pushed.code == 0, pushed
    assert json.loads(pushed.out)["sequence"] == 2
    assert "admin_request_retry" in pushed.err

    # Two pushes, each once: one audit entry and one sequence number apiece.
    listing = await lab.fleetctl("audit", "--json")
    assert listing.code == 0, listing
    pushes = [e for e in json.loads(listing.out) if e["action"] == "push"]
    assert [(e["outcome"], e["detail"]["sequence"]) for e in pushes] == [
        ("accepted", 1),
        ("accepted", 2),
    ]
    assert not any(e["outcome"] == "refused" for e in json.loads(listing.out))
    missing = await lab.fleetctl("push", "--status", "3")
    assert missing.code == 1
    assert missing.err.strip() == (
        "Error: no push of sequence 3 was accepted (the highest accepted is 2)"
    )
    lost = [e for e in lab.coordinator.events() if e.get("event") == "push_answer_lost_for_tests"]
    assert len(lost) == 4
