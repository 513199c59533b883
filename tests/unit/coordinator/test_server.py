"""The coordinator's asyncio adapter over in-memory connections (the mesh is faked here)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleet.coordinator.database import Database
from fleet.coordinator.hello_gate import HelloGate, HelloLimits
from fleet.coordinator.server import CoordinatorServer, ServerLimits
from fleet.coordinator.service import MAX_ADMIN_REQUEST, CoordinatorService
from fleet.identity import Identity, NodeId
from fleet.protocol import alpn
from fleet.protocol.admin import make_admin_request
from fleet.protocol.messages import (
    Action,
    AgentState,
    AnnouncementV2,
    Busy,
    DeliverV1,
    DeviceAdd,
    DeviceList,
    DeviceListReply,
    ErrorReply,
    Hello,
    OkReply,
    PushAccepted,
    PushRequestV1,
    StatusReport,
    StatusRequest,
    StatusSnapshot,
    StatusUpdate,
    SystemState,
    Welcome,
)
from fleet.protocol.stream import recv_message, send_message
from fleet.wire import Message, Tag, sign_envelope

V2 = "/nix/store/" + "b" * 32 + "-nixos-system-v2"


class PipeWriter:
    def __init__(self, peer: asyncio.StreamReader) -> None:
        self.peer = peer

    def write(self, data: bytes) -> None:
        if not self.peer.at_eof():
            self.peer.feed_data(data)

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def write_eof(self) -> None:
        self.peer.feed_eof()

    def close(self) -> None:
        self.write_eof()


class FakeConnection:
    """One side's view of an in-memory 'QUIC connection': streams are pipe pairs."""

    def __init__(self, remote_id: NodeId, path: str = "direct") -> None:
        self.remote_id = remote_id
        self.path = path
        self._incoming: asyncio.Queue[tuple[asyncio.StreamReader, PipeWriter] | None] = (
            asyncio.Queue()
        )
        self._readers: list[asyncio.StreamReader] = []
        self.closed = asyncio.Event()

    def open_bi(self) -> tuple[asyncio.StreamReader, PipeWriter]:
        """Client side: open a stream the server accepts."""
        server_reader, client_reader = asyncio.StreamReader(), asyncio.StreamReader()
        self._readers += [client_reader, server_reader]
        self._incoming.put_nowait((server_reader, PipeWriter(client_reader)))
        return client_reader, PipeWriter(server_reader)

    async def accept_bi(
        self, timeout: float | None = None
    ) -> tuple[asyncio.StreamReader, PipeWriter]:
        async with asyncio.timeout(timeout):
            item = await self._incoming.get()
        if item is None:
            self._incoming.put_nowait(None)
            raise ConnectionError("connection closed")
        return item

    async def close(self, error_code: int = 0, reason: str = "") -> None:
        if not self.closed.is_set():
            self.closed.set()
            self._incoming.put_nowait(None)
            for reader in self._readers:
                if not reader.at_eof():
                    reader.feed_eof()


class FakeListener:
    def __init__(self) -> None:
        self.queues: dict[str, asyncio.Queue[FakeConnection]] = {
            alpn.AGENT: asyncio.Queue(),
            alpn.ADMIN: asyncio.Queue(),
        }

    async def accept(self, alpn: str | None = None, timeout: float | None = None) -> FakeConnection:
        assert alpn is not None
        async with asyncio.timeout(timeout):
            return await self.queues[alpn].get()

    def dial(self, name: str, node: NodeId) -> FakeConnection:
        conn = FakeConnection(node)
        self.queues[name].put_nowait(conn)
        return conn


