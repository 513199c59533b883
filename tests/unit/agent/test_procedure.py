"""The update procedure: every legal path ends where it should; anything else is refused."""

from __future__ import annotations

import pytest

from fleet.agent.effects import (
    AwaitSurvivor,
    ChecksRan,
    Done,
    Fetch,
    Fetched,
    FetchFailed,
    IsRunning,
    NotDone,
    Outcome,
    ProfileIs,
    ReadProfile,
    RollBackProfile,
    RunChecks,
    RunSwitch,
    Save,
    SetProfile,
    SwitchRan,
)
from fleet.agent.procedure import (
    TABLE,
    Abandoned,
    Activated,
    AlreadyRunning,
    CheckPassed,
    Downloaded,
    DownloadFailed,
    DownloadProgress,
    Event,
    Expired,
    Failed,
    IllegalTransition,
    Procedure,
    Recovering,
    Resumed,
    RolledBack,
    Start,
    Status,
    SwitchExited,
    SwitchSpawned,
    SwitchStarted,
    transitions,
)
from fleet.agent.switch_run import Purpose
from fleet.identity import Identity
from fleet.nix import ActivationResult
from fleet.protocol.messages import AgentState, AnnouncementV2, Progress, SystemState
from fleet.vocabulary import Action
from fleet.wire import Tag, decode, sign_envelope

S = AgentState
PATH = "/nix/store/" + "a" * 32 + "-nixos-system-x"
PROGRESS = Progress(paths_done=1, paths_total=2, bytes_done=10, bytes_total=20)

ONE_OF_EACH: list[Event] = [
    Start(1, PATH),
    AlreadyRunning(1, PATH),
    DownloadProgress(PROGRESS),
    Downloaded(),
    DownloadFailed("e"),
    Activated(),
    Recovering("interrupted"),
    Resumed(),
    CheckPassed(),
    RolledBack("e", 3, "tail"),
    Failed("e"),
]


def run(events: list[Event], start: Procedure | None = None) -> Procedure:
    proc = start or Procedure()
    for t, event in enumerate(events, start=1):
        proc.handle(event, float(t))
    return proc


def test_happy_path_applies_and_records_the_sequence() -> None:
    proc = run([Start(7, PATH), DownloadProgress(PROGRESS), Downloaded(), Activated()])
    assert proc.state is S.CHECKING
    assert proc.applied_sequence == 0  # not before it is applied
    status = proc.handle(CheckPassed(), 10.0)
    assert status == Status(
        state=S.APPLIED, since=10.0, sequence=7, desired=PATH, progress=PROGRESS
    )
    assert proc.applied_sequence == 7


def test_each_transition_sets_since_but_progress_does_not() -> None:
    proc = run([Start(1, PATH)])
    assert proc.status.since == 1.0
    proc.handle(DownloadProgress(PROGRESS), 5.0)
    assert proc.status.since == 1.0
    assert proc.status.progress == PROGRESS
    proc.handle(Downloaded(), 6.0)
    assert proc.status.since == 6.0


def test_failed_activation_rolls_back_with_exit_code_and_tail() -> None:
    proc = run([Start(2, PATH), Downloaded(), RolledBack("exit 3", 3, "boom")])
    assert proc.status.state is S.ROLLED_BACK
    assert (proc.status.error, proc.status.exit_code, proc.status.log_tail) == ("exit 3", 3, "boom")
    assert proc.applied_sequence == 0


def test_failed_check_rolls_back() -> None:
    proc = run([Start(2, PATH), Downloaded(), Activated(), RolledBack("unhealthy")])
    assert proc.state is S.ROLLED_BACK


def test_download_failure_then_retry_then_success() -> None:
    proc = run([Start(3, PATH), DownloadFailed("lacks a valid signature")])
    assert proc.state is S.FAILED
    assert proc.status.error == "lacks a valid signature"
    retry = proc.handle(Start(3, PATH), 9.0)
    assert retry.error is None  # a new attempt starts clean
    run([Downloaded(), Activated(), CheckPassed()], proc)
    assert proc.status.state is S.APPLIED
    assert proc.applied_sequence == 3


def test_newer_announcement_supersedes_a_download() -> None:
    proc = run([Start(3, PATH), Start(4, PATH)])
    assert proc.state is S.DOWNLOADING
    assert proc.status.sequence == 4


@pytest.mark.parametrize("state_events", [[], [Start(1, PATH), DownloadFailed("x")]])
def test_already_running_goes_straight_to_applied(state_events: list[Event]) -> None:
    proc = run([*state_events, AlreadyRunning(5, PATH)])
    assert proc.state is S.APPLIED
    assert proc.applied_sequence == 5


