"""Attack: the agent and its switch-to-configuration child are killed mid-switch.

As systemd does on a crash or an OOM kill of the unit: SIGKILL to the agent and to the
switch's process group (or to the agent alone, when the switch runs outside its cgroup and
survives). Real `fleet relay`, `fleet coordinator` and `fleet agent` processes, a real chroot
Nix store and a signed binary cache over HTTP (tests/fleetlab.py, tests/nixlab.py). The
system pushed has a switch-to-configuration that logs each run and blocks while a file
exists, so the test can kill the agent in the middle of it.

Expected: after the restart the agent never reports `applied` on the strength of the
profile link alone; it waits for a switch that is still running, re-runs the activation once
(applied, saying so), and rolls back to the previous generation (re-activating it) when the
re-run fails.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import Systems
from tests.fleetlab import Agent, FleetLab
from tests.nixlab import Builder, FakeSystem, _run, fill_cache, serve_directory

pytestmark = pytest.mark.nix

HOLD_VAR = "FLEET_TEST_SWITCH_HOLD"  # while this file exists, the switch blocks
FAIL_VAR = "FLEET_TEST_SWITCH_FAIL"  # if this file exists, the switch exits 4
HELD_EXIT_CODE = 4

# A fake system whose switch-to-configuration logs "ACTION PATH" when it starts and
# "ACTION PATH done" when it ends, blocks while $FLEET_TEST_SWITCH_HOLD exists and fails
# (exit 4) if $FLEET_TEST_SWITCH_FAIL exists.
HOLD_NIX = r"""
{ version }:
derivation {
  name = "nixos-system-fleet-hold-${version}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/bin";
  script = ''
    log="$FLEET_SWITCH_LOG"; [ -n "$log" ] || log=/dev/null
    echo "$1 $self" >> "$log"
    while [ -n "$FLEET_TEST_SWITCH_HOLD" ] && [ -e "$FLEET_TEST_SWITCH_HOLD" ]; do
      sleep 0.05
    done
    if [ -n "$FLEET_TEST_SWITCH_FAIL" ] && [ -e "$FLEET_TEST_SWITCH_FAIL" ]; then
      echo "error: unit fleet-hold.service failed to start" >&2
      exit 4
    fi
    echo "$1 $self done" >> "$log"
  '';
  passAsFile = [ "script" ];
  args = [ "-c" ''
    mkdir -p $out/bin
    { echo '#!/bin/sh'; echo "self=$out"; cat "$scriptPath"; } > $out/bin/switch-to-configuration
    chmod +x $out/bin/switch-to-configuration
  '' ];
}
"""


def build_holding(builder: Builder, version: str) -> FakeSystem:
    expression = builder.root / "hold.nix"
    expression.write_text(HOLD_NIX)
    store = str(builder.store.root)
    path = _run(
        ["nix-build", "--store", store, str(expression), "--no-out-link",
         "--argstr", "version", version],
        builder.env,
    )  # fmt: skip
    _run(
        ["nix", "store", "sign", "--store", store, "--key-file", str(builder.key.secret_file),
         "--recursive", path],
        builder.env,
    )  # fmt: skip
    return FakeSystem(version, path, path, broken=False)


@pytest.fixture
async def lab(
    tmp_path: Path, nix_builder: Builder, nix_systems: Systems
) -> AsyncIterator[tuple[FleetLab, FakeSystem]]:
    held = build_holding(nix_builder, "held")
    directory = tmp_path / "binary-cache"
    await fill_cache(nix_builder, directory, nix_systems.v1, held)
    with serve_directory(directory) as url:
        lab = FleetLab(tmp_path / "lab", substituter=url, trusted_key=nix_builder.key.public_key)
        try:
            await lab.start()
            yield lab, held
        finally:
            print(await lab.close())


def switch_children(agent: Agent, system: str) -> list[int]:
    """Pids of the switch-to-configuration processes of `system` run by this agent's store."""
    script = str(agent.store.real_path(system) / "bin" / "switch-to-configuration")
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if script.encode() in cmdline:
            found.append(int(entry))
    return found


