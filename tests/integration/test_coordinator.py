"""`fleet coordinator` as a real process over the real mesh (QUIC on loopback).

The admin side is a tiny client built from fleet.protocol (not fleetctl), the agent side a
fake agent on a mesh Endpoint that speaks the agent protocol without running Nix.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from fleet.identity import Identity, NodeId, load_identity
from fleet.mesh import Connection, Endpoint, StreamWriter
from fleet.protocol import alpn
from fleet.protocol.admin import make_admin_request
from fleet.protocol.messages import (
    Action,
    AgentState,
    AnnouncementV2,
    DeliverV1,
    DeviceAdd,
    Hello,
    NextSequence,
    NextSequenceReply,
    OkReply,
    PushAccepted,
    PushRequestV1,
    StatusRequest,
    StatusSnapshot,
    SystemState,
    Welcome,
)
from fleet.protocol.stream import recv_message, send_message
from fleet.wire import Message, Tag, sign_envelope, verify_envelope
from harness.cli import cli_env, fleet_argv, run_fleet
from harness.coordinator_process import CoordinatorProcess, Lab
from harness.relay_process import read_log_events

M = TypeVar("M", bound=Message)
V2 = "/nix/store/" + "c" * 32 + "-nixos-system-v2"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    coordinator_key, admin_key = tmp_path / "coordinator.key", tmp_path / "admin.key"
    for key in (coordinator_key, admin_key):
        assert run_fleet("keygen", str(key)).returncode == 0
    lab = Lab(
        tmp_path, load_identity(admin_key), coordinator_key, admin_key, tmp_path / "state", []
    )
    yield lab
    for running in lab.running:
        if running.proc.poll() is None:
            running.stop()


@asynccontextmanager
async def endpoint(identity: Identity) -> AsyncIterator[Endpoint]:
    async with Endpoint(identity, bind=("127.0.0.1", 0)) as ep:
        yield ep


async def admin_request(
    ep: Endpoint, admin: Identity, coord: CoordinatorProcess, body: Message
) -> Message:
    conn = await ep.connect(coord.node_id, alpn.ADMIN, addrs=[coord.address], timeout=10)
    try:
        reader, writer = await conn.open_bi()
        env = make_admin_request(admin, coord.node_id, body)
        await send_message(writer, env, timeout=5)
        return await recv_message(reader, timeout=10)
    finally:
        await conn.close()


async def push(
    ep: Endpoint, admin: Identity, coord: CoordinatorProcess, devices: list[NodeId]
) -> PushRequestV1:
    seq = await admin_request(ep, admin, coord, NextSequence())
    assert isinstance(seq, NextSequenceReply)
    now = time.time()
    ann = AnnouncementV2(
        sequence=seq.sequence,
        devices=tuple(devices),
        targets=tuple(str(d) for d in devices),
        store_path=V2,
        substituters=(),
        action=Action.SWITCH,
        issued_at=now,
        valid_until=now + 600,
    )
    request = PushRequestV1(announcement=sign_envelope(admin, Tag.ANNOUNCEMENT, ann))
    reply = await admin_request(ep, admin, coord, request)
    assert reply == PushAccepted(sequence=seq.sequence, devices=tuple(devices)), reply
    return request


class FakeAgent:
    """The agent side of the protocol on a real mesh connection (no Nix)."""

    def __init__(
        self, conn: Connection, reader: asyncio.StreamReader, writer: StreamWriter
    ) -> None:
        self.conn, self.reader, self.writer = conn, reader, writer

    @classmethod
    async def connect(
        cls, ep: Endpoint, coord: CoordinatorProcess, last_sequence: int = 0
    ) -> FakeAgent:
        conn = await ep.connect(coord.node_id, alpn.AGENT, addrs=[coord.address], timeout=10)
        reader, writer = await conn.open_bi()
        hello = Hello(
            agent_version="fake",
            current=SystemState(store_path=None, generation=None),
            last_sequence=last_sequence,
            state=AgentState.IDLE,
            state_since=time.time(),
            tags=(),
        )
        await send_message(writer, hello, timeout=5)
        return cls(conn, reader, writer)

    async def recv(self, expected: type[M], timeout: float = 10) -> M:
        return await recv_message(self.reader, expected, timeout=timeout)


async def add_device(
    ep: Endpoint, lab: Lab, coord: CoordinatorProcess, node: NodeId, name: str
) -> None:
    reply = await admin_request(
        ep, lab.admin, coord, DeviceAdd(node_id=node, name=name, tags=("t",))
    )
    assert reply == OkReply()


async def test_push_is_delivered_live_and_shown_in_status(lab: Lab) -> None:
    coord = lab.start()
    agent_id = Identity.generate()
    async with endpoint(lab.admin) as admin_ep, endpoint(agent_id) as agent_ep:
        await add_device(admin_ep, lab, coord, agent_id.node_id, "dev1")
        agent = await FakeAgent.connect(agent_ep, coord)
        assert await agent.recv(Welcome) == Welcome(approved=True, name="dev1")

        request = await push(admin_ep, lab.admin, coord, [agent_id.node_id])
        deliver = await agent.recv(DeliverV1)
        assert isinstance(deliver, DeliverV1)
        assert deliver.announcement == request.announcement  # verbatim
        signer, ann = verify_envelope(deliver.announcement, Tag.ANNOUNCEMENT, AnnouncementV2)
        assert (signer, ann.store_path) == (lab.admin.node_id, V2)

        status = await admin_request(admin_ep, lab.admin, coord, StatusRequest(watch=False))
        assert isinstance(status, StatusSnapshot)
        (row,) = status.devices
        assert (row.name, row.online, row.path) == ("dev1", True, "direct")
        assert row.desired is not None
        assert row.desired.sequence == ann.sequence
        await agent.conn.close()
    assert coord.stop() == 0
    events = [e["event"] for e in read_log_events(coord.log_path)]
    assert "push_accepted" in events


async def test_offline_agent_gets_push_on_connect_and_pending_gets_nothing(lab: Lab) -> None:
    coord = lab.start()
    known, stranger = Identity.generate(), Identity.generate()
    async with endpoint(lab.admin) as admin_ep:
        await add_device(admin_ep, lab, coord, known.node_id, "later")
        request = await push(admin_ep, lab.admin, coord, [known.node_id])
    async with endpoint(known) as ep:
        agent = await FakeAgent.connect(ep, coord)
        assert await agent.recv(Welcome) == Welcome(approved=True, name="later")
        deliver = await agent.recv(DeliverV1)
        assert isinstance(deliver, DeliverV1)
        assert deliver.announcement == request.announcement
    async with endpoint(stranger) as ep:
        agent = await FakeAgent.connect(ep, coord)
        assert await agent.recv(Welcome) == Welcome(approved=False, name=None)
        with pytest.raises(TimeoutError):
            await agent.recv(DeliverV1, timeout=1.0)


async def test_kill_9_after_ack_then_restart_delivers(lab: Lab) -> None:
    coord = lab.start()
    agent_id = Identity.generate()
    async with endpoint(lab.admin) as admin_ep:
        await add_device(admin_ep, lab, coord, agent_id.node_id, "survivor")
        request = await push(admin_ep, lab.admin, coord, [agent_id.node_id])
    coord.kill9()  # right after PushAccepted: no clean shutdown, no delivery happened

    again = lab.start()
    async with endpoint(agent_id) as ep:
        agent = await FakeAgent.connect(ep, again)
        assert await agent.recv(Welcome) == Welcome(approved=True, name="survivor")
        deliver = await agent.recv(DeliverV1)
        assert isinstance(deliver, DeliverV1)
        assert deliver.announcement == request.announcement
    assert again.stop() == 0


def test_settings_from_toml_with_flags_winning(lab: Lab) -> None:
    config = lab.tmp / "coordinator.toml"
    config.write_text(
        f'key = "{lab.coordinator_key}"\nlisten = "127.0.0.1:9"\n'
        f'state-dir = "{lab.state_dir}"\ntrust-root = ["{lab.admin.node_id}"]\n'
    )
    log_path = lab.tmp / "toml.log"
    argv = fleet_argv("coordinator", "--config", str(config), "--listen", "127.0.0.1:0")
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(argv, stderr=log_file, stdout=subprocess.DEVNULL, env=cli_env())
    try:
        deadline = time.monotonic() + 20
        event = None
        while event is None and time.monotonic() < deadline and proc.poll() is None:
            event = next(
                (e for e in read_log_events(log_path) if e.get("event") == "coordinator_listening"),
                None,
            )
            time.sleep(0.05)
        assert event is not None, log_path.read_text()
        assert not event["address"].endswith(":9")  # the flag won over the file
        assert (lab.state_dir / "coordinator.db").exists()
        assert (lab.state_dir.stat().st_mode & 0o777) == 0o700
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0

    bad = run_fleet("coordinator", "--key", str(lab.coordinator_key), "--listen", "127.0.0.1:0")
    assert bad.returncode != 0
    assert "--state-dir" in bad.stderr
    no_admin = run_fleet(
        "coordinator",
        "--key",
        str(lab.coordinator_key),
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        str(lab.state_dir),
    )
    assert no_admin.returncode != 0
    assert "--trust-root" in no_admin.stderr
    typo = lab.tmp / "typo.toml"
    typo.write_text('admins = ["x"]\n')
    result = run_fleet("coordinator", "--config", str(typo))
    assert result.returncode != 0
    assert "unknown setting 'admins'" in result.stderr


def test_coordinator_answers_fleet_ping(lab: Lab) -> None:
    coordinator = lab.start()
    host, port = coordinator.address
    res = subprocess.run(
        fleet_argv(
            "ping",
            f"{coordinator.node_id}@{host}:{port}",
            "--count",
            "2",
            "--interval",
            "0.05",
            "--bind",
            "127.0.0.1:0",
        ),
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "2 sent, 2 received, 0 lost" in res.stdout
    assert f"via direct {host}:{port}" in res.stdout
