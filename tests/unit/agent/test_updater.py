"""The Updater and the Agent against real Nix: chroot store, signed HTTP cache, fake systems."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import pytest

from fleet.agent.agent import Agent
from fleet.agent.backoff import Backoff
from fleet.agent.procedure import AgentRecord, Status
from fleet.agent.state import StateFile
from fleet.agent.switch_run import Purpose, SwitchRun, boot_id, process_start
from fleet.agent.updater import ApplyConfig, DownloadError, Updater
from fleet.agent.verify import Accepted
from fleet.identity import Identity
from fleet.nix import NixStore, current_system, is_valid, set_profile
from fleet.nix.profile import list_generations_sync
from fleet.protocol.messages import (
    AgentState,
    AnnouncementRejected,
    AnnouncementV2,
    StatusReport,
)
from fleet.vocabulary import Action
from fleet.wire import SignedEnvelope, Tag, decode, sign_envelope
from harness.nixlab import BROKEN_EXIT_CODE, SWITCH_LOG_VAR, Builder, switch_log_lines
from tests.conftest import NixCache, Systems

pytestmark = pytest.mark.nix

S = AgentState
ADMIN = Identity.generate()
DEVICE = Identity.generate()
MISSING = "/nix/store/" + "0" * 32 + "-nixos-system-fleet-test-missing"


def envelope(seq: int, path: str, action: Action = Action.SWITCH, **kw: float) -> SignedEnvelope:
    now = time.time()
    ann = AnnouncementV2(
        sequence=seq,
        devices=(DEVICE.node_id,),
        targets=("tag:lab",),
        store_path=path,
        substituters=("http://ignored.invalid",),
        action=action,
        issued_at=kw.get("issued_at", now - 1),
        valid_until=kw.get("valid_until", now + 3600),
    )
    return sign_envelope(ADMIN, Tag.ANNOUNCEMENT, ann)


def accepted(seq: int, path: str, action: Action = Action.SWITCH) -> Accepted:
    env = envelope(seq, path, action)
    return Accepted(decode(env.payload, AnnouncementV2), env, duplicate=False)


class Rig:
    """One agent's store, profile, state dir and switch log, plus what it published."""

    def __init__(self, tmp: Path, store: NixStore, cache_url: str, key: str) -> None:
        self.store = store
        self.log = tmp / "switch.log"
        self.state = StateFile(tmp / "state")
        self.config = ApplyConfig(
            store=store,
            profile=store.system_profile,
            substituters=(cache_url,),
            trusted_public_keys=(key,),
            switch_env={"PATH": "/usr/bin:/bin", SWITCH_LOG_VAR: str(self.log)},
            download_attempts=1,
            connect_timeout=2,
            progress_interval=0.0,
        )
        self.reports: list[StatusReport] = []

    def updater(self) -> Updater:
        return Updater(self.config, self.state, self.state.load(), self.reports.append)

    def agent(self) -> Agent:
        return Agent(
            DEVICE.node_id,
            [ADMIN.node_id],
            self.config,
            self.state,
            retry=Backoff(initial=0.05, maximum=0.2),
        )

    def states(self) -> list[AgentState]:
        out: list[AgentState] = []
        for report in self.reports:
            if not out or out[-1] is not report.state:
                out.append(report.state)
        return out

    def switches(self) -> list[str]:
        return switch_log_lines(self.log)

    async def profile_path(self) -> str | None:
        gen = await current_system(self.store, self.config.profile)
        return gen.path if gen is not None else None


@pytest.fixture
def rig(tmp_path: Path, nix_agent: NixStore, nix_cache: NixCache, nix_builder: Builder) -> Rig:
    return Rig(tmp_path, nix_agent, nix_cache.url, nix_builder.key.public_key)


