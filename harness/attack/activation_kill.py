"""Killing an agent mid-activation: a fake system whose switch blocks, and the kill itself.

Shared by tests/attack/test_killed_activation.py (CI) and bench/killed_activation.py (the
long soak). The fake system's switch-to-configuration logs "ACTION PATH" when it starts and
"ACTION PATH done" when it ends, blocks while the file named by $FLEET_TEST_SWITCH_HOLD
exists and exits 4 if the file named by $FLEET_TEST_SWITCH_FAIL names its store path, so a
test can kill the agent in the middle of it and choose how the re-run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.fleetlab import Agent, FleetLab
from harness.nixlab import Builder, FakeSystem, _run

FINAL = frozenset({"applied", "rolled-back", "failed"})


HOLD_VAR = "FLEET_TEST_SWITCH_HOLD"  # while this file exists, the switch blocks
FAIL_VAR = "FLEET_TEST_SWITCH_FAIL"  # a switch whose store path this file names exits 4
HELD_EXIT_CODE = 4

# The holding fake system (see the module docstring); `self` is its own store path.
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
    if [ -n "$FLEET_TEST_SWITCH_FAIL" ] && grep -qs "$self" "$FLEET_TEST_SWITCH_FAIL"; then
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
    """Build and sign a holding system in the builder's store (about 0.1 s)."""
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


async def wait_for(check: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def kill_agent(dev: Agent, system: str, *, with_child: bool) -> list[int]:
    """SIGKILL the agent, and with `with_child` the switch's process group too (as a kill of
    the unit's cgroup does; the switch runs in its own session). Returns the switch pids."""
    children = switch_children(dev, system)
    assert dev.daemon.proc is not None
    os.kill(dev.daemon.proc.pid, signal.SIGKILL)
    dev.daemon.proc.wait(15)
    if with_child:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    return children


async def final_row(lab: FleetLab, name: str, sequence: int, timeout: float = 90) -> dict[str, Any]:
    """The device's status row once it reached a final state for `sequence` (or later)."""
    rows = await lab.wait_status(
        lambda rows: (
            rows[name]["state"] in FINAL
            and (rows[name]["desired"] or {}).get("sequence", 0) >= sequence
            and rows[name]["online"]
        ),
        timeout=timeout,
    )
    return rows[name]