@dataclass
class Running:
    service: CoordinatorService
    listener: FakeListener
    coordinator: Identity
    admin: Identity
    server: CoordinatorServer

    async def request(self, body: Message) -> tuple[Message, asyncio.StreamReader, PipeWriter]:
        conn = self.listener.dial(alpn.ADMIN, self.admin.node_id)
        reader, writer = conn.open_bi()
        env = make_admin_request(self.admin, self.coordinator.node_id, body)
        await send_message(writer, env, timeout=5)
        return await recv_message(reader, timeout=5), reader, writer

    async def agent(
        self, identity: Identity, last_sequence: int = 0
    ) -> tuple[FakeConnection, asyncio.StreamReader, PipeWriter]:
        conn = self.listener.dial(alpn.AGENT, identity.node_id)
        reader, writer = conn.open_bi()
        hello = Hello(
            agent_version="test",
            current=SystemState(store_path=None, generation=None),
            last_sequence=last_sequence,
            state=AgentState.IDLE,
            state_since=0.0,
            tags=(),
        )
        await send_message(writer, hello, timeout=5)
        return conn, reader, writer

    def push_request(self, devices: list[NodeId], sequence: int) -> PushRequestV1:
        import time

        ann = AnnouncementV2(
            sequence=sequence,
            devices=tuple(devices),
            targets=("tag:all",),
            store_path=V2,
            substituters=(),
            action=Action.SWITCH,
            issued_at=time.time(),
            valid_until=time.time() + 600,
        )
        return PushRequestV1(announcement=sign_envelope(self.admin, Tag.ANNOUNCEMENT, ann))


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    coordinator, admin = Identity.generate(), Identity.generate()
    db = await Database.open(tmp_path / "state.db")
    service = CoordinatorService(db, coordinator.node_id, [admin.node_id])
    listener = FakeListener()
    server = CoordinatorServer(service, ServerLimits(hello_timeout=0.5, agent_queue=8))
    task = asyncio.create_task(server.serve(listener))
    try:
        yield Running(service, listener, coordinator, admin, server)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await db.close()


async def test_push_reaches_connected_agent_after_the_ack(running: Running) -> None:
    agent = Identity.generate()
    reply, _, _ = await running.request(DeviceAdd(node_id=agent.node_id, name="a1", tags=()))
    assert reply == OkReply()
    _, reader, _ = await running.agent(agent)
    assert await recv_message(reader, Welcome, timeout=5) == Welcome(approved=True, name="a1")

    push = running.push_request([agent.node_id], 1)
    reply, _, _ = await running.request(push)
    assert reply == PushAccepted(sequence=1, devices=(agent.node_id,))
    deliver = await recv_message(reader, DeliverV1, timeout=5)
    assert deliver.announcement == push.announcement  # forwarded verbatim


async def test_misbehaving_agents_are_dropped_without_harming_others(running: Running) -> None:
    good, silent, noisy = Identity.generate(), Identity.generate(), Identity.generate()
    for i, node in enumerate((good, silent, noisy)):
        await running.request(DeviceAdd(node_id=node.node_id, name=f"d{i}", tags=()))

    # Silent: opens nothing within the hello timeout.
    silent_conn = running.listener.dial(alpn.AGENT, silent.node_id)
    # Noisy: sends a garbage frame after its Hello.
    noisy_conn, noisy_reader, noisy_writer = await running.agent(noisy)
    assert (await recv_message(noisy_reader, Welcome, timeout=5)).approved
    noisy_writer.write(b"\x00\x00\x00\x03abc")

    _, reader, writer = await running.agent(good)
    await recv_message(reader, Welcome, timeout=5)

    async with asyncio.timeout(5):
        await silent_conn.closed.wait()
        await noisy_conn.closed.wait()
    assert set(running.service.sessions) == {good.node_id}

    report = StatusReport(
        state=AgentState.APPLIED,
        since=1.0,
        sequence=None,
        desired=None,
        current=SystemState(store_path=V2, generation=3),
        progress=None,
        error=None,
        exit_code=None,
        log_tail=None,
    )
    await send_message(writer, report, timeout=5)
    reply, _, _ = await running.request(running.push_request([good.node_id], 1))
    assert isinstance(reply, PushAccepted)
    await recv_message(reader, DeliverV1, timeout=5)
    status = running.service.sessions[good.node_id].last_report
    assert status == report


async def test_watch_streams_updates_until_the_admin_leaves(running: Running) -> None:
    agent = Identity.generate()
    await running.request(DeviceAdd(node_id=agent.node_id, name="w1", tags=("x",)))
    snapshot, reader, writer = await running.request(StatusRequest(watch=True))
    assert isinstance(snapshot, StatusSnapshot)
    assert [d.online for d in snapshot.devices] == [False]
    conn, _, _ = await running.agent(agent)
    update = await recv_message(reader, StatusUpdate, timeout=5)
    assert (update.device.name, update.device.online, update.device.path) == ("w1", True, "direct")
    await conn.close()  # the agent goes away
    update = await recv_message(reader, StatusUpdate, timeout=5)
    assert not update.device.online
    writer.write_eof()  # the admin stops watching
    with pytest.raises(EOFError):
        await recv_message(reader, timeout=5)
    assert running.service.watchers == set()


