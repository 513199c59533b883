"""What the admin is told when a device refuses a push, with every real part (harness/fleetlab.py):
`fleet relay`, `fleet coordinator`, `fleet agent`s with chroot Nix stores and a binary cache
over HTTP, and `fleetctl` processes, one of them on a real pseudo-terminal.

The refusal used is the one that used to fail quietly: a key scoped to `tag:lab` pushes to a
device that the registry tags `lab` (so the coordinator accepts the push) while the agent's own
`--tag`s, which are what it checks, do not include `lab`: pushed to `tag:lab`, the agent says
the push is not for it (its own tags do not meet the selector); pushed to its name, that it is
outside the key's scope.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from fleet.identity import write_new_key
from harness.fleetlab import FleetLab
from tests.conftest import Systems
from tests.integration.test_update_chain import pushed_sequence
from tests.terminal import Terminal

pytestmark = pytest.mark.nix

QUICK = 30.0  # "within a few seconds", with room for a loaded two-core machine


async def scoped_key(lab: FleetLab) -> tuple[Path, Path]:
    """A CI key with push and read on tag:lab only, and its chain file."""
    key, chain = lab.root / "ci.key", lab.root / "ci.chain"
    ci = write_new_key(key).node_id
    grant = await lab.fleetctl(
        "grant", str(ci), "--allow", "push,read", "--scope", "tag:lab", "--out", str(chain)
    )
    assert grant.code == 0, grant
    return key, chain


async def test_a_refused_push_is_reported_at_once_with_its_reason(
    lab: FleetLab, nix_systems: Systems
) -> None:
    wrong = lab.add_agent("kiosk-1", tags=["lobby"])  # the registry will say `lab`
    right = lab.add_agent("kiosk-2")  # `lab` on both sides
    await lab.launch(wrong, right)
    await lab.register(lab.add_agent("ghost"), tags=["spare"])  # registered, never started
    key, chain = await scoped_key(lab)
    v1, v2 = nix_systems.v1.path, nix_systems.v2.path

    rows = await lab.wait_status(lambda r: r["kiosk-1"]["online"] and r["kiosk-2"]["online"])
    fresh = rows["kiosk-1"]  # connected, never changed state: no 1970 timestamp
    assert (fresh["state"], fresh["state_since"]) == ("idle", None), fresh
    assert (fresh["tags"], fresh["agent_tags"], fresh["tags_mismatch"]) == (
        ["lab"],
        ["lobby"],
        True,
    )
    assert rows["kiosk-2"]["tags_mismatch"] is False
    ghost = (await lab.status())["ghost"]
    assert (ghost["state"], ghost["state_since"], ghost["last_seen"]) == (None, None, None)

    # On a terminal: lines redrawn in place, a summary, the rejection within seconds.
    argv = lab.fleetctl_argv(
        "--cert", str(chain), "push", v1, "--to", "tag:lab", "--wait", "--timeout", "300",
        key=key,
    )  # fmt: skip
    started = time.monotonic()
    terminal = Terminal(argv, lab.env)
    code = await terminal.finish(80)
    elapsed = time.monotonic() - started
    output, shown = bytes(terminal.output), terminal.screen()
    text = "\n".join(shown)
    assert code == 3, text
    assert elapsed < QUICK + 60, elapsed  # kiosk-2 really downloads and switches meanwhile
    assert b"\x1b[2K" in output, output  # lines cleared and rewritten ...
    assert b"A\x1b[2K" in output, output  # ... after moving the cursor up over the block
    device_lines = [line for line in shown if line.startswith("kiosk-")]
    assert len(device_lines) == 2, text  # one line per device, not one per update
    assert device_lines[0].startswith("kiosk-1  rejected: announcement"), text
    assert device_lines[1] == "kiosk-2  applied", text
    assert "1 applied, 0 failed, 1 rejected, 0 pending" in shown, text
    assert "kiosk-1: rejected: announcement" in text  # the error summary on stderr
    assert "meet none of tag:lab" in text
    assert "Traceback" not in text
    sequence = pushed_sequence(text)
    assert await right.profile() == v1
    assert await wrong.profile() is None  # nothing was activated on the refusing device

    row = (await lab.status())["kiosk-1"]
    rejection = row["rejection"]
    assert rejection is not None, row
    assert (rejection["sequence"], rejection["code"]) == (sequence, "not-for-us"), row
    assert "its own tags (lobby) meet none of tag:lab" in rejection["reason"]
    assert rejection["time"].endswith("Z")
    table = await lab.fleetctl("status")
    assert table.code == 0, table
    assert "lab (agent: lobby!)" in table.out, table
    assert f"rejected #{sequence}" in table.out, table

    # Not a terminal: one line per event, as before, and just as quick.
    started = time.monotonic()
    again = await lab.fleetctl(
        "--cert", str(chain), "push", v2, "--to", "kiosk-1", "--wait", "--timeout", "300",
        key=key,
    )  # fmt: skip
    assert time.monotonic() - started < QUICK, again
    assert again.code == 3, again
    assert "\x1b" not in again.out, again
    assert "kiosk-1: rejected: announcement" in again.out, again
    assert "kiosk-1: rejected: announcement" in again.err, again
    assert "scope" in again.err, again  # named explicitly, it is the key's scope that refuses
    assert "timed-out" not in again.out + again.err, again
    as_json = await lab.fleetctl(
        "--cert", str(chain), "push", v2, "--to", "kiosk-1", "--wait", "--json", key=key
    )
    assert as_json.code == 3, as_json
    (result,) = json.loads(as_json.out)["results"]
    assert result["outcome"] == "rejected", result


async def test_a_push_refused_on_reconnect_is_reported(lab: FleetLab, nix_systems: Systems) -> None:
    dev = lab.add_agent("kiosk-1", tags=[])
    await lab.launch(dev)
    key, chain = await scoped_key(lab)
    await lab.wait_status(lambda r: r["kiosk-1"]["online"])
    await dev.daemon.stop()
    await lab.wait_status(lambda r: not r["kiosk-1"]["online"])

    push = await lab.fleetctl(
        "--cert", str(chain), "push", nix_systems.v1.path, "--to", "kiosk-1", key=key
    )
    assert push.code == 0, push  # accepted: the registry's tags are in the key's scope
    sequence = pushed_sequence(push.out)
    dev.daemon.start()
    await dev.daemon.wait_ready()

    def refused(rows: dict[str, dict[str, object]]) -> bool:
        rejection = rows["kiosk-1"]["rejection"]
        return isinstance(rejection, dict) and rejection["sequence"] == sequence

    rows = await lab.wait_status(refused)
    assert rows["kiosk-1"]["agent_tags"] == []
    assert rows["kiosk-1"]["tags_mismatch"] is True
