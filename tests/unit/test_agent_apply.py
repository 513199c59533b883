"""The applier and worker against real Nix: chroot store, signed HTTP cache, fake systems."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from fleet.agent.apply import ApplyConfig, DownloadError, Updater
from fleet.agent.backoff import Backoff
from fleet.agent.state import AgentRecord, StateFile
from fleet.agent.verify import Accepted
from fleet.agent.worker import Agent
from fleet.identity import Identity
from fleet.nix import Action, NixStore, current_system, is_valid, set_profile
from fleet.protocol.messages import (
    AgentState,
    Announcement,
    AnnouncementRejected,
    StatusReport,
)
from fleet.wire import SignedEnvelope, Tag, decode, sign_envelope
from tests.conftest import NixCache, Systems
from tests.nixlab import BROKEN_EXIT_CODE, SWITCH_LOG_VAR, Builder, switch_log_lines

pytestmark = pytest.mark.nix

S = AgentState
ADMIN = Identity.generate()
DEVICE = Identity.generate()
MISSING = "/nix/store/" + "0" * 32 + "-nixos-system-fleet-test-missing"


def envelope(seq: int, path: str, action: Action = Action.SWITCH, **kw: float) -> SignedEnvelope:
    now = time.time()
    ann = Announcement(
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
    return Accepted(decode(env.payload, Announcement), env, duplicate=False)


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
        from tests.nixlab import unreachable_url

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
    import fleet.agent.apply as apply_module
    from fleet.nix import fetch_closure as original

    async def slow_fetch(*args: object, **kw: object) -> object:
        if args[1] == nix_systems.v2.path:
            real_fetch_started.set()
            await gate.wait()  # never set: stands for a long download
        return await original(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(apply_module, "fetch_closure", slow_fetch)
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


async def test_recovery_after_crash_in_activation(rig: Rig, nix_systems: Systems) -> None:
    v1, v2 = nix_systems.v1, nix_systems.v2
    await rig.updater().apply(accepted(1, v1.path))
    # Simulate a crash right after the profile was set for v2 (before the switch finished).
    job = accepted(2, v2.path)
    from fleet.agent.procedure import Status
    from fleet.nix import fetch_closure

    await fetch_closure(rig.store, v2.path, rig.config.substituters, rig.config.trusted_public_keys)
    await set_profile(rig.store, v2.path, rig.config.profile)
    rig.state.save(
        AgentRecord(
            applied_sequence=1,
            status=Status(state=S.ACTIVATING, since=time.time(), sequence=2, desired=v2.path),
            announcement=job.envelope,
            previous=v1.path,
        )
    )
    status = await rig.updater().recover()
    assert status is not None
    assert status.state is S.APPLIED
    assert rig.switches() == [f"switch {v1.path}"]  # not re-run
    assert rig.state.load().applied_sequence == 2


async def test_recovery_when_profile_was_not_switched(rig: Rig, nix_systems: Systems) -> None:
    v1, v2 = nix_systems.v1, nix_systems.v2
    await rig.updater().apply(accepted(1, v1.path))
    from fleet.agent.procedure import Status

    job = accepted(2, v2.path)
    rig.state.save(
        AgentRecord(
            applied_sequence=1,
            status=Status(state=S.ACTIVATING, since=time.time(), sequence=2, desired=v2.path),
            announcement=job.envelope,
            previous=v1.path,
        )
    )
    updater = rig.updater()
    status = await updater.recover()
    assert status is not None
    assert status.state is S.FAILED
    assert status.error is not None
    assert "restarted during activation" in status.error
    assert await rig.profile_path() == v1.path
    assert rig.switches() == [f"switch {v1.path}"]
    # the sequence is consumed: the same announcement is a duplicate, an older one a replay
    agent = rig.agent()
    assert agent.floor() == 2


def test_state_file_is_json_and_atomic(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "s")
    state.save(AgentRecord(applied_sequence=4))
    data = json.loads(state.path.read_text())
    assert data["applied_sequence"] == 4
    assert not state.path.with_name(state.path.name + ".tmp").exists()
    assert state.load().applied_sequence == 4
