"""Applying an accepted announcement with Nix, driving the update procedure as it goes.

The Updater is the I/O half of fleet.agent.procedure: it runs the effects the Procedure hands
out (fleet.agent.effects: download, set the profile, run switch-to-configuration, run the
health checks, roll back, save the record) and feeds each outcome back; the Procedure owns the
agent's record and decides every step. A `Save` persists the record to the state file
(fleet.agent.state) *before* the statuses it carries are published upstream.

Actions: `switch` and `boot` set the system profile (a new generation) before running the
script; `test` activates without touching the profile (that is what `test` means in NixOS:
the previous default boots next time), so rolling back a failed `test` re-activates the
profile's system with `test`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

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
from fleet.agent.procedure import (
    AgentRecord,
    DownloadProgress,
    Event,
    Procedure,
    Status,
    SwitchSpawned,
)
from fleet.agent.state import StateFile
from fleet.agent.switch_run import (
    SwitchRun,
    boot_id,
    is_running,
    kill,
    process_start,
    wait_until_gone,
)
from fleet.agent.verify import Accepted
from fleet.log import get_logger
from fleet.nix import (
    ActivationResult,
    CacheUnreachable,
    FetchProgress,
    Generation,
    HashMismatch,
    NixError,
    NixStore,
    NixTimeout,
    PathNotFound,
    ProfileError,
    SignatureError,
    fetch_closure,
    rollback,
    run_switch,
    set_profile,
)
from fleet.nix.profile import list_generations_sync
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


class DownloadError(Exception):
    """The closure could not be fetched; the caller retries with backoff."""


# ---------------------------------------------------------------- health checks


@dataclass(frozen=True)
class CheckContext:
    store: NixStore
    profile: Path
    announcement: AnyAnnouncement
    activation: ActivationResult | None  # None when resuming after a restart


class HealthCheck(Protocol):
    """One check after activation: None if healthy, else what is wrong (for the report)."""

    name: str

    async def __call__(self, ctx: CheckContext) -> str | None: ...


class ProfileCheck:
    """The system profile points at the announced path (switch and boot only)."""

    name = "profile"

    async def __call__(self, ctx: CheckContext) -> str | None:
        if ctx.announcement.action not in (Action.SWITCH, Action.BOOT):
            return None
        current = _current_generation(ctx.profile)
        if current is None or current.path != ctx.announcement.store_path:
            found = current.path if current is not None else "nothing"
            return f"the system profile points at {found}, not {ctx.announcement.store_path}"
        return None


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ApplyConfig:
    store: NixStore
    profile: Path
    substituters: tuple[str, ...]  # from local configuration only, never the announcement
    trusted_public_keys: tuple[str, ...]
    switch_env: Mapping[str, str] | None = None  # None: the agent's own environment
    fetch_timeout: float = 3600.0
    switch_timeout: float = 900.0
    download_attempts: int | None = None  # Nix's own retries per fetch (None: Nix default)
    connect_timeout: int | None = None
    progress_interval: float = 0.5  # at most one progress report per this many seconds
    checks: Sequence[HealthCheck] = field(default_factory=lambda: (ProfileCheck(),))


def _current_generation(profile: Path) -> Generation | None:
    for generation in list_generations_sync(profile):
        if generation.current:
            return generation
    return None


def running_system(profile: Path) -> SystemState:
    """The system the profile's current generation points at (what Hello and status carry)."""
    generation = _current_generation(profile)
    if generation is None:
        return SystemState(store_path=None, generation=None)
    return SystemState(store_path=generation.path, generation=generation.number)


