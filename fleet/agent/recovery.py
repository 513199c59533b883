"""What the agent does after a restart that interrupted an activation: the rules, without I/O.

The profile link proves only that `nix-env --set` ran, never that the system was activated,
so it is never the reason to report `applied`. The record of the last switch-to-configuration
run (fleet/agent/switch_run.py) decides; the Updater (fleet/agent/updater.py) carries the plan
out and ends, as after any activation, in the health checks. The rules (docs/agent.md):

- checking, or the switch recorded as exited 0: resume at the health checks;
- activating, no switch recorded for this announcement: it never started; run it now;
- a switch recorded as exited non-zero: roll back, as right after it;
- a switch recorded as started but not finished (interrupted): re-run it once (activation is
  meant to be idempotent); interrupted again, roll back;
- the interrupted run was the re-activation of the previous system during a rollback: re-run
  that once; interrupted again, report failed;
- the profile points at neither the announced system nor, after a rollback, the previous one
  (changed by hand): re-activate what it points at and report rolled-back.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.agent.switch_run import Purpose, SwitchRun
from fleet.protocol.messages import AgentState

MAX_ATTEMPTS = 2  # a switch is run at most twice (once more after an interruption)


@dataclass(frozen=True)
class ResumeChecks:
    """The switch of the announced system exited 0: run the health checks."""

    note: str | None = None


@dataclass(frozen=True)
class RunSwitch:
    """Run the announced system's switch (setting the profile first if needed)."""

    attempt: int
    note: str


@dataclass(frozen=True)
class RollBack:
    """Roll the profile back and re-activate the previous system (as after a failure)."""

    error: str
    exit_code: int | None = None


@dataclass(frozen=True)
class Reactivate:
    """Re-activate `system` (the profile already points at it); the outcome is rolled-back."""

    system: str
    attempt: int
    error: str


@dataclass(frozen=True)
class RolledBackAlready:
    """The rollback's re-activation ran to its end before the restart: report rolled-back."""

    error: str


@dataclass(frozen=True)
class Fail:
    error: str


Plan = ResumeChecks | RunSwitch | RollBack | Reactivate | RolledBackAlready | Fail


def interruption(run: SwitchRun, outlived: bool, boot: str = "") -> str:
    """How an interrupted run is described in the report (`boot`: this boot's id).

    The agent never stops on its own during a switch (SIGTERM waits for it), so a run left
    unfinished in the same boot means the agent was killed or crashed.
    """
    what = f"switch-to-configuration {run.action} of {run.system}"
    if boot and run.boot_id and boot != run.boot_id:
        return f"activation was interrupted (the device restarted during {what})"
    if outlived:
        return (
            f"activation was interrupted (the agent restarted while {what} ran; the switch "
            f"outlived the agent and was waited for, its exit code is unknown)"
        )
    return f"activation was interrupted (the agent was killed during {what})"


def plan(
    state: AgentState,
    *,
    desired: str,
    action: str,
    profile: str | None,
    previous: str | None,
    run: SwitchRun | None,
    outlived: bool = False,
    boot: str = "",
) -> Plan:
    """The next step after a restart in `state` (activating or checking).

    `run` is the last recorded switch run of this announcement (None: none recorded);
    `profile` is what the system profile points at now, `previous` what it pointed at before
    the announcement; `outlived`: the run's process was still alive after the restart (and
    has ended since); `boot`: this boot's id.
    """
    if run is not None and run.purpose is Purpose.ROLLBACK:
        reason = run.reason or "activation failed"
        if run.finished:
            if run.exit_code == 0:
                return RolledBackAlready(reason)
            code = (
                "did not complete" if run.exit_code is None else f"exited with code {run.exit_code}"
            )
            return RolledBackAlready(f"{reason}; re-activating {run.system} {code}")
        if run.attempt >= MAX_ATTEMPTS:
            return Fail(f"{reason}; re-activating {run.system} was interrupted twice")
        return Reactivate(
            run.system, run.attempt + 1, f"{reason}; {interruption(run, outlived, boot)}"
        )
    if state is AgentState.CHECKING:
        return ResumeChecks()
    if run is None:
        return RunSwitch(attempt=1, note="the agent restarted before switch-to-configuration ran")
    what = interruption(run, outlived, boot) if not run.finished else "the agent restarted"
    if action in ("switch", "boot") and profile is not None and profile != desired:
        if profile == previous:  # rolled back by the agent just before the restart
            return Reactivate(profile, 1, f"{what} while rolling back to {profile}")
        return Reactivate(profile, 1, f"{what}; the profile points at {profile}, not {desired}")
    if run.finished:
        if run.exit_code == 0:
            return ResumeChecks()
        code = "did not complete" if run.exit_code is None else f"exited with code {run.exit_code}"
        return RollBack(f"switch-to-configuration {run.action} {code}", run.exit_code)
    if run.attempt >= MAX_ATTEMPTS:
        return RollBack(f"{what}, again after a re-run")
    return RunSwitch(attempt=run.attempt + 1, note=what)
