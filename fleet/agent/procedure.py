"""The agent's update procedure as one explicit state machine, without I/O (h11 style).

Inputs are small event objects; `Procedure.handle(event, now)` checks the event against the
one table below (TABLE), moves to the target state and returns the new `Status`. An event
that is not legal in the current state raises IllegalTransition and changes nothing. The
Procedure owns the whole durable record of the agent (`AgentRecord`: the status, the applied
sequence, the announcement, the previous system, whether a failed download is retried, the
last switch-to-configuration run), so every change to it is a transition here.
The Procedure also decides what happens next: `apply()` (an accepted announcement) or
`recover()` (after a restart) starts a run, `next_effect()` hands out the next effect
(fleet.agent.effects: read the profile, fetch, set the profile, run a switch, run the checks,
roll back, save) and `complete(outcome, now)` takes its result. The Updater
(fleet.agent.updater) only runs the effects; a `Save` comes before every other effect and at
the end of a run whenever the record changed, so the record is persisted before the status is
reported upstream, and what the coordinator hears is never ahead of what survives a crash.

    idle ─Start─> downloading ─Downloaded─> activating ─Activated─> checking ─CheckPassed─> applied
      │              │  ^ Start (newer one       │                     │
      │              │  | supersedes)            │ RolledBack          │ RolledBack
      │              │──┘                        v                     v
      │              └─DownloadFailed─> failed   rolled-back <─────────┘
      │                                          (Failed from activating/checking when even
      │                                           rolling back is impossible)
      └─AlreadyRunning─> applied     (also from applied, rolled-back, failed, downloading)

    After a restart (fleet.agent.recovery decides which): activating ─Recovering─> activating
    (an interrupted switch is re-run or waited for), activating/checking ─Resumed─> checking
    (the switch was recorded as exited 0). The profile link alone never leads to applied.

Terminal states (applied, rolled-back, failed) accept Start / AlreadyRunning for the next
announcement; a failed download is retried with a new Start of the same announcement, until
it expires (Expired while downloading, Abandoned while waiting to retry).
Record-only events change the record and not the state (target None in TABLE, nothing to
report): Abandoned, and SwitchStarted / SwitchSpawned / SwitchExited, the record of each
switch-to-configuration run that recovery after a crash goes by.
Recovering and Resumed are only used after a restart (see docs/agent.md). The `note` of
Recovering, Activated, Resumed and CheckPassed is what recovery did; it is reported as the
status's error, so an `applied` reached by recovery says how it got there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field

from fleet.agent import recovery
from fleet.agent.effects import (
    AwaitSurvivor,
    ChecksRan,
    Done,
    Effect,
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
from fleet.agent.switch_run import Purpose, SwitchRun
from fleet.log import get_logger
from fleet.nix import ActivationResult
from fleet.protocol.messages import (
    AgentState,
    AnyAnnouncement,
    Progress,
    StatusReport,
    SystemState,
)
from fleet.protocol.targeting import read_announcement
from fleet.vocabulary import Action
from fleet.wire import SignedEnvelope, WireError

log = get_logger("fleet.agent.updater")

S = AgentState

TAIL_CHARS = 4096  # of the activation output sent upstream (the full tail is logged locally)


class IllegalTransition(Exception):
    """An event that the procedure does not accept in its current state."""

    def __init__(self, state: AgentState, event: Event) -> None:
        super().__init__(f"{type(event).__name__} is not allowed in state {state.value}")
        self.state = state
        self.event = event


# ---------------------------------------------------------------- events (inputs)


@dataclass(frozen=True)
class Start:
    """Begin work on an accepted announcement (signed, verbatim): download its closure.
    `previous`: the system current before it, what a rollback returns to."""

    sequence: int
    desired: str
    announcement: SignedEnvelope | None = None
    previous: str | None = None


@dataclass(frozen=True)
class AlreadyRunning:
    """The announcement names the system the device already runs: nothing to do."""

    sequence: int
    desired: str
    announcement: SignedEnvelope | None = None


@dataclass(frozen=True)
class DownloadProgress:
    progress: Progress


@dataclass(frozen=True)
class Downloaded:
    pass


@dataclass(frozen=True)
class DownloadFailed:
    error: str


@dataclass(frozen=True)
class Expired:
    """The announcement being downloaded expired: failed, and not retried."""

    error: str


@dataclass(frozen=True)
class Abandoned:
    """A failed download is no longer retried (its announcement expired); record only."""


@dataclass(frozen=True)
class SwitchStarted:
    """switch-to-configuration of `system` is about to start (recorded before it does)."""

    sequence: int
    system: str
    action: str
    purpose: Purpose
    attempt: int
    boot_id: str
    reason: str | None = None


@dataclass(frozen=True)
class SwitchSpawned:
    """The recorded switch's process exists: its pid and start time (to find it again)."""

    pid: int
    pid_start: int | None