async def test_agent_that_does_not_read_is_dropped_not_waited_for() -> None:
    from fleet.coordinator.server import MeshAgentLink

    conn = FakeConnection(Identity.generate().node_id)
    _, writer = conn.open_bi()
    link = MeshAgentLink(conn, writer, limit=2)
    for _ in range(3):
        link.send(b"x")  # never blocks; the third overflows the queue
    assert link.closed.is_set()
    assert "queue full" in link.reason


async def test_a_request_over_the_cap_is_read_away_hashed_and_refused(running: Running) -> None:
    body = os.urandom(MAX_ADMIN_REQUEST + 1)
    conn = running.listener.dial(alpn.ADMIN, running.admin.node_id)
    reader, writer = conn.open_bi()
    writer.write(struct.pack(">I", len(body)) + body)
    reply = await recv_message(reader, timeout=5)
    assert isinstance(reply, ErrorReply)
    assert reply.code == "too-large"
    (row,) = await running.service.db.fetchall("SELECT detail, request FROM audit")
    detail = json.loads(row["detail"])
    assert detail["request_size"] == len(body)
    assert detail["request_sha256"] == hashlib.sha256(body).hexdigest()
    assert bytes(row["request"]) == b""
    # The same connection still serves the admin.
    reader, writer = conn.open_bi()
    env = make_admin_request(running.admin, running.coordinator.node_id, DeviceList())
    await send_message(writer, env, timeout=5)
    assert isinstance(await recv_message(reader, timeout=5), DeviceListReply)


def hold_hellos(running: Running, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Hold every Hello back (as behind a herd) until the returned event is set."""
    release = asyncio.Event()
    welcome = running.service.agent_hello

    async def held_hello(link: Any, hello: Any) -> Any:
        await release.wait()
        return await welcome(link, hello)

    monkeypatch.setattr(running.service, "agent_hello", held_hello)
    return release


async def test_a_redial_while_the_hello_is_being_welcomed_is_answered_busy_not_swapped(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = Identity.generate()
    reply, _, _ = await running.request(DeviceAdd(node_id=agent.node_id, name="a1", tags=()))
    assert reply == OkReply()
    release = hold_hellos(running, monkeypatch)
    first, first_reader, _ = await running.agent(agent)
    await asyncio.sleep(0.05)
    second, second_reader, _ = await running.agent(agent)
    busy = await recv_message(second_reader, Busy, timeout=5)
    assert busy.retry_after >= 1.0
    assert "being welcomed" in busy.reason
    await second.close()  # the agent closes after reading Busy
    release.set()
    assert await recv_message(first_reader, Welcome, timeout=5) == Welcome(approved=True, name="a1")
    assert running.service.sessions[agent.node_id].link._conn is first  # type: ignore[attr-defined]
    assert not first.closed.is_set()  # the first connection was kept, not replaced


async def test_admins_are_answered_while_agents_hellos_wait(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = hold_hellos(running, monkeypatch)
    herd = [await running.agent(Identity.generate()) for _ in range(40)]
    await asyncio.sleep(0.1)
    server_gate = running.server.gate
    assert server_gate.running == server_gate.limits.concurrency  # every slot held
    assert server_gate.waiting == 40 - server_gate.limits.concurrency
    reply, _, _ = await running.request(DeviceList())  # not queued behind them
    assert isinstance(reply, DeviceListReply)
    release.set()
    for _, reader, _ in herd:
        assert isinstance(await recv_message(reader, Welcome, timeout=10), Welcome)
    assert (server_gate.running, server_gate.waiting) == (0, 0)


async def test_a_hello_that_waits_past_its_turn_is_answered_busy_not_dropped(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    running.server.gate = HelloGate(HelloLimits(concurrency=1, max_wait=0.2, first_cost=0.001))
    release = hold_hellos(running, monkeypatch)
    _, first_reader, _ = await running.agent(Identity.generate())  # holds the only slot
    await asyncio.sleep(0.05)
    _, queued_reader, _ = await running.agent(Identity.generate())  # waits: 2 x 0.2 + 0.5 s
    busy = await recv_message(queued_reader, Busy, timeout=5)
    assert busy.reason == "waited too long for its turn"
    assert running.server.gate.waiting == 0  # its place was given up
    release.set()
    assert isinstance(await recv_message(first_reader, Welcome, timeout=5), Welcome)
