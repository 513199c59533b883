"""The recovery rules after a restart mid-activation (fleet.agent.recovery), in memory.

The rule users care about: the profile link alone never makes an activation `applied`.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.agent import recovery
from fleet.agent.recovery import (
    Fail,
    Reactivate,
    ResumeChecks,
    RollBack,
    RolledBackAlready,
    RunSwitch,
    plan,
)
from fleet.agent.switch_run import (
    Purpose,
    SwitchRun,
    boot_id,
    is_running,
    kill,
    process_start,
    wait_until_gone,
)
from fleet.protocol.messages import AgentState

S = AgentState
NEW = "/nix/store/" + "n" * 32 + "-nixos-system-new"
OLD = "/nix/store/" + "o" * 32 + "-nixos-system-old"
OTHER = "/nix/store/" + "x" * 32 + "-nixos-system-other"


def started(attempt: int = 1, **kw: object) -> SwitchRun:
    run = SwitchRun(
        sequence=2,
        system=NEW,
        action="switch",
        purpose=Purpose.ACTIVATE,
        attempt=attempt,
        started_at=1.0,
        boot_id="b",
    )
    return dataclasses.replace(run, **kw)  # type: ignore[arg-type]


def finished(exit_code: int | None, **kw: object) -> SwitchRun:
    return dataclasses.replace(started(), finished_at=2.0, exit_code=exit_code, **kw)  # type: ignore[arg-type]


def decide(run: SwitchRun | None, *, state: S = S.ACTIVATING, profile: str | None = NEW,
           action: str = "switch", outlived: bool = False) -> recovery.Plan:  # fmt: skip
    return plan(
        state,
        desired=NEW,
        action=action,
        profile=profile,
        previous=OLD,
        run=run,
        outlived=outlived,
    )


def test_interrupted_switch_is_re_run_although_the_profile_points_at_it() -> None:
    step = decide(started())
    assert isinstance(step, RunSwitch)
    assert step.attempt == 2
    assert "interrupted" in step.note
    assert "killed" in step.note


def test_a_switch_that_outlived_the_agent_is_re_run_too() -> None:
    step = decide(started(), outlived=True)
    assert isinstance(step, RunSwitch)
    assert "outlived the agent" in step.note


def test_an_interruption_by_a_reboot_says_so() -> None:
    step = plan(
        S.ACTIVATING, desired=NEW, action="switch", profile=NEW, previous=OLD,
        run=started(), boot="another boot",
    )  # fmt: skip
    assert isinstance(step, RunSwitch)
    assert step.note.startswith("activation was interrupted (the device restarted during")
    same = plan(
        S.ACTIVATING, desired=NEW, action="switch", profile=NEW, previous=OLD,
        run=started(), boot="b",
    )  # fmt: skip
    assert isinstance(same, RunSwitch)
    assert "the agent was killed" in same.note


def test_interrupted_again_after_the_re_run_rolls_back() -> None:
    step = decide(started(attempt=2))
    assert isinstance(step, RollBack)
    assert "again after a re-run" in step.error


def test_no_switch_recorded_runs_it_for_the_first_time() -> None:
    for profile in (NEW, OLD):  # crash before or after nix-env --set
        step = decide(None, profile=profile)
        assert step == RunSwitch(1, "the agent restarted before switch-to-configuration ran")


def test_switch_recorded_as_exited_0_resumes_the_checks() -> None:
    assert decide(finished(0)) == ResumeChecks()


def test_switch_recorded_as_failed_rolls_back_with_its_code() -> None:
    step = decide(finished(3))
    assert step == RollBack("switch-to-configuration switch exited with code 3", 3)
    timed_out = decide(finished(None))
    assert isinstance(timed_out, RollBack)
    assert "did not complete" in timed_out.error


def test_checking_resumes_the_checks() -> None:
    assert decide(finished(0), state=S.CHECKING) == ResumeChecks()
    assert decide(None, state=S.CHECKING) == ResumeChecks()  # state file of an older agent


def test_rollback_interrupted_is_re_run_once_then_failed() -> None:
    rollback = started(purpose=Purpose.ROLLBACK, system=OLD, reason="exited with code 3")
    for state in (S.ACTIVATING, S.CHECKING):
        step = decide(rollback, state=state, profile=OLD)
        assert isinstance(step, Reactivate)
        assert (step.system, step.attempt) == (OLD, 2)
        assert step.error.startswith("exited with code 3; activation was interrupted")
    again = decide(dataclasses.replace(rollback, attempt=2), profile=OLD)
    assert isinstance(again, Fail)
    assert "interrupted twice" in again.error


def test_rollback_that_finished_is_reported_rolled_back() -> None:
    done = finished(0, purpose=Purpose.ROLLBACK, system=OLD, reason="exited with code 3")
    assert decide(done, profile=OLD) == RolledBackAlready("exited with code 3")
    failed = decide(dataclasses.replace(done, exit_code=1), profile=OLD)
    assert failed == RolledBackAlready(
        f"exited with code 3; re-activating {OLD} exited with code 1"
    )


def test_profile_already_rolled_back_is_re_activated_not_rolled_back_twice() -> None:
    step = decide(finished(3), profile=OLD)
    assert isinstance(step, Reactivate)
    assert step.system == OLD
    assert "rolling back" in step.error


def test_profile_changed_by_hand_re_activates_what_it_points_at() -> None:
    step = decide(started(), profile=OTHER)
    assert isinstance(step, Reactivate)
    assert step.system == OTHER
    assert f"the profile points at {OTHER}, not {NEW}" in step.error


def test_action_test_does_not_go_by_the_profile() -> None:
    step = decide(started(action="test"), profile=OLD, action="test")
    assert isinstance(step, RunSwitch)
    assert step.attempt == 2


def test_no_plan_reports_applied_without_a_switch_that_exited_0() -> None:
    """Whatever the profile says, only a recorded exit 0 leads (through the checks) to applied."""
    runs: list[SwitchRun | None] = [None, started(), started(attempt=2), finished(3)]
    for run in runs:
        for profile in (NEW, OLD, None):
            assert not isinstance(decide(run, profile=profile), ResumeChecks), (run, profile)


# ---------------------------------------------------------------- the process record


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(5)


def test_a_live_process_is_recognised_and_a_reused_pid_is_not(
    sleeper: subprocess.Popen[bytes],
) -> None:
    start = process_start(sleeper.pid)
    assert start is not None
    run = started(pid=sleeper.pid, pid_start=start, boot_id=boot_id())
    assert is_running(run)
    assert not is_running(dataclasses.replace(run, pid_start=start + 1))  # another process
    assert not is_running(dataclasses.replace(run, boot_id="another boot"))
    assert not is_running(dataclasses.replace(run, pid=None))
    assert not is_running(dataclasses.replace(run, finished_at=3.0))


async def test_waiting_is_bounded_and_kill_ends_the_group(
    sleeper: subprocess.Popen[bytes],
) -> None:
    run = started(pid=sleeper.pid, pid_start=process_start(sleeper.pid), boot_id=boot_id())
    assert not await wait_until_gone(run, 0.3, poll=0.05)
    kill(run)
    sleeper.wait(5)  # reaped by its parent (this test), as init would reap an orphan
    assert await wait_until_gone(run, 5.0)
    assert not os.path.exists(f"/proc/{sleeper.pid}/stat") or not is_running(run)


def test_a_killed_switch_not_yet_reaped_is_not_running() -> None:
    """A zombie (dead, its parent has not reaped it yet) must not be waited for."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    try:
        start = process_start(proc.pid)
        assert start is not None
        run = started(pid=proc.pid, pid_start=start, boot_id=boot_id())
        deadline = time.monotonic() + 10
        while Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child never exited"
            time.sleep(0.01)
        assert process_start(proc.pid) == start  # still there, as a zombie
        assert not is_running(run)
    finally:
        proc.wait(5)