@dataclass(frozen=True)
class SwitchExited:
    """The recorded switch ended (`exit_code` None: timed out, or no script)."""

    exit_code: int | None


@dataclass(frozen=True)
class Activated:
    """switch-to-configuration exited 0. `note`: what recovery did first (reported as error)."""

    note: str | None = None


@dataclass(frozen=True)
class Recovering:
    """After a restart in activating: the interrupted activation is being settled (re-run,
    waited for), never assumed done; see fleet.agent.recovery."""

    note: str


@dataclass(frozen=True)
class Resumed:
    """After a restart: the switch was recorded as exited 0; the health checks run again."""

    note: str | None = None


@dataclass(frozen=True)
class CheckPassed:
    note: str | None = None


@dataclass(frozen=True)
class RolledBack:
    """Activation or a health check failed; the previous system is active again."""

    error: str
    exit_code: int | None = None
    log_tail: str | None = None


@dataclass(frozen=True)
class Failed:
    """Activation could not proceed, or could not be undone (e.g. no previous generation)."""

    error: str
    exit_code: int | None = None
    log_tail: str | None = None


Event = (
    Start
    | AlreadyRunning
    | DownloadProgress
    | Downloaded
    | DownloadFailed
    | Expired
    | Abandoned
    | SwitchStarted
    | SwitchSpawned
    | SwitchExited
    | Activated
    | Recovering
    | Resumed
    | CheckPassed
    | RolledBack
    | Failed
)

_NEXT = frozenset({S.IDLE, S.APPLIED, S.ROLLED_BACK, S.FAILED, S.DOWNLOADING})
_ACTIVATION = frozenset({S.ACTIVATING, S.CHECKING})  # never superseded nor interrupted

# The one place where the legal transitions are written: event -> (from states, to state);
# to state None: the record changes, the state (and `since`) stay, nothing is reported.
TABLE: Mapping[type[Event], tuple[frozenset[AgentState], AgentState | None]] = {
    Start: (_NEXT, S.DOWNLOADING),
    AlreadyRunning: (_NEXT, S.APPLIED),
    DownloadProgress: (frozenset({S.DOWNLOADING}), S.DOWNLOADING),
    Downloaded: (frozenset({S.DOWNLOADING}), S.ACTIVATING),
    DownloadFailed: (frozenset({S.DOWNLOADING}), S.FAILED),
    Expired: (frozenset({S.DOWNLOADING}), S.FAILED),
    Abandoned: (frozenset({S.FAILED}), None),
    SwitchStarted: (_ACTIVATION, None),
    SwitchSpawned: (_ACTIVATION, None),
    SwitchExited: (_ACTIVATION, None),
    Activated: (frozenset({S.ACTIVATING}), S.CHECKING),
    Recovering: (frozenset({S.ACTIVATING}), S.ACTIVATING),
    Resumed: (frozenset({S.ACTIVATING, S.CHECKING}), S.CHECKING),
    CheckPassed: (frozenset({S.CHECKING}), S.APPLIED),
    RolledBack: (frozenset({S.ACTIVATING, S.CHECKING}), S.ROLLED_BACK),
    Failed: (frozenset({S.ACTIVATING, S.CHECKING}), S.FAILED),
}


