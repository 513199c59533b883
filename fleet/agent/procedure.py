"""The agent's update procedure as one explicit state machine, without I/O (h11 style).

Inputs are small event objects; `Procedure.handle(event, now)` checks the event against the
one table below (TABLE), moves to the target state and returns the new `Status`. An event
that is not legal in the current state raises IllegalTransition and changes nothing. The
Procedure owns the whole durable record of the agent (`AgentRecord`: the status, the applied
sequence, the announcement, the previous system, whether a failed download is retried, the
last switch-to-configuration run), so every change to it is a transition here. The caller
(fleet.agent.updater) does the I/O: it persists `Procedure.record` after every event before
it reports the status upstream, so what the coordinator hears is never ahead of what
survives a crash.

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
from collections.abc import Mapping
from dataclasses import dataclass, field

from fleet.agent.switch_run import Purpose, SwitchRun
from fleet.protocol.messages import AgentState, Progress, StatusReport, SystemState
from fleet.wire import SignedEnvelope

S = AgentState


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


class Procedure:
    """The update procedure of one device, owner of its record. `applied_sequence` only
    ever grows."""

    def __init__(self, status: Status | None = None, applied_sequence: int = 0) -> None:
        self.record = AgentRecord(
            applied_sequence=applied_sequence, status=status or Status(state=S.IDLE, since=0.0)
        )

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