class Updater:
    """Runs the effects the Procedure hands out, one announcement at a time, and feeds their
    outcomes back; the Procedure owns the record and decides every step."""

    def __init__(
        self,
        config: ApplyConfig,
        state: StateFile,
        record: AgentRecord,
        publish: Callable[[StatusReport], None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.state = state
        self.publish = publish
        self.clock = clock
        self.procedure = Procedure.resume(record)
        self._last_progress = 0.0

    # -- status -------------------------------------------------------------------------

    def current(self) -> SystemState:
        return running_system(self.config.profile)

    def report(self) -> StatusReport:
        return self.procedure.status.report(self.current())

    @property
    def status(self) -> Status:
        return self.procedure.status

    @property
    def announcement(self) -> SignedEnvelope | None:
        """The announcement in progress, or the last one finished (signed, verbatim)."""
        return self.procedure.record.announcement

    @property
    def activating(self) -> bool:
        """From the end of the download to the final state (see Agent.offer)."""
        return self.procedure.activating

    def _emit(self, event: Event) -> None:
        """Feed what was observed while an effect runs (progress, a switch's pid) to the
        procedure: progress is published and not persisted; a record-only event is persisted
        and not published (the status did not change)."""
        status = self.procedure.handle(event, self.clock())
        if isinstance(event, DownloadProgress):
            self.publish(status.report(self.current()))
        else:
            self._save(Save())

    def _save(self, save: Save) -> None:
        """Persist the record (fsync), then publish: never report what is not durable."""
        self.state.save(self.procedure.record)
        for status in save.reports:
            log.info(
                "agent_state",
                state=status.state.value,
                sequence=status.sequence,
                desired=status.desired,
                error=status.error,
            )
            self.publish(status.report(self.current()))

    def _on_progress(self, snap: FetchProgress) -> None:
        now = time.monotonic()
        if now - self._last_progress < self.config.progress_interval:
            return
        self._last_progress = now
        self._emit(DownloadProgress(_progress(snap)))

    async def _drive(self) -> Status:
        """Run the procedure's effects until it hands out none; its status then."""
        procedure = self.procedure
        while (effect := procedure.next_effect()) is not None:
            if isinstance(effect, Save):
                self._save(effect)
                continue
            outcome = await self._run(effect)
            procedure.complete(outcome, self.clock())
        return procedure.status

    # -- the procedure --------------------------------------------------------------------

    async def apply(self, accepted: Accepted) -> Status:
        """Run one announcement to a final state. Raises DownloadError (retry later)."""
        self.procedure.apply(accepted.announcement, accepted.envelope, self.clock(), boot_id())
        status = await self._drive()
        if status.state is AgentState.FAILED and self.procedure.record.retrying:
            raise DownloadError(status.error or "download failed")
        return status

    def expire(self, accepted: Accepted) -> None:
        """Stop working on an announcement that expired before its download succeeded; the
        procedure records it, so a restart does not take it up again."""
        self.procedure.expire(accepted.announcement.sequence, self.clock())
        while (effect := self.procedure.next_effect()) is not None:
            assert isinstance(effect, Save)  # no run is left: only what expiry recorded
            self._save(effect)

    async def recover(self) -> Status | None:
        """Settle a procedure that a restart interrupted in activating or checking.

        The procedure decides how (fleet.agent.procedure, fleet.agent.recovery): a switch
        that outlived the agent is waited for (at most `switch_timeout`, then killed); an
        interrupted one is re-run once, then rolled back; every path ends in the health
        checks or a rollback, and the report says what was done.
        """
        if not self.procedure.recover(self.clock(), boot_id()):
            return None
        return await self._drive()

    def pending(self) -> Accepted | None:
        """The announcement to resume after a restart (a download in progress or retrying)."""
        envelope = self.procedure.resumable()
        if envelope is None:
            return None
        try:
            ann = read_announcement(envelope.payload)
        except (WireError, ValueError, TypeError):
            return None
        return Accepted(ann, envelope, duplicate=False)

    # -- the effects ----------------------------------------------------------------------

    async def _run(self, effect: Effect) -> Outcome:
        cfg = self.config
        match effect:
            case ReadProfile():
                current = _current_generation(cfg.profile)
                return ProfileIs(current.path if current is not None else None)
            case Fetch(store_path=path):
                return await self._fetch(path)
            case SetProfile(store_path=path):
                try:
                    await set_profile(cfg.store, path, cfg.profile)
                except NixError as exc:
                    return NotDone(exc.reason)
                return Done()
            case RunSwitch():
                return await self._switch(effect)
            case RunChecks(announcement=ann, activation=activation):
                return ChecksRan(
                    await self._check(CheckContext(cfg.store, cfg.profile, ann, activation))
                )
            case RollBackProfile():
                try:
                    return ProfileIs((await rollback(cfg.store, cfg.profile)).path)
                except ProfileError:
                    return NotDone("no previous generation", nothing_to_undo=True)
                except NixError as exc:
                    return NotDone(exc.reason)
            case IsRunning(run=run):
                return Done() if is_running(run) else NotDone()
            case AwaitSurvivor(run=run):
                await self._wait_for_survivor(run)
                return Done()
        raise AssertionError(f"unknown effect {effect!r}")

    async def _fetch(self, path: str) -> Fetched | FetchFailed:
        cfg = self.config
        self._last_progress = 0.0
        try:
            result = await fetch_closure(
                cfg.store,
                path,
                cfg.substituters,
                cfg.trusted_public_keys,
                on_progress=self._on_progress,
                timeout=cfg.fetch_timeout,
                download_attempts=cfg.download_attempts,
                connect_timeout=cfg.connect_timeout,
            )
        except (NixError, ValueError) as exc:
            return FetchFailed(f"download failed ({_kind(exc)}): {exc}")
        return Fetched(_progress(result.progress))

    async def _switch(self, effect: RunSwitch) -> SwitchRan | NotDone:
        """switch-to-configuration, already recorded as started; its pid is recorded too."""
        cfg = self.config

        def started(pid: int) -> None:
            self._emit(SwitchSpawned(pid, process_start(pid)))

        try:
            result = await run_switch(
                cfg.store,
                effect.system,
                effect.action,
                env=cfg.switch_env,
                timeout=cfg.switch_timeout,
                on_start=started,
            )
        except NixError as exc:
            return NotDone(exc.reason)
        return SwitchRan(result)

    async def _check(self, ctx: CheckContext) -> str | None:
        """The first health check's problem ("health check NAME failed: ..."), or None."""
        for check in self.config.checks:
            try:
                problem = await check(ctx)
            except Exception as exc:  # a broken check is a failed check, not a dead agent
                problem = f"{type(exc).__name__}: {exc}"
            if problem is not None:
                return f"health check {check.name} failed: {problem}"
        return None

    async def _wait_for_survivor(self, run: SwitchRun) -> None:
        """The recorded switch is still running (it outlived the agent): let it end first."""
        log.warning("agent_activation_still_running", pid=run.pid, system=run.system)
        if not await wait_until_gone(run, self.config.switch_timeout):
            log.warning("agent_activation_killed", pid=run.pid, timeout=self.config.switch_timeout)
            kill(run)
            await wait_until_gone(run, 10.0)


def _kind(exc: Exception) -> str:
    """A short, stable name for why a download failed (the message keeps Nix's words)."""
    for cls, kind in _KINDS:
        if isinstance(exc, cls):
            return kind
    return "nix" if isinstance(exc, NixError) else "config"


_KINDS: tuple[tuple[type[Exception], str], ...] = (
    (SignatureError, "signature"),
    (HashMismatch, "hash-mismatch"),
    (PathNotFound, "not-found"),
    (CacheUnreachable, "cache-unreachable"),
    (NixTimeout, "timeout"),
)


def _progress(snap: FetchProgress) -> Progress:
    return Progress(
        paths_done=snap.paths_done,
        paths_total=snap.paths_total,
        bytes_done=snap.bytes_done,
        bytes_total=snap.bytes_total,
    )