def test_resume_after_restart_goes_to_checking() -> None:
    proc = Procedure(Status(state=S.ACTIVATING, since=1.0, sequence=4, desired=PATH), 3)
    run([Resumed(), CheckPassed()], proc)
    assert proc.state is S.APPLIED
    assert proc.applied_sequence == 4


def test_recovery_says_what_it_did_up_to_applied() -> None:
    """A restart mid-switch: re-run, then applied, and the report keeps saying so."""
    proc = Procedure(Status(state=S.ACTIVATING, since=1.0, sequence=4, desired=PATH), 3)
    note = "activation was interrupted"
    assert proc.handle(Recovering(note), 2.0).error == note
    assert proc.state is S.ACTIVATING
    assert proc.applied_sequence == 3  # not applied by recovering
    assert proc.handle(Activated(f"{note}; re-ran: ok"), 3.0).state is S.CHECKING
    status = proc.handle(CheckPassed(f"{note}; re-ran: ok"), 4.0)
    assert (status.state, status.error) == (S.APPLIED, f"{note}; re-ran: ok")
    assert proc.applied_sequence == 4
    # an ordinary activation reports no error
    plain = run([Start(5, PATH), Downloaded(), Activated(), CheckPassed()])
    assert plain.status.error is None


def test_recovering_only_from_activating() -> None:
    proc = Procedure(Status(state=S.CHECKING, since=1.0, sequence=4, desired=PATH), 3)
    with pytest.raises(IllegalTransition):
        proc.handle(Recovering("x"), 2.0)


def test_applied_sequence_never_decreases() -> None:
    proc = Procedure(applied_sequence=9)
    run([AlreadyRunning(4, PATH)], proc)
    assert proc.applied_sequence == 9


def test_activation_is_never_superseded() -> None:
    proc = run([Start(1, PATH), Downloaded()])
    with pytest.raises(IllegalTransition, match="Start is not allowed in state activating"):
        proc.handle(Start(2, PATH), 9.0)
    assert proc.status.sequence == 1
    assert proc.state is S.ACTIVATING


@pytest.mark.parametrize("state", list(AgentState))
@pytest.mark.parametrize("event", ONE_OF_EACH, ids=lambda e: type(e).__name__)
def test_every_illegal_input_raises_and_changes_nothing(state: AgentState, event: Event) -> None:
    before = Status(state=state, since=1.0, sequence=1, desired=PATH)
    proc = Procedure(before, applied_sequence=1)
    sources, target = TABLE[type(event)]
    if state in sources:
        assert proc.handle(event, 2.0).state is target
    else:
        with pytest.raises(IllegalTransition) as info:
            proc.handle(event, 2.0)
        assert info.value.state is state
        assert proc.status == before
        assert proc.applied_sequence == 1


def test_transition_map_as_documented() -> None:
    assert transitions() == {
        S.IDLE: {S.DOWNLOADING, S.APPLIED},
        S.DOWNLOADING: {S.DOWNLOADING, S.APPLIED, S.ACTIVATING, S.FAILED},
        S.ACTIVATING: {S.ACTIVATING, S.CHECKING, S.ROLLED_BACK, S.FAILED},
        S.CHECKING: {S.CHECKING, S.APPLIED, S.ROLLED_BACK, S.FAILED},
        S.APPLIED: {S.DOWNLOADING, S.APPLIED},
        S.ROLLED_BACK: {S.DOWNLOADING, S.APPLIED},
        S.FAILED: {S.DOWNLOADING, S.APPLIED},
    }


def test_status_report_carries_everything() -> None:
    status = Status(S.ROLLED_BACK, 4.0, 2, PATH, None, "exit 3", 3, "tail")
    report = status.report(SystemState(store_path=PATH, generation=2))
    assert report.state is S.ROLLED_BACK
    assert report.since == 4.0
    assert report.exit_code == 3
    assert report.log_tail == "tail"
    assert report.current.generation == 2


ADMIN = Identity.generate()
OLD = "/nix/store/" + "b" * 32 + "-nixos-system-old"
ENVELOPE = sign_envelope(
    ADMIN,
    Tag.ANNOUNCEMENT,
    AnnouncementV2(
        sequence=3, devices=(ADMIN.node_id,), targets=(), store_path=PATH, substituters=(),
        action=Action.SWITCH, issued_at=1.0, valid_until=2.0,
    ),
)  # fmt: skip


def retrying(proc: Procedure) -> bool:
    return proc.record.retrying


def test_the_record_holds_the_announcement_the_previous_system_and_the_retry() -> None:
    proc = run([Start(3, PATH, ENVELOPE, OLD)])
    assert (proc.record.announcement, proc.record.previous) == (ENVELOPE, OLD)
    proc.handle(DownloadFailed("unreachable"), 2.0)
    assert retrying(proc)
    assert proc.resumable() == ENVELOPE  # a restart now retries the download
    failed = proc.status
    proc.handle(Abandoned(), 3.0)  # it expired while waiting to retry
    assert not retrying(proc)
    assert proc.status is failed  # the status did not change: nothing to report
    assert proc.resumable() is None


