"""The agent's update procedure as one explicit state machine, without I/O (h11 style).

Inputs are small event objects; `Procedure.handle(event, now)` checks the event against the
one table below (TABLE), moves to the target state and returns the new `Status`. An event
that is not legal in the current state raises IllegalTransition and changes nothing. The
caller (fleet.agent.apply) does the I/O: it persists every returned Status before it reports
it upstream, so what the coordinator hears is never ahead of what survives a crash.

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
announcement; a failed download is retried with a new Start of the same announcement.
Recovering and Resumed are only used after a restart (see docs/agent.md). The `note` of
Recovering, Activated, Resumed and CheckPassed is what recovery did; it is reported as the
status's error, so an `applied` reached by recovery says how it got there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from fleet.protocol.messages import AgentState, Progress, StatusReport, SystemState

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
    """Begin work on an accepted announcement: download its closure."""

    sequence: int
    desired: str


@dataclass(frozen=True)
class AlreadyRunning:
    """The announcement names the system the device already runs: nothing to do."""

    sequence: int
    desired: str


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
    | Activated
    | Recovering
    | Resumed
    | CheckPassed
    | RolledBack
    | Failed
)

_NEXT = frozenset({S.IDLE, S.APPLIED, S.ROLLED_BACK, S.FAILED, S.DOWNLOADING})

# The one place where the legal transitions are written: event -> (from states, to state).
TABLE: Mapping[type[Event], tuple[frozenset[AgentState], AgentState]] = {
    Start: (_NEXT, S.DOWNLOADING),
    AlreadyRunning: (_NEXT, S.APPLIED),
    DownloadProgress: (frozenset({S.DOWNLOADING}), S.DOWNLOADING),
    Downloaded: (frozenset({S.DOWNLOADING}), S.ACTIVATING),
    DownloadFailed: (frozenset({S.DOWNLOADING}), S.FAILED),
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


class Procedure:
    """The update procedure of one device. `applied_sequence` only ever grows."""

    def __init__(self, status: Status | None = None, applied_sequence: int = 0) -> None:
        self.status = status or Status(state=S.IDLE, since=0.0)
        self.applied_sequence = applied_sequence

    @property
    def state(self) -> AgentState:
        return self.status.state

    def can(self, event: Event) -> bool:
        sources, _ = TABLE[type(event)]
        return self.status.state in sources

    def handle(self, event: Event, now: float) -> Status:
        """Apply `event`; return the new status. Raises IllegalTransition (nothing changes)."""
        sources, target = TABLE[type(event)]
        old = self.status
        if old.state not in sources:
            raise IllegalTransition(old.state, event)
        match event:
            case (
                Start(sequence=seq, desired=desired) | AlreadyRunning(sequence=seq, desired=desired)
            ):
                new = Status(state=target, since=now, sequence=seq, desired=desired)
            case DownloadProgress(progress=progress):
                new = dataclasses.replace(old, progress=progress)  # same state, same since
            case (
                RolledBack(error=error, exit_code=code, log_tail=tail)
                | Failed(error=error, exit_code=code, log_tail=tail)
            ):
                new = dataclasses.replace(
                    old, state=target, since=now, error=error, exit_code=code, log_tail=tail
                )
            case DownloadFailed(error=error) | Recovering(note=error):
                new = dataclasses.replace(old, state=target, since=now, error=error)
            case Activated(note=note) | Resumed(note=note) | CheckPassed(note=note):
                new = dataclasses.replace(old, state=target, since=now, error=note)
            case _:
                new = dataclasses.replace(old, state=target, since=now, error=None)
        if target is S.APPLIED and new.sequence is not None:
            self.applied_sequence = max(self.applied_sequence, new.sequence)
        self.status = new
        return new
