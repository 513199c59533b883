"""What the update procedure asks the outside world to do, and what it is told back.

`Procedure.next_effect()` (fleet.agent.procedure) hands out one effect at a time; the Updater
(fleet.agent.updater) runs it with Nix and the filesystem and answers with
`Procedure.complete(outcome, now)`. The procedure decides every step from these outcomes;
the Updater decides nothing. `Save` is the procedure's own: persist the record, then publish
the statuses it carries (never report what is not durable); it has no outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fleet.agent.switch_run import Purpose, SwitchRun
from fleet.nix import ActivationResult
from fleet.protocol.messages import AnyAnnouncement, Progress
from fleet.vocabulary import Action

if TYPE_CHECKING:
    from fleet.agent.procedure import Status

# ---------------------------------------------------------------- effects (to run)


@dataclass(frozen=True)
class Save:
    """Persist `Procedure.record` (fsync), then publish `reports` in order."""

    reports: tuple[Status, ...] = ()


@dataclass(frozen=True)
class ReadProfile:
    """Which system the profile's current generation points at -> ProfileIs."""


@dataclass(frozen=True)
class Fetch:
    """Download the closure of `store_path` -> Fetched or FetchFailed (progress is fed to
    the procedure as DownloadProgress while it runs)."""

    store_path: str


@dataclass(frozen=True)
class SetProfile:
    """Point the system profile at `store_path` (a new generation) -> Done or NotDone."""

    store_path: str


@dataclass(frozen=True)
class RunSwitch:
    """Run switch-to-configuration of `system`, recorded (SwitchStarted) before this is
    handed out; its pid is fed back as SwitchSpawned -> SwitchRan or NotDone."""

    system: str
    action: Action
    purpose: Purpose
    attempt: int
    reason: str | None = None  # for a rollback: why (logged)


@dataclass(frozen=True)
class RunChecks:
    """Run the health checks after an activation (None: resuming after a restart) ->
    ChecksRan."""

    announcement: AnyAnnouncement
    activation: ActivationResult | None


@dataclass(frozen=True)
class RollBackProfile:
    """Point the profile back at its previous generation -> ProfileIs or NotDone."""


@dataclass(frozen=True)
class IsRunning:
    """Whether the recorded switch run's process still exists (after a restart) -> Done
    (it does) or NotDone (it does not)."""

    run: SwitchRun


@dataclass(frozen=True)
class AwaitSurvivor:
    """The recorded switch outlived the agent: wait for it to end (killing it after the
    switch timeout) -> Done."""

    run: SwitchRun


Effect = (
    Save
    | ReadProfile
    | Fetch
    | SetProfile
    | RunSwitch
    | RunChecks
    | RollBackProfile
    | IsRunning
    | AwaitSurvivor
)

# ---------------------------------------------------------------- outcomes (fed back)


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class NotDone:
    """The effect did not happen; `reason` in the words of whatever refused it.
    `nothing_to_undo`: a rollback found no previous generation."""

    reason: str = ""
    nothing_to_undo: bool = False


@dataclass(frozen=True)
class ProfileIs:
    path: str | None  # None: the profile has no current generation


@dataclass(frozen=True)
class Fetched:
    progress: Progress


@dataclass(frozen=True)
class FetchFailed:
    reason: str  # "download failed (KIND): what Nix said"


@dataclass(frozen=True)
class SwitchRan:
    result: ActivationResult


@dataclass(frozen=True)
class ChecksRan:
    problem: str | None  # "health check NAME failed: ...", or None: healthy


Outcome = Done | NotDone | ProfileIs | Fetched | FetchFailed | SwitchRan | ChecksRan