def test_an_expired_download_fails_and_is_not_retried() -> None:
    proc = run([Start(3, PATH, ENVELOPE, OLD)])
    status = proc.handle(Expired("announcement 3 expired"), 2.0)
    assert (status.state, status.error) == (S.FAILED, "announcement 3 expired")
    assert not retrying(proc)
    assert proc.resumable() is None
    with pytest.raises(IllegalTransition):
        proc.handle(Expired("again"), 3.0)  # only a download in progress expires


def test_only_a_failed_download_is_retried() -> None:
    proc = run([Start(3, PATH, ENVELOPE, OLD), DownloadFailed("x"), Start(3, PATH, ENVELOPE)])
    assert not retrying(proc)
    assert proc.resumable() == ENVELOPE  # downloading: resumed after a restart anyway
    proc.handle(DownloadProgress(PROGRESS), 4.0)
    proc.handle(Downloaded(), 5.0)
    assert proc.activating
    assert proc.resumable() is None


def test_switch_runs_are_recorded_without_changing_the_state() -> None:
    proc = run([Start(3, PATH, ENVELOPE, OLD), Downloaded()])
    activating = proc.status
    proc.handle(SwitchStarted(3, PATH, "switch", Purpose.ACTIVATE, 1, "boot-1"), 10.0)
    proc.handle(SwitchSpawned(42, 777), 11.0)
    run_ = proc.record.switch
    assert run_ is not None
    assert (run_.started_at, run_.pid, run_.pid_start, run_.finished) == (10.0, 42, 777, False)
    proc.handle(SwitchExited(0), 12.0)
    run_ = proc.record.switch
    assert run_ is not None
    assert (run_.finished_at, run_.exit_code, run_.boot_id) == (12.0, 0, "boot-1")
    assert proc.status is activating


def test_a_switch_is_recorded_only_during_activation() -> None:
    with pytest.raises(IllegalTransition):
        run([Start(3, PATH), SwitchStarted(3, PATH, "switch", Purpose.ACTIVATE, 1, "b")])
    proc = run([Start(3, PATH), Downloaded()])
    with pytest.raises(IllegalTransition):  # no run recorded: nothing to have exited
        proc.handle(SwitchExited(0), 2.0)
    assert proc.record.switch is None


def test_a_restarted_procedure_has_the_whole_record() -> None:
    proc = run([Start(3, PATH, ENVELOPE, OLD), DownloadFailed("x")])
    again = Procedure.resume(proc.record)
    assert again.record == proc.record
    assert again.resumable() == ENVELOPE


# -- the procedure decides the effects; a driver only answers them ---------------------------

ANN = decode(ENVELOPE.payload, AnnouncementV2)


def ok_switch(system: str, code: int = 0) -> SwitchRan:
    return SwitchRan(ActivationResult(Action.SWITCH, system, code, "out", 0.1))


def drive(proc: Procedure, answers: dict[type, list[Outcome]]) -> list[object]:
    """Answer each effect with the next canned outcome of its type; the effects handed out
    (Saves with the states they report) in order."""
    seen: list[object] = []
    t = 10.0
    while (effect := proc.next_effect()) is not None:
        if isinstance(effect, Save):
            seen.append(("save", [s.state for s in effect.reports]))
            continue
        seen.append(effect)
        t += 1.0
        proc.complete(answers[type(effect)].pop(0), t)
    return seen


def test_a_run_saves_before_every_effect_and_reports_only_what_is_saved() -> None:
    proc = Procedure()
    proc.apply(ANN, ENVELOPE, 1.0, "boot-1")
    seen = drive(
        proc,
        {
            ReadProfile: [ProfileIs(OLD), ProfileIs(OLD)],
            Fetch: [Fetched(PROGRESS)],
            SetProfile: [Done()],
            RunSwitch: [ok_switch(PATH)],
            RunChecks: [ChecksRan(None)],
        },
    )
    assert seen == [
        ReadProfile(),
        ("save", [S.DOWNLOADING]),
        Fetch(PATH),
        ("save", [S.ACTIVATING]),
        ReadProfile(),
        SetProfile(PATH),
        ("save", []),  # the switch run is recorded before it starts
        RunSwitch(PATH, Action.SWITCH, Purpose.ACTIVATE, 1),
        ("save", [S.CHECKING]),
        RunChecks(ANN, ok_switch(PATH).result),
        ("save", [S.APPLIED]),
    ]
    assert proc.applied_sequence == 3
    assert proc.record.previous == OLD
    assert proc.record.switch is not None
    assert (proc.record.switch.boot_id, proc.record.switch.exit_code) == ("boot-1", 0)


