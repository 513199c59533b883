"""The coordinator session over an in-memory control stream: Hello/Welcome, deliveries,
status up, rejections, reconnects. No Nix: the announced path is the one already running."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import pytest

from fleet.agent.agent import Agent
from fleet.agent.backoff import Backoff
from fleet.agent.session import MAX_RETRY_AFTER, CoordinatorSession, SessionConfig
from fleet.agent.state import StateFile
from fleet.agent.updater import ApplyConfig
from fleet.identity import Identity
from fleet.nix import NixStore
from fleet.protocol.messages import (
    AgentState,
    AnnouncementRejected,
    AnnouncementV2,
    Busy,
    DeliverV1,
    Hello,
    StatusReport,
    Welcome,
)
from fleet.protocol.stream import recv_message, send_message
from fleet.vocabulary import Action
from fleet.wire import Message, Tag, sign_envelope

ADMIN = Identity.generate()
DEVICE = Identity.generate()
FAST = SessionConfig(backoff=Backoff(initial=0.01, maximum=0.05), reconnect_spread=0.05)
PATH = "/nix/store/" + "c" * 32 + "-nixos-system-fleet-test-1"
T = 10.0
M = TypeVar("M", bound=Message)  # generous bound on every wait


class PipeWriter:
    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def write(self, data: bytes) -> None:
        if self._reader.at_eof():
            raise ConnectionResetError("pipe closed")
        self._reader.feed_data(data)

    async def drain(self) -> None:
        return None


class FakeChannel:
    """Agent side of a control stream; `up`/`down` are what the fake coordinator uses."""

    path = "direct"

    def __init__(self) -> None:
        self.up = asyncio.StreamReader()  # agent -> coordinator
        self.down_reader = asyncio.StreamReader()  # coordinator -> agent
        self.reader = self.down_reader
        self.writer = PipeWriter(self.up)
        self.down = PipeWriter(self.down_reader)
        self.closed = asyncio.Event()

    async def close(self) -> None:
        if not self.up.at_eof():
            self.up.feed_eof()
        self.closed.set()

    def hang_up(self) -> None:
        self.down_reader.feed_eof()

    async def recv(self, kind: type[M]) -> M:
        return await recv_message(self.up, kind, timeout=T)

    async def recv_any(self) -> Message:
        return await recv_message(self.up, timeout=T)

    async def send(self, message: Message) -> None:
        await send_message(self.down, message, timeout=T)


class FakeDialer:
    errors: tuple[type[BaseException], ...] = ()

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.dials = 0
        self.channels: asyncio.Queue[FakeChannel] = asyncio.Queue()

    async def __call__(self, timeout: float) -> FakeChannel:
        self.dials += 1
        if self.failures:
            self.failures -= 1
            raise ConnectionRefusedError("coordinator down")
        channel = FakeChannel()
        self.channels.put_nowait(channel)
        return channel

    async def next(self) -> FakeChannel:
        return await asyncio.wait_for(self.channels.get(), T)


def running_system(root: Path, path: str) -> Path:
    """A profile whose generation 1 is `path` (what nix-env leaves on disk)."""
    profiles = root / "nix/var/nix/profiles"
    profiles.mkdir(parents=True)
    os.symlink(path, profiles / "system-1-link")
    os.symlink("system-1-link", profiles / "system")
    return profiles / "system"


def deliver(seq: int, path: str = PATH) -> DeliverV1:
    now = time.time()
    ann = AnnouncementV2(
        sequence=seq, devices=(DEVICE.node_id,), targets=("x",), store_path=path,
        substituters=(), action=Action.SWITCH, issued_at=now - 1, valid_until=now + 60,
    )  # fmt: skip
    return DeliverV1(announcement=sign_envelope(ADMIN, Tag.ANNOUNCEMENT, ann))


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    store = NixStore.chroot(tmp_path / "store")
    config = ApplyConfig(
        store=store,
        profile=running_system(tmp_path / "store", PATH),
        substituters=("http://127.0.0.1:9",),
        trusted_public_keys=("k-1:" + "A" * 43 + "=",),
    )
    return Agent(DEVICE.node_id, [ADMIN.node_id], config, StateFile(tmp_path / "state"))


async def test_session_end_to_end_with_reconnect(agent: Agent) -> None:
    dialer = FakeDialer(failures=2)
    session = CoordinatorSession(agent, dialer, FAST)
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(agent.run()), tg.create_task(session.run())]

        channel = await dialer.next()
        assert dialer.dials == 3  # two refused dials, retried with backoff
        hello = await channel.recv(Hello)
        assert hello.last_sequence == 0
        assert hello.state is AgentState.IDLE
        assert hello.current.store_path == PATH
        assert hello.current.generation == 1
        await channel.send(Welcome(approved=True, name="dev-1"))
        first = await channel.recv(StatusReport)  # the current status, right after Welcome
        assert first.state is AgentState.IDLE

        d4 = deliver(4)
        await channel.send(d4)
        applied = await channel.recv(StatusReport)
        assert applied.state is AgentState.APPLIED
        assert applied.sequence == 4
        assert applied.desired == PATH

        await channel.send(deliver(3))
        rejected = await channel.recv(AnnouncementRejected)
        assert rejected.sequence == 3
        assert "not newer than 4" in rejected.reason

        channel.hang_up()  # the coordinator goes away
        await asyncio.wait_for(channel.closed.wait(), T)

        again = await dialer.next()
        hello = await again.recv(Hello)
        assert hello.last_sequence == 4
        assert hello.state is AgentState.APPLIED
        await again.send(Welcome(approved=True, name="dev-1"))
        latest = await again.recv(StatusReport)
        assert latest.state is AgentState.APPLIED
        assert latest.sequence == 4

        # the coordinator re-delivers the same announcement: a duplicate, not a replay
        await again.send(d4)
        echo = await again.recv_any()
        assert isinstance(echo, StatusReport)
        assert echo.sequence == 4
        for task in tasks:
            task.cancel()


@contextlib.asynccontextmanager
async def session_running(
    agent: Agent, config: SessionConfig
) -> AsyncIterator[tuple[FakeDialer, CoordinatorSession, FakeChannel]]:
    """The agent and its session running against a fake dialer; yields the first channel
    once the agent said Hello on it."""
    dialer = FakeDialer()
    session = CoordinatorSession(agent, dialer, config)
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(agent.run()), tg.create_task(session.run())]
        channel = await dialer.next()
        await channel.recv(Hello)
        yield dialer, session, channel
        for task in tasks:
            task.cancel()


async def test_pending_device_stays_connected_and_garbage_ends_only_the_session(
    agent: Agent,
) -> None:
    async with session_running(agent, FAST) as (dialer, session, channel):
        await channel.send(Welcome(approved=False, name=None))
        await channel.recv(StatusReport)
        assert session.approved is False
        assert session.connected.is_set()

        channel.down.write(b"\x00\x00\x00\x05junk!")  # a frame that is not a message
        await asyncio.wait_for(channel.closed.wait(), T)
        again = await dialer.next()  # the agent survived and reconnected
        assert isinstance(await again.recv_any(), Hello)


async def test_shutdown_waits_for_an_activation_but_not_for_a_download(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fleet.agent.updater as updater_module
    from fleet.nix import ActivationResult, FetchProgress, FetchResult

    other = "/nix/store/" + "f" * 32 + "-nixos-system-fleet-test-2"
    in_switch, release = asyncio.Event(), asyncio.Event()

    async def fetch(store: object, path: str, *args: object, **kw: object) -> FetchResult:
        return FetchResult(path, FetchProgress(2, 2, 10, 10, 20), 0.0)

    async def set_profile(*args: object, **kw: object) -> None:
        return None

    async def run_switch(store: object, system: str, action: Action, **kw: object) -> object:
        in_switch.set()
        await release.wait()
        return ActivationResult(action, system, 0, "", 0.0)

    monkeypatch.setattr(updater_module, "fetch_closure", fetch)
    monkeypatch.setattr(updater_module, "set_profile", set_profile)
    monkeypatch.setattr(updater_module, "run_switch", run_switch)
    agent.updater.config = dataclasses.replace(agent.updater.config, checks=())
    seen: list[tuple[int | None, AgentState]] = []
    agent.updater.publish = lambda report: seen.append((report.sequence, report.state))

    async with asyncio.TaskGroup() as tg:
        work = tg.create_task(agent.run())
        assert agent.on_deliver(deliver(1, other).announcement) is None
        await asyncio.wait_for(in_switch.wait(), T)
        assert agent.activating
        # a newer announcement does not interrupt the activation either
        assert agent.on_deliver(deliver(2, PATH).announcement) is None
        finishing = tg.create_task(agent.finish_activation())
        await asyncio.sleep(0.05)
        assert not finishing.done()  # shutdown waits while the switch runs
        release.set()
        await asyncio.wait_for(finishing, T)
        work.cancel()
    # sequence 1 ran to its end before sequence 2 was even looked at
    assert seen.index((1, AgentState.APPLIED)) < seen.index((2, AgentState.APPLIED))
    assert seen[:4] == [
        (1, AgentState.DOWNLOADING),
        (1, AgentState.ACTIVATING),
        (1, AgentState.CHECKING),
        (1, AgentState.APPLIED),
    ]


async def test_hello_carries_the_agents_own_tags(tmp_path: Path) -> None:
    store = NixStore.chroot(tmp_path / "store")
    config = ApplyConfig(
        store=store,
        profile=running_system(tmp_path / "store", PATH),
        substituters=("http://127.0.0.1:9",),
        trusted_public_keys=("k-1:" + "A" * 43 + "=",),
    )
    tagged = Agent(
        DEVICE.node_id, [ADMIN.node_id], config, StateFile(tmp_path / "state"), tags=("kiosk",)
    )
    assert tagged.hello().tags == ("kiosk",)


async def test_a_rejection_not_sent_before_a_reconnect_is_sent_after_it(agent: Agent) -> None:
    assert agent.outbox is not None
    refused = agent.on_deliver(deliver(1, path="/not/a/store/path").announcement)
    assert refused is not None
    assert refused.code == "bad-path"
    agent.outbox.put(refused)  # queued, then the connection drops before it is sent
    agent.outbox.resync()  # the next session: current status first, the rejection kept
    assert isinstance(await asyncio.wait_for(agent.outbox.get(), T), StatusReport)
    assert await asyncio.wait_for(agent.outbox.get(), 1) == refused


def test_the_agent_answers_each_coordinator_message_through_receive(agent: Agent) -> None:
    """One entry point for the session: replies come back, status goes to the outbox."""
    replies = agent.receive(deliver(1, path="/not/a/store/path"))
    assert len(replies) == 1
    refused = replies[0]
    assert isinstance(refused, AnnouncementRejected)
    assert (refused.sequence, refused.code) == (1, "bad-path")
    assert agent.receive(deliver(2)) == []  # accepted: queued for the worker, nothing to say
    assert agent.floor() == 2
    assert agent.receive(Welcome(approved=True, name="dev-1")) == []  # not the agent's business
    assert agent.outbox.latest.state is AgentState.IDLE  # the status it started with


async def test_a_busy_coordinator_is_redialled_after_its_retry_after_not_before(
    agent: Agent,
) -> None:
    loop = asyncio.get_running_loop()
    async with session_running(agent, FAST) as (dialer, session, channel):
        await channel.send(Busy(retry_after=0.4, reason="too many agents connecting"))
        busy_at = loop.time()
        await asyncio.wait_for(channel.closed.wait(), T)  # the agent hangs up by itself
        again = await dialer.next()
        waited = loop.time() - busy_at
        assert waited >= 0.4, waited  # not before the retry-after
        assert waited <= 0.4 * 1.5 + 2.0, waited  # plus at most half of it (and slack for load)
        assert isinstance(await again.recv_any(), Hello)
        await again.send(Welcome(approved=True, name="dev-1"))
        await again.recv(StatusReport)
        assert session.busy_answers == 1
        assert session.dials == 2


async def test_the_welcome_timeout_is_the_setting(agent: Agent) -> None:
    config = dataclasses.replace(FAST, welcome_timeout=0.3)
    assert SessionConfig().welcome_timeout > T  # so closing within T proves the setting is used
    async with session_running(agent, config) as (dialer, session, channel):
        await asyncio.wait_for(channel.closed.wait(), T)  # no Welcome: it gives up
        assert session.sessions == 0
        assert isinstance(await (await dialer.next()).recv_any(), Hello)  # and dials again


def test_after_a_welcomed_session_redials_are_spread_over_the_window(agent: Agent) -> None:
    """A coordinator restart ends every session at once: 1,000 agents' first redials must
    spread over reconnect_spread, not land in the same 100 ms."""
    session = CoordinatorSession(agent, FakeDialer(), SessionConfig(reconnect_spread=10.0))
    session._rng = random.Random(12)
    delays = [session._reconnect_delay(True, None, 0) for _ in range(1000)]
    assert all(0.0 <= d <= 10.0 for d in delays)
    per_100ms = collections.Counter(int(d * 10) for d in delays)
    assert max(per_100ms.values()) <= 30  # ~10 expected per 100 ms bucket
    assert min(delays) < 0.5
    assert max(delays) > 9.5


def test_retry_after_is_honoured_with_jitter_and_capped(agent: Agent) -> None:
    session = CoordinatorSession(agent, FakeDialer(), FAST)
    session._rng = random.Random(7)
    waits = [session._reconnect_delay(False, 20.0, 0) for _ in range(200)]
    assert all(20.0 <= w <= 30.0 for w in waits)
    assert max(waits) - min(waits) > 5.0  # jittered: a queue of agents does not come back at once
    assert session._reconnect_delay(False, 1e12, 0) <= MAX_RETRY_AFTER * 1.5
    assert session._reconnect_delay(False, -5.0, 0) == 0.0
    assert session._reconnect_delay(False, float("nan"), 3) <= FAST.backoff.maximum
