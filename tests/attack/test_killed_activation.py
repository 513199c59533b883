"""Attack: the agent and its switch-to-configuration child are killed mid-switch.

As systemd does on a crash or an OOM kill of the unit: SIGKILL to the agent and to the
switch's process group (or to the agent alone, when the switch runs outside its cgroup and
survives). Real `fleet relay`, `fleet coordinator` and `fleet agent` processes, a real chroot
Nix store and a signed binary cache over HTTP (harness/fleetlab.py, harness/nixlab.py). The
system pushed has a switch-to-configuration that logs each run and blocks while a file
exists, so the test can kill the agent in the middle of it.

Expected: after the restart the agent never reports `applied` on the strength of the
profile link alone; it waits for a switch that is still running, re-runs the activation once
(applied, saying so), and rolls back to the previous generation (re-activating it) when the
re-run fails.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleet.agent.state import StateFile
from fleet.agent.switch_run import process_start
from harness.attack.activation_kill import (
    FAIL_VAR,
    HELD_EXIT_CODE,
    HOLD_VAR,
    build_holding,
    final_row,
    kill_agent,
    switch_children,
    wait_for,
)
from harness.fleetlab import Agent, FleetLab
from harness.nixlab import Builder, FakeSystem, fill_cache, serve_directory
from tests.conftest import Systems

pytestmark = pytest.mark.nix


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


async def test_killed_mid_switch_is_re_run_before_it_is_called_applied(
    lab: tuple[FleetLab, FakeSystem], nix_systems: Systems, tmp_path: Path
) -> None:
    fleet, held = lab
    v1 = nix_systems.v1.path
    dev, hold = await held_switch(fleet, held, v1, tmp_path)
    # The agent recorded the running switch (and which process it is) before the kill. The
    # record is written before the spawn and again with the pid once the process exists, so
    # wait (bounded) for the second write rather than race it.
    state = StateFile(fleet.root / "agents" / dev.name / "state")

    def recorded_pid() -> int | None:
        switch = state.load().switch
        return None if switch is None else switch.pid

    await wait_for(recorded_pid, "the switch's pid in the agent's state")
    record = state.load().switch
    assert record is not None
    assert (record.system, record.attempt, record.finished) == (held.path, 1, False)
    assert record.pid in switch_children(dev, held.path)
    assert record.pid is not None
    assert record.pid_start == process_start(record.pid)
    kill_agent(dev, held.path, with_child=True)
    assert dev.switches() == [f"switch {v1}", f"switch {held.path}"]  # never finished
    hold.unlink()

    dev.daemon.start()
    await dev.daemon.wait_ready()
    row = await final_row(fleet, "kiosk-1", 2)
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
    survivors = kill_agent(dev, held.path, with_child=False)
    assert survivors  # the switch is still running

    dev.daemon.start()
    await dev.daemon.wait_ready()
    await wait_for(
        lambda: "agent_activation_still_running" in {e.get("event") for e in dev.daemon.events()},
        "the agent to notice the running switch",
    )
    # What an admin sees meanwhile: still activating, and why.
    rows = await fleet.wait_status(
        lambda rows: "outlived the agent" in str(rows["kiosk-1"]["error"]), timeout=30
    )
    assert rows["kiosk-1"]["state"] == "activating", rows
    assert dev.switches() == [f"switch {v1}", f"switch {held.path}"]  # no second one yet
    hold.unlink()
    row = await final_row(fleet, "kiosk-1", 2)
    assert dev.switches() == [
        f"switch {v1}", f"switch {held.path}", f"switch {held.path} done",
        f"switch {held.path}", f"switch {held.path} done",
    ], row  # fmt: skip
    assert row["state"] == "applied", row


async def test_a_failing_re_run_rolls_back_to_the_previous_generation(
    lab: tuple[FleetLab, FakeSystem], nix_systems: Systems, tmp_path: Path
) -> None:
    fleet, held = lab
    v1 = nix_systems.v1.path
    dev, hold = await held_switch(fleet, held, v1, tmp_path)
    kill_agent(dev, held.path, with_child=True)
    (tmp_path / "fail").write_text(held.path)  # the re-run fails, v1's switch does not
    hold.unlink()

    dev.daemon.start()
    await dev.daemon.wait_ready()
    row = await final_row(fleet, "kiosk-1", 2)
    assert dev.switches() == [
        f"switch {v1}", f"switch {held.path}", f"switch {held.path}", f"switch {v1}",
    ], row  # fmt: skip
    assert row["state"] == "rolled-back", row
    error = str(row["error"])
    assert "interrupted" in error, row
    assert f"exited with code {HELD_EXIT_CODE}" in error, row
    assert await dev.profile() == v1