def test_the_running_system_is_applied_without_a_download() -> None:
    proc = Procedure()
    proc.apply(ANN, ENVELOPE, 1.0, "b")
    assert drive(proc, {ReadProfile: [ProfileIs(PATH)]}) == [
        ReadProfile(),
        ("save", [S.APPLIED]),
    ]


def test_a_failed_download_ends_the_run_and_is_retried() -> None:
    proc = Procedure()
    proc.apply(ANN, ENVELOPE, 1.0, "b")
    drive(proc, {ReadProfile: [ProfileIs(OLD)], Fetch: [FetchFailed("download failed (x): y")]})
    assert proc.state is S.FAILED
    assert proc.status.error == "download failed (x): y"
    assert proc.resumable() == ENVELOPE


def test_a_failed_switch_rolls_back_and_reactivates_the_previous_system() -> None:
    proc = Procedure()
    proc.apply(ANN, ENVELOPE, 1.0, "b")
    seen = drive(
        proc,
        {
            ReadProfile: [ProfileIs(OLD), ProfileIs(OLD), ProfileIs(PATH)],
            Fetch: [Fetched(PROGRESS)],
            SetProfile: [Done()],
            RunSwitch: [ok_switch(PATH, 4), ok_switch(OLD)],
            RollBackProfile: [ProfileIs(OLD)],
        },
    )
    switches = [e for e in seen if isinstance(e, RunSwitch)]
    assert [(e.system, e.purpose) for e in switches] == [
        (PATH, Purpose.ACTIVATE),
        (OLD, Purpose.ROLLBACK),
    ]
    assert proc.state is S.ROLLED_BACK
    assert proc.status.error == "switch-to-configuration switch exited with code 4"
    assert proc.status.exit_code == 4


def test_no_generation_to_roll_back_to_is_a_failure() -> None:
    proc = Procedure()
    proc.apply(ANN, ENVELOPE, 1.0, "b")
    drive(
        proc,
        {
            ReadProfile: [ProfileIs(None), ProfileIs(None), ProfileIs(PATH)],
            Fetch: [Fetched(PROGRESS)],
            SetProfile: [Done()],
            RunSwitch: [NotDone("no switch-to-configuration")],
            RollBackProfile: [NotDone("none", nothing_to_undo=True)],
        },
    )
    assert proc.state is S.FAILED
    assert proc.status.error == (
        "switch-to-configuration switch did not complete: no switch-to-configuration; "
        "no previous generation to roll back to"
    )


def test_recovery_waits_for_a_switch_that_outlived_the_agent_then_checks() -> None:
    proc = Procedure()
    proc.apply(ANN, ENVELOPE, 1.0, "b")
    answers: dict[type, list[Outcome]] = {
        ReadProfile: [ProfileIs(OLD), ProfileIs(OLD)],
        Fetch: [Fetched(PROGRESS)],
        SetProfile: [Done()],
    }
    while not isinstance(effect := proc.next_effect(), RunSwitch):  # crash during the switch
        if not isinstance(effect, Save):
            assert effect is not None
            proc.complete(answers[type(effect)].pop(0), 2.0)
    restarted = Procedure.resume(proc.record)
    assert restarted.recover(5.0, "b")
    seen = drive(
        restarted,
        {
            IsRunning: [Done()],
            AwaitSurvivor: [Done()],
            ReadProfile: [ProfileIs(PATH), ProfileIs(PATH)],
            RunSwitch: [ok_switch(PATH)],
            RunChecks: [ChecksRan(None)],
        },
    )
    assert [type(e) for e in seen if not isinstance(e, tuple)] == [
        IsRunning,
        AwaitSurvivor,
        ReadProfile,
        ReadProfile,
        RunSwitch,
        RunChecks,
    ]
    assert restarted.state is S.APPLIED
    assert restarted.status.error is not None
    assert "outlived the agent" in restarted.status.error


def test_expiry_is_recorded_and_drops_the_run() -> None:
    proc = Procedure()
    proc.apply(ANN, ENVELOPE, 1.0, "b")
    assert proc.next_effect() == ReadProfile()
    proc.complete(ProfileIs(OLD), 2.0)
    assert isinstance(proc.next_effect(), Save)  # downloading
    assert proc.next_effect() == Fetch(PATH)
    proc.expire(3, 3.0)  # while the download runs: the driver cancelled it
    assert proc.state is S.FAILED
    assert proc.status.error == "announcement 3 expired before it was downloaded"
    assert proc.next_effect() == Save((proc.status,))
    assert proc.next_effect() is None
    assert proc.resumable() is None
    assert not Procedure().recover(1.0, "b")  # idle: nothing to recover