def transitions() -> dict[AgentState, frozenset[AgentState]]:
    """State -> states reachable in one step (derived from TABLE, for docs and tests)."""
    result: dict[AgentState, set[AgentState]] = {state: set() for state in AgentState}
    for sources, target in TABLE.values():
        if target is None:
            continue  # record-only: not a step between states
        for source in sources:
            result[source].add(target)
    return {state: frozenset(targets) for state, targets in result.items()}


# ---------------------------------------------------------------- status (output)


@dataclass(frozen=True)
class Status:
    """Where the procedure stands; what is persisted and reported."""

    state: AgentState
    since: float
    sequence: int | None = None
    desired: str | None = None
    progress: Progress | None = None
    error: str | None = None
    exit_code: int | None = None
    log_tail: str | None = None

    def report(self, current: SystemState) -> StatusReport:
        return StatusReport(
            state=self.state,
            since=self.since,
            sequence=self.sequence,
            desired=self.desired,
            current=current,
            progress=self.progress,
            error=self.error,
            exit_code=self.exit_code,
            log_tail=self.log_tail,
        )


@dataclass(frozen=True)
class AgentRecord:
    """Everything the agent must remember across restarts (saved by fleet.agent.state)."""

    applied_sequence: int = 0  # highest sequence that reached `applied`
    status: Status = field(default_factory=lambda: Status(state=S.IDLE, since=0.0))
    announcement: SignedEnvelope | None = None  # in progress, or the last one finished
    previous: str | None = None  # the system that was current before activation began
    retrying: bool = False  # failed to download: retry the announcement after a restart
    switch: SwitchRun | None = None  # the last switch-to-configuration run (started/finished)


# A run: yields effects, is sent their outcomes, returns when the procedure has nothing to do.
Run = Generator[Effect, Outcome, None]