async def test_apply_v1(rig: Rig, nix_systems: Systems) -> None:
    v1 = nix_systems.v1
    status = await rig.updater().apply(accepted(1, v1.path))

    assert status.state is S.APPLIED
    assert status.sequence == 1
    assert await rig.profile_path() == v1.path
    assert rig.switches() == [f"switch {v1.path}"]
    assert rig.states() == [S.DOWNLOADING, S.ACTIVATING, S.CHECKING, S.APPLIED]
    assert all(r.since <= time.time() for r in rig.reports)
    last = rig.reports[-1]
    assert last.current.store_path == v1.path
    assert last.current.generation == 1
    progress = [r.progress for r in rig.reports if r.progress is not None]
    assert progress
    assert progress[-1].paths_done == progress[-1].paths_total == 2
    assert rig.state.load().applied_sequence == 1


async def test_already_running_is_not_activated_again(rig: Rig, nix_systems: Systems) -> None:
    v1 = nix_systems.v1
    await rig.updater().apply(accepted(1, v1.path))
    rig.reports.clear()
    status = await rig.updater().apply(accepted(2, v1.path))

    assert status.state is S.APPLIED
    assert status.sequence == 2
    assert rig.states() == [S.APPLIED]
    assert rig.switches() == [f"switch {v1.path}"]  # ran once, for sequence 1
    assert rig.state.load().applied_sequence == 2


async def test_broken_rolls_back(rig: Rig, nix_systems: Systems) -> None:
    v1, broken = nix_systems.v1, nix_systems.broken
    await rig.updater().apply(accepted(1, v1.path))
    status = await rig.updater().apply(accepted(2, broken.path))

    assert status.state is S.ROLLED_BACK
    assert status.exit_code == BROKEN_EXIT_CODE
    assert status.error is not None
    assert f"exited with code {BROKEN_EXIT_CODE}" in status.error
    assert status.log_tail is not None
    assert "fleet-test.service failed" in status.log_tail
    assert await rig.profile_path() == v1.path
    # v1, then the broken one, then v1 again (re-activated after the rollback)
    assert rig.switches() == [f"switch {v1.path}", f"switch {broken.path}", f"switch {v1.path}"]
    assert rig.reports[-1].current.store_path == v1.path
    record = rig.state.load()
    assert record.applied_sequence == 1
    assert record.status.state is S.ROLLED_BACK


async def test_broken_first_install_fails_without_previous(rig: Rig, nix_systems: Systems) -> None:
    status = await rig.updater().apply(accepted(1, nix_systems.broken.path))
    assert status.state is S.FAILED
    assert status.error is not None
    assert "no previous generation" in status.error
    assert status.exit_code == BROKEN_EXIT_CODE


async def test_action_test_leaves_the_profile(rig: Rig, nix_systems: Systems) -> None:
    v1, v2 = nix_systems.v1, nix_systems.v2
    await rig.updater().apply(accepted(1, v1.path))
    status = await rig.updater().apply(accepted(2, v2.path, Action.TEST))
    assert status.state is S.APPLIED
    assert await rig.profile_path() == v1.path
    assert rig.switches()[-1] == f"test {v2.path}"


@pytest.mark.parametrize(
    ("which", "reason"),
    [
        ("unsigned", "(signature): warning: the substitute for"),
        ("wrong-key", "(signature)"),
        ("missing", "(not-found)"),
        ("cache-down", "(cache-unreachable)"),
    ],
)
async def test_download_failures_activate_nothing(
    which: str,
    reason: str,
    tmp_path: Path,
    nix_agent: NixStore,
    nix_cache: NixCache,
    nix_builder: Builder,
    nix_systems: Systems,
) -> None:
    key, url, path = nix_builder.key.public_key, nix_cache.url, nix_systems.v1.path
    if which == "unsigned":
        path = nix_systems.unsigned.path
    elif which == "wrong-key":
        key = nix_builder.wrong_key.public_key
    elif which == "missing":
        path = MISSING
    else:
        from harness.nixlab import unreachable_url

        url = unreachable_url()
    rig = Rig(tmp_path, nix_agent, url, key)
    with pytest.raises(DownloadError):
        await rig.updater().apply(accepted(1, path))

    assert rig.states() == [S.DOWNLOADING, S.FAILED]
    error = rig.reports[-1].error
    assert error is not None
    assert error.startswith("download failed (")
    assert reason in error, error
    assert rig.switches() == []
    assert await rig.profile_path() is None
    assert not await is_valid(nix_agent, path)
    record = rig.state.load()
    assert record.retrying
    assert record.applied_sequence == 0


