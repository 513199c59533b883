"""Running a system's `bin/switch-to-configuration ACTION`.

On a device this is the store path itself. For a chroot store (tests, lab agents) the script
is run from where its files are, DIR + path; it still sees its own logical /nix/store path
in its text, which is what the fake systems of the tests log.

On a real host the agent's own unit may be restarted by the switch, which would kill a
child script half-way. `isolate=True` runs it as a transient systemd unit the way
nixos-rebuild does, so it outlives the agent; the pid given to `on_start` is then that of
systemd-run, not of the script (the agent does not use `isolate` today; see docs/agent.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

from fleet.log import get_logger
from fleet.nix.errors import PathNotFound
from fleet.nix.process import LineCallback, StartCallback, run_process
from fleet.nix.store import NixStore
from fleet.vocabulary import Action, check_store_path

log = get_logger("fleet.nix.activation")


@dataclass(frozen=True)
class ActivationResult:
    action: Action
    system: str
    exit_code: int
    output_tail: str  # last lines of stdout+stderr (at most 64 KiB / 200 lines)
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def systemd_run_argv(script: str, action: Action) -> list[str]:
    """Like nixos-rebuild: a transient unit that survives a restart of the caller's unit."""
    return [
        "systemd-run",
        "-E", "LOCALE_ARCHIVE",
        "-E", "NIXOS_INSTALL_BOOTLOADER",
        "--collect",
        "--no-ask-password",
        "--pipe",
        "--quiet",
        "--service-type=exec",
        "--unit=fleet-switch-to-configuration",
        "--wait",
        script,
        action.value,
    ]  # fmt: skip


async def run_switch(
    store: NixStore,
    system: str,
    action: Action | str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 600.0,
    on_line: LineCallback | None = None,
    on_start: StartCallback | None = None,
    isolate: bool = False,
) -> ActivationResult:
    """Run `<system>/bin/switch-to-configuration ACTION`; a non-zero exit is a result.

    `env` is the script's whole environment (default: the agent's own plus nothing).
    `on_start(pid)` is called once the process exists, so the caller can record it.
    Raises PathNotFound if the script is missing and NixTimeout (killing the script's
    process group) if it outruns `timeout`.
    """
    action = Action(action)
    check_store_path(system)
    script = store.real_path(system) / "bin" / "switch-to-configuration"
    if not script.is_file():
        raise PathNotFound(f"{system} has no bin/switch-to-configuration")
    argv = systemd_run_argv(str(script), action) if isolate else [str(script), action.value]
    started = time.monotonic()
    log.info("nix.switch.start", system=system, action=action.value)
    done = await run_process(
        argv,
        env=dict(env) if env is not None else dict(os.environ),
        timeout=timeout,
        on_line=on_line,
        merge_output=True,
        cwd="/",
        on_start=on_start,
    )
    seconds = time.monotonic() - started
    log.info("nix.switch.done", system=system, exit_code=done.returncode, seconds=round(seconds, 3))
    return ActivationResult(
        action=action,
        system=system,
        exit_code=done.returncode,
        output_tail="\n".join(done.tail),
        seconds=seconds,
    )
