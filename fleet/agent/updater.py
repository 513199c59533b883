"""Applying an accepted announcement with Nix, driving the update procedure as it goes.

The Updater is the I/O half of fleet.agent.procedure: it downloads, sets the profile, runs
switch-to-configuration, runs health checks and rolls back, and feeds each outcome to the
Procedure, which owns the agent's record. After every event the record is saved to the state
file (fleet.agent.state) *before* the status is published upstream.

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

from fleet.agent import recovery
from fleet.agent.procedure import (
    Abandoned,
    Activated,
    AgentRecord,
    AlreadyRunning,
    CheckPassed,
    Downloaded,
    DownloadFailed,
    DownloadProgress,
    Event,
    Expired,
    Failed,
    Procedure,
    Recovering,
    Resumed,
    RolledBack,
    Start,
    Status,
    SwitchExited,
    SwitchSpawned,
    SwitchStarted,
)
from fleet.agent.state import StateFile
from fleet.agent.switch_run import (
    Purpose,
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

TAIL_CHARS = 4096  # of the activation output sent upstream (the full tail is logged locally)


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


def _tail(text: str) -> str:
    return text[-TAIL_CHARS:]


class Updater:
    """Runs the effects of the procedure for one announcement at a time; the Procedure owns
    the record, the Updater saves it after every event and only then publishes."""

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

    def _emit(self, event: Event) -> Status:
        """Transition, persist (fsync), then publish: never report what is not durable.

        Progress is published and not persisted; a record-only event (a switch run, an
        abandoned retry) is persisted and not published: the status did not change.
        """
        before = self.procedure.status
        status = self.procedure.handle(event, self.clock())
        if isinstance(event, DownloadProgress):
            self.publish(status.report(self.current()))
            return status
        self.state.save(self.procedure.record)
        if status is not before:
            log.info(
                "agent_state",
                state=status.state.value,
                sequence=status.sequence,
                desired=status.desired,
                error=status.error,
            )
            self.publish(status.report(self.current()))
        return status

    def _on_progress(self, snap: FetchProgress) -> None:
        now = time.monotonic()
        if now - self._last_progress < self.config.progress_interval:
            return
        self._last_progress = now
        self._emit(DownloadProgress(_progress(snap)))

    # -- the procedure --------------------------------------------------------------------

    async def apply(self, accepted: Accepted) -> Status:
        """Run one announcement to a final state. Raises DownloadError (retry later)."""
        ann = accepted.announcement
        current = _current_generation(self.config.profile)
        if current is not None and current.path == ann.store_path:
            log.info("agent_already_running", sequence=ann.sequence, path=ann.store_path)
            return self._emit(AlreadyRunning(ann.sequence, ann.store_path, accepted.envelope))
        previous = current.path if current is not None else None
        self._emit(Start(ann.sequence, ann.store_path, accepted.envelope, previous))
        self._last_progress = 0.0
        cfg = self.config
        try:
            result = await fetch_closure(
                cfg.store,
                ann.store_path,
                cfg.substituters,
                cfg.trusted_public_keys,
                on_progress=self._on_progress,
                timeout=cfg.fetch_timeout,
                download_attempts=cfg.download_attempts,
                connect_timeout=cfg.connect_timeout,
            )
        except (NixError, ValueError) as exc:
            reason = f"download failed ({_kind(exc)}): {exc}"
            self._emit(DownloadFailed(reason))
            raise DownloadError(reason) from exc
        # From here on nothing may interrupt the procedure (activating: see Agent.offer).
        self.procedure.handle(DownloadProgress(_progress(result.progress)), self.clock())
        self._emit(Downloaded())
        return await self._activate(ann)

    async def _switch(
        self,
        sequence: int,
        system: str,
        action: Action,
        purpose: Purpose,
        attempt: int,
        reason: str | None = None,
    ) -> ActivationResult:
        """Run switch-to-configuration, recorded durably before it starts and when it ends.

        A crash between the two leaves a run recorded as started and not finished, which is
        what recovery (fleet.agent.recovery) goes by, never the profile link.
        """
        cfg = self.config
        run = SwitchStarted(sequence, system, action.value, purpose, attempt, boot_id(), reason)
        self._emit(run)

        def started(pid: int) -> None:
            self._emit(SwitchSpawned(pid, process_start(pid)))

        try:
            result = await run_switch(
                cfg.store,
                system,
                action,
                env=cfg.switch_env,
                timeout=cfg.switch_timeout,
                on_start=started,
            )
        except NixError:
            self._emit(SwitchExited(None))
            raise
        self._emit(SwitchExited(result.exit_code))
        return result

    async def _activate(
        self, ann: AnyAnnouncement, *, attempt: int = 1, note: str | None = None
    ) -> Status:
        """Set the profile (switch, boot) and run the switch; `note`: what recovery did."""
        cfg = self.config
        action = ann.action
        lead = f"{note}; " if note is not None else ""
        verb = ("re-ran " if attempt > 1 else "ran ") if note is not None else ""
        script = f"{lead}{verb}switch-to-configuration {action.value}"
        if action in (Action.SWITCH, Action.BOOT):
            current = _current_generation(cfg.profile)
            if current is None or current.path != ann.store_path:  # not again when recovering
                try:
                    await set_profile(cfg.store, ann.store_path, cfg.profile)
                except NixError as exc:
                    return self._emit(Failed(f"{lead}cannot set the system profile: {exc.reason}"))
        try:
            result = await self._switch(
                ann.sequence, ann.store_path, action, Purpose.ACTIVATE, attempt
            )
        except NixError as exc:  # no script, or it ran past the timeout (and was killed)
            return await self._roll_back(ann, f"{script} did not complete: {exc.reason}")
        if not result.ok:
            log.warning(
                "agent_activation_failed", exit_code=result.exit_code, tail=result.output_tail
            )
            colon = ":" if note is not None else ""
            return await self._roll_back(
                ann,
                f"{script}{colon} exited with code {result.exit_code}",
                result.exit_code,
                _tail(result.output_tail),
            )
        done = f"{script}: ok" if note is not None else None
        self._emit(Activated(done))
        return await self._check(ann, result, done)

    async def _check(
        self, ann: AnyAnnouncement, result: ActivationResult | None, note: str | None = None
    ) -> Status:
        ctx = CheckContext(self.config.store, self.config.profile, ann, result)
        for check in self.config.checks:
            try:
                problem = await check(ctx)
            except Exception as exc:  # a broken check is a failed check, not a dead agent
                problem = f"{type(exc).__name__}: {exc}"
            if problem is not None:
                prefix = f"{note}; " if note is not None else ""
                return await self._roll_back(
                    ann, f"{prefix}health check {check.name} failed: {problem}"
                )
        return self._emit(CheckPassed(note))

    async def _roll_back(
        self,
        ann: AnyAnnouncement,
        error: str,
        exit_code: int | None = None,
        tail: str | None = None,
    ) -> Status:
        cfg = self.config
        current = _current_generation(cfg.profile)
        if ann.action is Action.TEST:
            if current is None:  # untouched by `test`
                return self._emit(
                    Failed(f"{error}; no previous system to re-activate", exit_code, tail)
                )
            target = current.path
        elif (
            current is not None
            and current.path == self.procedure.record.previous
            and current.path != ann.store_path
        ):
            target = current.path  # rolled back already, before a restart
        else:
            try:
                target = (await rollback(cfg.store, cfg.profile)).path
            except ProfileError:
                return self._emit(
                    Failed(f"{error}; no previous generation to roll back to", exit_code, tail)
                )
            except NixError as exc:
                return self._emit(
                    Failed(f"{error}; rollback failed: {exc.reason}", exit_code, tail)
                )
        return await self._reactivate(ann, target, error, exit_code, tail)

    async def _reactivate(
        self,
        ann: AnyAnnouncement,
        target: str,
        error: str,
        exit_code: int | None = None,
        tail: str | None = None,
        attempt: int = 1,
    ) -> Status:
        """Activate `target` (the profile points at it) again; the outcome is rolled-back."""
        log.warning("agent_rolling_back", error=error, to=target, attempt=attempt)
        try:
            again = await self._switch(
                ann.sequence, target, ann.action, Purpose.ROLLBACK, attempt, reason=error
            )
        except NixError as exc:
            error += f"; re-activating {target} did not complete: {exc.reason}"
        else:
            if not again.ok:
                error += f"; re-activating {target} exited with code {again.exit_code}"
        return self._emit(RolledBack(error, exit_code, tail))

    def expire(self, accepted: Accepted) -> None:
        """Stop working on an announcement that expired before its download succeeded; the
        record says so, so a restart does not take it up again."""
        if self.procedure.state is AgentState.DOWNLOADING:
            seq = accepted.announcement.sequence
            self._emit(Expired(f"announcement {seq} expired before it was downloaded"))
        elif self.procedure.record.retrying:
            self._emit(Abandoned())

    # -- after a restart ----------------------------------------------------------------

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

    async def recover(self) -> Status | None:
        """Settle a procedure that a restart interrupted in activating or checking.

        The profile link is never taken as proof of activation: the record of the last
        switch run decides (fleet.agent.recovery has the rules). A switch that outlived the
        agent is waited for (at most `switch_timeout`, then killed); an interrupted one is
        re-run once, then rolled back; every path ends in the health checks or a rollback,
        and the report says what was done.
        """
        status = self.procedure.status
        if status.state not in (AgentState.ACTIVATING, AgentState.CHECKING):
            return None
        ann = None
        if self.announcement is not None:
            try:
                ann = read_announcement(self.announcement.payload)
            except (WireError, ValueError, TypeError):
                ann = None
        if ann is None:
            log.warning("agent_recovering", state=status.state.value, plan="Fail")
            return self._emit(
                Failed(
                    "the agent restarted during activation and cannot read the announcement; "
                    "the activation was not re-run"
                )
            )
        run = self.procedure.record.switch
        if run is not None and run.sequence != ann.sequence:
            run = None  # the record of an earlier announcement's switch
        outlived = False
        if run is not None and is_running(run):
            outlived = True
            await self._wait_for_survivor(run)
        current = _current_generation(self.config.profile)
        step = recovery.plan(
            status.state,
            desired=ann.store_path,
            action=ann.action.value,
            profile=current.path if current is not None else None,
            previous=self.procedure.record.previous,
            run=run,
            outlived=outlived,
            boot=boot_id(),
        )
        log.warning(
            "agent_recovering",
            state=status.state.value,
            profile=current.path if current is not None else None,
            switch_attempt=run.attempt if run is not None else None,
            switch_finished=run.finished if run is not None else None,
            plan=type(step).__name__,
        )
        return await self._carry_out(ann, step)

    async def _wait_for_survivor(self, run: SwitchRun) -> None:
        """The recorded switch is still running (it outlived the agent): let it end first."""
        log.warning("agent_activation_still_running", pid=run.pid, system=run.system)
        if self.procedure.state is AgentState.ACTIVATING:
            self._emit(
                Recovering(
                    f"waiting for switch-to-configuration {run.action} (pid {run.pid}), "
                    "which outlived the agent"
                )
            )
        if not await wait_until_gone(run, self.config.switch_timeout):
            log.warning("agent_activation_killed", pid=run.pid, timeout=self.config.switch_timeout)
            kill(run)
            await wait_until_gone(run, 10.0)

    async def _carry_out(self, ann: AnyAnnouncement, step: recovery.Plan) -> Status:
        match step:
            case recovery.ResumeChecks(note=note):
                self._emit(Resumed(note))
                return await self._check(ann, None, note)
            case recovery.RunSwitch(attempt=attempt, note=note):
                again = "re-running" if attempt > 1 else "running"
                self._emit(Recovering(f"{note}; {again} switch-to-configuration"))
                return await self._activate(ann, attempt=attempt, note=note)
            case recovery.RollBack(error=error, exit_code=code):
                return await self._roll_back(ann, error, code)
            case recovery.Reactivate(system=system, attempt=attempt, error=error):
                return await self._reactivate(ann, system, error, attempt=attempt)
            case recovery.RolledBackAlready(error=error):
                return self._emit(RolledBack(error))
            case recovery.Fail(error=error):
                return self._emit(Failed(error))


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