class Procedure:
    """The update procedure of one device, owner of its record. `applied_sequence` only
    ever grows."""

    def __init__(self, status: Status | None = None, applied_sequence: int = 0) -> None:
        self.record = AgentRecord(
            applied_sequence=applied_sequence, status=status or Status(state=S.IDLE, since=0.0)
        )
        self._run: Run | None = None
        self._effect: Effect | None = None  # handed out, waiting for its outcome
        self._now = 0.0
        self._boot = ""
        self._unsaved = False
        self._reports: list[Status] = []

    @classmethod
    def resume(cls, record: AgentRecord) -> Procedure:
        """The procedure where a saved record left it (after a restart)."""
        procedure = cls()
        procedure.record = record
        return procedure

    @property
    def status(self) -> Status:
        return self.record.status

    @property
    def state(self) -> AgentState:
        return self.record.status.state

    @property
    def applied_sequence(self) -> int:
        return self.record.applied_sequence

    @property
    def activating(self) -> bool:
        """From the end of the download to a final state: nothing may interrupt it."""
        return self.state in _ACTIVATION

    def resumable(self) -> SignedEnvelope | None:
        """The announcement to take up again after a restart: a download in progress, or
        one that failed and is retried; None otherwise."""
        if self.state is S.DOWNLOADING or (self.state is S.FAILED and self.record.retrying):
            return self.record.announcement
        return None

    def can(self, event: Event) -> bool:
        sources, _ = TABLE[type(event)]
        return self.state in sources

    def handle(self, event: Event, now: float) -> Status:
        """Apply `event`; return the new status. Raises IllegalTransition (nothing changes)."""
        sources, target = TABLE[type(event)]
        record = self.record
        if record.status.state not in sources:
            raise IllegalTransition(record.status.state, event)
        if target is None:
            self.record = self._record_only(event, now)
            return self.record.status
        old = record.status
        announcement, previous = record.announcement, record.previous
        match event:
            case Start(sequence=seq, desired=desired, announcement=envelope, previous=before):
                new = Status(state=target, since=now, sequence=seq, desired=desired)
                announcement, previous = envelope, before
            case AlreadyRunning(sequence=seq, desired=desired, announcement=envelope):
                new = Status(state=target, since=now, sequence=seq, desired=desired)
                announcement = envelope
            case DownloadProgress(progress=progress):
                new = dataclasses.replace(old, progress=progress)  # same state, same since
            case (
                RolledBack(error=error, exit_code=code, log_tail=tail)
                | Failed(error=error, exit_code=code, log_tail=tail)
            ):
                new = dataclasses.replace(
                    old, state=target, since=now, error=error, exit_code=code, log_tail=tail
                )
            case DownloadFailed(error=error) | Expired(error=error) | Recovering(note=error):
                new = dataclasses.replace(old, state=target, since=now, error=error)
            case Activated(note=note) | Resumed(note=note) | CheckPassed(note=note):
                new = dataclasses.replace(old, state=target, since=now, error=note)
            case _:
                new = dataclasses.replace(old, state=target, since=now, error=None)
        applied = record.applied_sequence
        if target is S.APPLIED and new.sequence is not None:
            applied = max(applied, new.sequence)
        # Only a failed download is retried; progress leaves that as it is.
        retrying = (
            record.retrying
            if isinstance(event, DownloadProgress)
            else isinstance(event, DownloadFailed)
        )
        self.record = dataclasses.replace(
            record,
            status=new,
            applied_sequence=applied,
            announcement=announcement,
            previous=previous,
            retrying=retrying,
        )
        return new

    def _record_only(self, event: Event, now: float) -> AgentRecord:
        record = self.record
        run = record.switch
        match event:
            case Abandoned():
                return dataclasses.replace(record, retrying=False)
            case SwitchStarted():
                started = SwitchRun(
                    sequence=event.sequence,
                    system=event.system,
                    action=event.action,
                    purpose=event.purpose,
                    attempt=event.attempt,
                    started_at=now,
                    boot_id=event.boot_id,
                    reason=event.reason,
                )
                return dataclasses.replace(record, switch=started)
            case SwitchSpawned(pid=pid, pid_start=pid_start) if run is not None:
                spawned = dataclasses.replace(run, pid=pid, pid_start=pid_start)
                return dataclasses.replace(record, switch=spawned)
            case SwitchExited(exit_code=code) if run is not None:
                ended = dataclasses.replace(run, finished_at=now, exit_code=code)
                return dataclasses.replace(record, switch=ended)
        raise IllegalTransition(record.status.state, event)  # no switch run recorded

    # ------------------------------------------------------------ runs: effects out

    def apply(self, ann: AnyAnnouncement, envelope: SignedEnvelope, now: float, boot: str) -> None:
        """Start running an accepted announcement to a final state (`boot`: this boot's id,
        recorded with every switch run). A run in progress is dropped (superseded)."""
        self._begin(self._apply(ann, envelope), now, boot)

    def recover(self, now: float, boot: str) -> bool:
        """After a restart in activating or checking: start settling it (False: nothing to
        settle). The profile link is never taken as proof of activation: the record of the
        last switch run decides (fleet.agent.recovery has the rules)."""
        if self.state not in _ACTIVATION:
            return False
        self._begin(self._recover(), now, boot)
        return True

    def expire(self, sequence: int, now: float) -> None:
        """The announcement worked on expired before its download succeeded: drop the run
        and record it (a Save follows), so a restart does not take it up again."""
        self._drop_run()
        self._now = now
        if self.state is S.DOWNLOADING:
            self._move(Expired(f"announcement {sequence} expired before it was downloaded"))
        elif self.record.retrying:
            self._move(Abandoned())

    def next_effect(self) -> Effect | None:
        """What to do now; None when no run is in progress (or it has ended)."""
        if self._unsaved:
            self._unsaved = False
            reports, self._reports = tuple(self._reports), []
            return Save(reports)
        return self._effect

    def complete(self, outcome: Outcome, now: float) -> None:
        """The outcome of the effect last handed out (not of a Save: that has none)."""
        if self._run is None or self._effect is None:
            raise RuntimeError("no effect is waiting for an outcome")
        self._now = now
        self._advance(self._run, outcome)

    def _begin(self, run: Run, now: float, boot: str) -> None:
        self._drop_run()
        self._run, self._now, self._boot = run, now, boot
        self._advance(run, None)

    def _advance(self, run: Run, outcome: Outcome | None) -> None:
        try:
            self._effect = next(run) if outcome is None else run.send(outcome)
        except StopIteration:
            self._run = self._effect = None

    def _drop_run(self) -> None:
        """A run left unfinished (its effect cancelled: superseded, or expired)."""
        if self._run is not None:
            self._run.close()
        self._run = self._effect = None

    def _move(self, event: Event) -> Status:
        """A transition inside a run: saved before the next effect, its status reported."""
        before = self.status
        status = self.handle(event, self._now)
        self._unsaved = True
        if status is not before and not isinstance(event, DownloadProgress):
            self._reports.append(status)
        return status

    def _apply(self, ann: AnyAnnouncement, envelope: SignedEnvelope) -> Run:
        profile = yield ReadProfile()
        assert isinstance(profile, ProfileIs)
        current = profile.path
        if current == ann.store_path:
            log.info("agent_already_running", sequence=ann.sequence, path=ann.store_path)
            self._move(AlreadyRunning(ann.sequence, ann.store_path, envelope))
            return
        self._move(Start(ann.sequence, ann.store_path, envelope, current))
        fetched = yield Fetch(ann.store_path)
        if isinstance(fetched, FetchFailed):
            self._move(DownloadFailed(fetched.reason))  # retried by the agent (retrying)
            return
        assert isinstance(fetched, Fetched)
        # From here on nothing may interrupt the procedure (activating: see Agent.offer).
        self._move(DownloadProgress(fetched.progress))
        self._move(Downloaded())
        yield from self._activate(ann)

    def _switch(
        self, ann: AnyAnnouncement, system: str, purpose: Purpose, attempt: int, reason: str | None
    ) -> Generator[Effect, Outcome, SwitchRan | NotDone]:
        """Run switch-to-configuration, recorded durably before it starts and when it ends.

        A crash between the two leaves a run recorded as started and not finished, which is
        what recovery (fleet.agent.recovery) goes by, never the profile link.
        """
        action = ann.action
        self._move(
            SwitchStarted(ann.sequence, system, action.value, purpose, attempt, self._boot, reason)
        )
        ran = yield RunSwitch(system, action, purpose, attempt, reason)
        assert isinstance(ran, SwitchRan | NotDone)
        self._move(SwitchExited(ran.result.exit_code if isinstance(ran, SwitchRan) else None))
        return ran

    def _activate(self, ann: AnyAnnouncement, *, attempt: int = 1, note: str | None = None) -> Run:
        """Set the profile (switch, boot) and run the switch; `note`: what recovery did."""
        action = ann.action
        lead = f"{note}; " if note is not None else ""
        verb = ("re-ran " if attempt > 1 else "ran ") if note is not None else ""
        script = f"{lead}{verb}switch-to-configuration {action.value}"
        if action in (Action.SWITCH, Action.BOOT):
            current = yield ReadProfile()
            if current != ProfileIs(ann.store_path):  # not again when recovering
                made = yield SetProfile(ann.store_path)
                if isinstance(made, NotDone):
                    self._move(Failed(f"{lead}cannot set the system profile: {made.reason}"))
                    return
        ran = yield from self._switch(ann, ann.store_path, Purpose.ACTIVATE, attempt, None)
        if isinstance(ran, NotDone):  # no script, or it ran past the timeout (and was killed)
            yield from self._roll_back(ann, f"{script} did not complete: {ran.reason}")
            return
        result = ran.result
        if not result.ok:
            log.warning(
                "agent_activation_failed", exit_code=result.exit_code, tail=result.output_tail
            )
            colon = ":" if note is not None else ""
            yield from self._roll_back(
                ann,
                f"{script}{colon} exited with code {result.exit_code}",
                result.exit_code,
                result.output_tail[-TAIL_CHARS:],
            )
            return
        done = f"{script}: ok" if note is not None else None
        self._move(Activated(done))
        yield from self._check(ann, result, done)

    def _check(
        self, ann: AnyAnnouncement, result: ActivationResult | None, note: str | None = None
    ) -> Run:
        checked = yield RunChecks(ann, result)
        assert isinstance(checked, ChecksRan)
        if checked.problem is not None:
            prefix = f"{note}; " if note is not None else ""
            yield from self._roll_back(ann, f"{prefix}{checked.problem}")
            return
        self._move(CheckPassed(note))

    def _roll_back(
        self,
        ann: AnyAnnouncement,
        error: str,
        exit_code: int | None = None,
        tail: str | None = None,
    ) -> Run:
        current = yield ReadProfile()
        assert isinstance(current, ProfileIs)
        if ann.action is Action.TEST:
            if current.path is None:  # untouched by `test`
                self._move(Failed(f"{error}; no previous system to re-activate", exit_code, tail))
                return
            target = current.path
        elif (
            current.path is not None
            and current.path == self.record.previous
            and current.path != ann.store_path
        ):
            target = current.path  # rolled back already, before a restart
        else:
            back = yield RollBackProfile()
            if isinstance(back, NotDone):
                problem = (
                    "no previous generation to roll back to"
                    if back.nothing_to_undo
                    else f"rollback failed: {back.reason}"
                )
                self._move(Failed(f"{error}; {problem}", exit_code, tail))
                return
            assert isinstance(back, ProfileIs)
            assert back.path is not None
            target = back.path
        yield from self._reactivate(ann, target, error, exit_code, tail)

    def _reactivate(
        self,
        ann: AnyAnnouncement,
        target: str,
        error: str,
        exit_code: int | None = None,
        tail: str | None = None,
        attempt: int = 1,
    ) -> Run:
        """Activate `target` (the profile points at it) again; the outcome is rolled-back."""
        log.warning("agent_rolling_back", error=error, to=target, attempt=attempt)
        again = yield from self._switch(ann, target, Purpose.ROLLBACK, attempt, error)
        if isinstance(again, NotDone):
            error += f"; re-activating {target} did not complete: {again.reason}"
        elif not again.result.ok:
            error += f"; re-activating {target} exited with code {again.result.exit_code}"
        self._move(RolledBack(error, exit_code, tail))

    def _recover(self) -> Run:
        status = self.status
        ann = None
        if self.record.announcement is not None:
            try:
                ann = read_announcement(self.record.announcement.payload)
            except (WireError, ValueError, TypeError):
                ann = None
        if ann is None:
            log.warning("agent_recovering", state=status.state.value, plan="Fail")
            self._move(
                Failed(
                    "the agent restarted during activation and cannot read the announcement; "
                    "the activation was not re-run"
                )
            )
            return
        run = self.record.switch
        if run is not None and run.sequence != ann.sequence:
            run = None  # the record of an earlier announcement's switch
        outlived = False
        if run is not None and isinstance((yield IsRunning(run)), Done):
            outlived = True
            if self.state is S.ACTIVATING:
                self._move(
                    Recovering(
                        f"waiting for switch-to-configuration {run.action} (pid {run.pid}), "
                        "which outlived the agent"
                    )
                )
            yield AwaitSurvivor(run)
        current = yield ReadProfile()
        assert isinstance(current, ProfileIs)
        step = recovery.plan(
            status.state,
            desired=ann.store_path,
            action=ann.action.value,
            profile=current.path,
            previous=self.record.previous,
            run=run,
            outlived=outlived,
            boot=self._boot,
        )
        log.warning(
            "agent_recovering",
            state=status.state.value,
            profile=current.path,
            switch_attempt=run.attempt if run is not None else None,
            switch_finished=run.finished if run is not None else None,
            plan=type(step).__name__,
        )
        match step:
            case recovery.ResumeChecks(note=note):
                self._move(Resumed(note))
                yield from self._check(ann, None, note)
            case recovery.RunSwitch(attempt=attempt, note=note):
                again = "re-running" if attempt > 1 else "running"
                self._move(Recovering(f"{note}; {again} switch-to-configuration"))
                yield from self._activate(ann, attempt=attempt, note=note)
            case recovery.RollBack(error=error, exit_code=code):
                yield from self._roll_back(ann, error, code)
            case recovery.Reactivate(system=system, attempt=attempt, error=error):
                yield from self._reactivate(ann, system, error, attempt=attempt)
            case recovery.RolledBackAlready(error=error):
                self._move(RolledBack(error))
            case recovery.Fail(error=error):
                self._move(Failed(error))