async def test_an_expired_announcement_is_not_resumed_after_a_restart(rig: Rig) -> None:
    """A download failed, the announcement expired while the agent waited to retry: after a
    restart the agent must not pick the expired announcement up again."""
    job = accepted(1, MISSING)
    updater = rig.updater()
    with pytest.raises(DownloadError):
        await updater.apply(job)
    assert rig.updater().pending() == job  # a restart now would retry the download
    updater.expire(job)

    record = rig.state.load()
    assert not record.retrying
    assert record.status.state is S.FAILED
    assert rig.updater().pending() is None  # a restarted agent does not resume it
    assert rig.states() == [S.DOWNLOADING, S.FAILED]  # nothing new reported


async def test_an_expired_download_in_progress_is_failed_and_not_resumed(rig: Rig) -> None:
    """A restart in downloading, the announcement expired meanwhile: failed, and stays so."""
    job = accepted(1, MISSING)
    rig.state.save(
        AgentRecord(
            status=Status(state=S.DOWNLOADING, since=1.0, sequence=1, desired=MISSING),
            announcement=job.envelope,
        )
    )
    updater = rig.updater()
    assert updater.pending() == job
    updater.expire(job)
    assert rig.states() == [S.FAILED]
    assert rig.reports[-1].error == "announcement 1 expired before it was downloaded"
    record = rig.state.load()
    assert (record.status.state, record.retrying) == (S.FAILED, False)
    assert rig.updater().pending() is None


async def test_restart_knows_last_sequence_and_refuses_replay(
    rig: Rig, nix_systems: Systems
) -> None:
    v1, v2 = nix_systems.v1, nix_systems.v2
    await rig.updater().apply(accepted(3, v1.path))

    agent = rig.agent()  # a "restarted" agent on the same state directory
    hello = agent.hello()
    assert hello.last_sequence == 3
    assert hello.state is S.APPLIED
    assert hello.current.store_path == v1.path

    for seq in (2, 3):
        rejected = agent.on_deliver(envelope(seq, v2.path))
        assert isinstance(rejected, AnnouncementRejected)
        assert rejected.sequence == seq
        assert "not newer than 3" in rejected.reason
    assert agent._next is None  # nothing queued
    assert rig.switches() == [f"switch {v1.path}"]


async def test_worker_retries_download_until_superseded(rig: Rig, nix_systems: Systems) -> None:
    agent = rig.agent()
    rig.reports = []
    agent.updater.publish = rig.reports.append
    async with asyncio.TaskGroup() as tg:
        worker = tg.create_task(agent.run())
        assert agent.on_deliver(envelope(1, nix_systems.unsigned.path)) is None
        async with asyncio.timeout(30):
            while sum(r.state is S.FAILED for r in rig.reports) < 2:  # retried at least once
                await asyncio.sleep(0.02)
        assert agent.on_deliver(envelope(2, nix_systems.v1.path)) is None
        async with asyncio.timeout(30):
            while agent.updater.status.state is not S.APPLIED:
                await asyncio.sleep(0.02)
        worker.cancel()
    assert agent.updater.status.sequence == 2
    assert rig.switches() == [f"switch {nix_systems.v1.path}"]
    assert rig.state.load().applied_sequence == 2