async def wait_for(check: object, what: str, timeout: float = 60.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def held_switch(lab: FleetLab, held: FakeSystem, v1: str, tmp: Path) -> tuple[Agent, Path]:
    """An agent that applied v1 and is now blocked inside the switch of `held`."""
    dev = lab.add_agent("kiosk-1")
    hold, fail = tmp / "hold", tmp / "fail"
    dev.daemon.env[HOLD_VAR] = str(hold)
    dev.daemon.env[FAIL_VAR] = str(fail)
    await lab.launch(dev)
    first = await lab.fleetctl("push", v1, "--to", "kiosk-1", "--wait")
    assert first.code == 0, first
    hold.touch()
    push = await lab.fleetctl("push", held.path, "--to", "kiosk-1")
    assert push.code == 0, push
    await wait_for(lambda: f"switch {held.path}" in dev.switches(), "the held switch to start")
    await wait_for(lambda: switch_children(dev, held.path), "the switch process")
    return dev, hold


def kill_agent(dev: Agent, held: FakeSystem, *, with_child: bool) -> list[int]:
    """SIGKILL the agent (and the switch's process group, as a cgroup kill does)."""
    children = switch_children(dev, held.path)
    assert children
    assert dev.daemon.proc is not None
    os.kill(dev.daemon.proc.pid, signal.SIGKILL)
    dev.daemon.proc.wait(15)
    if with_child:
        for pid in children:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
    return children


async def final_row(lab: FleetLab, sequence_from: int = 2) -> dict[str, object]:
    final = {"applied", "rolled-back", "failed"}
    rows = await lab.wait_status(
        lambda rows: (
            rows["kiosk-1"]["state"] in final
            and (rows["kiosk-1"]["desired"] or {}).get("sequence", 0) >= sequence_from
            and rows["kiosk-1"]["online"]
        ),
        timeout=90,
    )
    return rows["kiosk-1"]


async def test_killed_mid_switch_is_re_run_before_it_is_called_applied(
    lab: tuple[FleetLab, FakeSystem], nix_systems: Systems, tmp_path: Path
) -> None:
    fleet, held = lab
    v1 = nix_systems.v1.path
    dev, hold = await held_switch(fleet, held, v1, tmp_path)
    kill_agent(dev, held, with_child=True)
    assert dev.switches() == [f"switch {v1}", f"switch {held.path}"]  # never finished
    hold.unlink()

    dev.daemon.start()
    await dev.daemon.wait_ready()
    row = await final_row(fleet)
    # The switch ran again, to its end, before the device said applied.
    assert dev.switches() == [
        f"switch {v1}", f"switch {held.path}", f"switch {held.path}", f"switch {held.path} done",
    ], row  # fmt: skip
    assert row["state"] == "applied", row
    assert "interrupted" in str(row["error"]), row
    assert "re-ran switch-to-configuration switch: ok" in str(row["error"]), row
    assert await dev.profile() == held.path


async def test_a_switch_that_outlives_the_agent_is_waited_for_then_re_run(
    lab: tuple[FleetLab, FakeSystem], nix_systems: Systems, tmp_path: Path
) -> None:
    fleet, held = lab
    v1 = nix_systems.v1.path
    dev, hold = await held_switch(fleet, held, v1, tmp_path)
    survivors = kill_agent(dev, held, with_child=False)

    dev.daemon.start()
    await dev.daemon.wait_ready()
    await wait_for(
        lambda: "agent_activation_still_running" in {e.get("event") for e in dev.daemon.events()},
        "the agent to notice the running switch",
    )
    assert dev.switches() == [f"switch {v1}", f"switch {held.path}"]  # no second one yet
    hold.unlink()
    row = await final_row(fleet)
    assert dev.switches() == [
        f"switch {v1}", f"switch {held.path}", f"switch {held.path} done",
        f"switch {held.path}", f"switch {held.path} done",
    ], row  # fmt: skip
    assert row["state"] == "applied", row
    assert not any(Path(f"/proc/{pid}").exists() for pid in survivors)


async def test_a_failing_re_run_rolls_back_to_the_previous_generation(
    lab: tuple[FleetLab, FakeSystem], nix_systems: Systems, tmp_path: Path
) -> None:
    fleet, held = lab
    v1 = nix_systems.v1.path
    dev, hold = await held_switch(fleet, held, v1, tmp_path)
    kill_agent(dev, held, with_child=True)
    (tmp_path / "fail").touch()
    hold.unlink()

    dev.daemon.start()
    await dev.daemon.wait_ready()
    row = await final_row(fleet)
    assert dev.switches() == [
        f"switch {v1}", f"switch {held.path}", f"switch {held.path}", f"switch {v1}",
    ], row  # fmt: skip
    assert row["state"] == "rolled-back", row
    error = str(row["error"])
    assert "interrupted" in error, row
    assert f"exited with code {HELD_EXIT_CODE}" in error, row
    assert await dev.profile() == v1