async def test_newer_announcement_cancels_a_download(
    rig: Rig, nix_systems: Systems, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = rig.agent()
    gate = asyncio.Event()
    real_fetch_started = asyncio.Event()
    import fleet.agent.updater as updater_module
    from fleet.nix import fetch_closure as original

    async def slow_fetch(*args: object, **kw: object) -> object:
        if args[1] == nix_systems.v2.path:
            real_fetch_started.set()
            await gate.wait()  # never set: stands for a long download
        return await original(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(updater_module, "fetch_closure", slow_fetch)
    async with asyncio.TaskGroup() as tg:
        worker = tg.create_task(agent.run())
        agent.on_deliver(envelope(1, nix_systems.v2.path))
        async with asyncio.timeout(10):
            await real_fetch_started.wait()
        agent.on_deliver(envelope(2, nix_systems.v1.path))
        async with asyncio.timeout(30):
            while agent.updater.status.state is not S.APPLIED:
                await asyncio.sleep(0.02)
        worker.cancel()
    assert rig.switches() == [f"switch {nix_systems.v1.path}"]


async def crashed_in_activation(
    rig: Rig, v1: str, v2: str, *, set_v2: bool, run: SwitchRun | None = None
) -> Accepted:
    """v1 applied, then a crash while activating v2 (its closure fetched; the profile set to
    v2 if `set_v2`; `run` the last switch run recorded)."""
    from fleet.nix import fetch_closure

    await rig.updater().apply(accepted(1, v1))
    job = accepted(2, v2)
    await fetch_closure(rig.store, v2, rig.config.substituters, rig.config.trusted_public_keys)
    if set_v2:
        await set_profile(rig.store, v2, rig.config.profile)
    rig.state.save(
        AgentRecord(
            applied_sequence=1,
            status=Status(state=S.ACTIVATING, since=time.time(), sequence=2, desired=v2),
            announcement=job.envelope,
            previous=v1,
            switch=run,
        )
    )
    return job


def interrupted(system: str, attempt: int = 1, **kw: object) -> SwitchRun:
    run = SwitchRun(2, system, "switch", Purpose.ACTIVATE, attempt, time.time(), boot_id())
    return dataclasses.replace(run, **kw)  # type: ignore[arg-type]


async def test_switch_runs_are_recorded_before_they_start_and_when_they_end(
    rig: Rig, nix_systems: Systems, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fleet.agent.updater as updater_module
    from fleet.nix import run_switch as real

    seen: list[SwitchRun | None] = []

    async def spying(*args: object, **kw: object) -> object:
        seen.append(rig.state.load().switch)  # what survives a crash right now
        return await real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(updater_module, "run_switch", spying)
    v1 = nix_systems.v1.path
    await rig.updater().apply(accepted(1, v1))
    before = seen[0]
    assert before is not None
    assert (before.sequence, before.system, before.action, before.attempt) == (1, v1, "switch", 1)
    assert not before.finished
    assert before.boot_id == boot_id()
    after = rig.state.load().switch
    assert after is not None
    assert after.finished
    assert after.exit_code == 0
    assert after.pid is not None  # (its start time too, unless it had already exited)


async def test_interrupted_switch_is_re_run_not_assumed_applied(
    rig: Rig, nix_systems: Systems
) -> None:
    v1, v2 = nix_systems.v1.path, nix_systems.v2.path
    await crashed_in_activation(rig, v1, v2, set_v2=True, run=interrupted(v2))
    status = await rig.updater().recover()
    assert status is not None
    assert status.state is S.APPLIED
    assert rig.switches() == [f"switch {v1}", f"switch {v2}"]  # re-run after the restart
    assert status.error is not None
    assert "interrupted" in status.error
    assert status.error.endswith("re-ran switch-to-configuration switch: ok")
    assert rig.state.load().applied_sequence == 2
    record = rig.state.load().switch
    assert record is not None
    assert record.attempt == 2
    assert record.exit_code == 0
    gens = [g.path for g in list_generations_sync(rig.config.profile)]
    assert gens == [v1, v2]  # no extra generation for the re-run


async def test_interrupted_twice_rolls_back_and_re_activates_the_previous(
    rig: Rig, nix_systems: Systems
) -> None:
    v1, v2 = nix_systems.v1.path, nix_systems.v2.path
    await crashed_in_activation(rig, v1, v2, set_v2=True, run=interrupted(v2, attempt=2))
    status = await rig.updater().recover()
    assert status is not None
    assert status.state is S.ROLLED_BACK
    assert status.error is not None
    assert "again after a re-run" in status.error
    assert await rig.profile_path() == v1
    assert rig.switches() == [f"switch {v1}", f"switch {v1}"]
    assert rig.state.load().applied_sequence == 1


async def test_failing_re_run_rolls_back(rig: Rig, nix_systems: Systems) -> None:
    v1, broken = nix_systems.v1.path, nix_systems.broken.path
    await crashed_in_activation(rig, v1, broken, set_v2=True, run=interrupted(broken))
    status = await rig.updater().recover()
    assert status is not None
    assert status.state is S.ROLLED_BACK
    assert status.exit_code == BROKEN_EXIT_CODE
    assert status.error is not None
    assert f"re-ran switch-to-configuration switch: exited with code {BROKEN_EXIT_CODE}" in (
        status.error
    )
    assert await rig.profile_path() == v1
    assert rig.switches() == [f"switch {v1}", f"switch {broken}", f"switch {v1}"]


async def test_interrupted_rollback_re_activates_the_previous_once(
    rig: Rig, nix_systems: Systems
) -> None:
    v1, broken = nix_systems.v1.path, nix_systems.broken.path
    run = interrupted(v1, purpose=Purpose.ROLLBACK, reason="switch exited with code 3")
    await crashed_in_activation(rig, v1, broken, set_v2=False, run=run)
    status = await rig.updater().recover()
    assert status is not None
    assert status.state is S.ROLLED_BACK
    assert status.error is not None
    assert status.error.startswith("switch exited with code 3")
    assert await rig.profile_path() == v1
    assert rig.switches() == [f"switch {v1}", f"switch {v1}"]


async def test_recovery_when_the_switch_never_started(rig: Rig, nix_systems: Systems) -> None:
    """The state file of an agent killed before its switch ran (or of an older agent, which
    kept no switch record): the switch runs now, whatever the profile points at."""
    v1, v2 = nix_systems.v1.path, nix_systems.v2.path
    for set_v2, seq in ((False, 2), (True, 2)):
        rig.switches().clear()
        await crashed_in_activation(rig, v1, v2, set_v2=set_v2)
        status = await rig.updater().recover()
        assert status is not None
        assert status.state is S.APPLIED, status
        assert status.error == (
            "the agent restarted before switch-to-configuration ran; "
            "ran switch-to-configuration switch: ok"
        )
        assert rig.switches()[-1] == f"switch {v2}"
        assert rig.state.load().applied_sequence == seq
        # back to v1 for the second round
        await set_profile(rig.store, v1, rig.config.profile)
    agent = rig.agent()
    assert agent.floor() == 2  # the sequence stays consumed


async def test_a_switch_that_outlived_the_agent_is_waited_for(
    rig: Rig, nix_systems: Systems, tmp_path: Path
) -> None:
    import subprocess
    import sys

    v1, v2 = nix_systems.v1.path, nix_systems.v2.path
    hold = tmp_path / "survivor-holds"
    hold.touch()
    code = "import os, sys, time\nwhile os.path.exists(sys.argv[1]): time.sleep(0.02)"
    survivor = subprocess.Popen([sys.executable, "-c", code, str(hold)], start_new_session=True)
    try:
        run = interrupted(v2, pid=survivor.pid, pid_start=process_start(survivor.pid))
        await crashed_in_activation(rig, v1, v2, set_v2=True, run=run)
        task = asyncio.create_task(rig.updater().recover())
        async with asyncio.timeout(30):
            while not any("outlived the agent" in (r.error or "") for r in rig.reports):
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        assert not task.done()  # waiting for the survivor, not re-running beside it
        assert rig.switches() == [f"switch {v1}"]
        waiting = rig.reports[-1]
        assert waiting.state is S.ACTIVATING
        assert f"(pid {survivor.pid})" in (waiting.error or "")
        hold.unlink()
        while survivor.poll() is None:  # this test is its parent: reap it as init would
            await asyncio.sleep(0.02)
        status = await task
    finally:
        if survivor.poll() is None:
            survivor.kill()
        survivor.wait(5)
    assert status is not None
    assert status.state is S.APPLIED
    assert status.error is not None
    assert "outlived the agent" in status.error
    assert rig.switches() == [f"switch {v1}", f"switch {v2}"]


def test_state_file_is_json_and_atomic(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "s")
    state.save(AgentRecord(applied_sequence=4))
    data = json.loads(state.path.read_text())
    assert data["applied_sequence"] == 4
    assert not state.path.with_name(state.path.name + ".tmp").exists()
    assert state.load().applied_sequence == 4
