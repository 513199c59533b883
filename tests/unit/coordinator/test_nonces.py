"""Idempotent admin requests: the very same signed request, sent again because its answer
was lost, gets the original reply and changes nothing; another request reusing the nonce is
still a replay."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleet.coordinator import nonces
from fleet.coordinator.database import Database
from fleet.coordinator.service import CoordinatorService
from fleet.identity import Identity, NodeId
from fleet.protocol.admin import make_admin_request, open_admin_request
from fleet.protocol.messages import (
    Action,
    AdminRequest,
    Announcement,
    DeviceAdd,
    DeviceList,
    ErrorReply,
    OkReply,
    PushAccepted,
    PushRequest,
)
from fleet.protocol.targeting import target_tree
from fleet.wire import Message, SignedEnvelope, Tag, encode, sign_envelope

NOW = 1_700_000_000.0
SYSTEM = "/nix/store/" + "b" * 32 + "-nixos-system-v2"
ADMIN = Identity.generate()
COORDINATOR = Identity.generate()


class Coordinator:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.service: CoordinatorService

    async def start(self) -> None:
        db = await Database.open(self.path)
        self.service = CoordinatorService(
            db, COORDINATOR.node_id, [ADMIN.node_id], clock=lambda: NOW
        )

    async def restart(self) -> None:
        await self.service.db.close()
        await self.start()

    async def send(self, envelope: SignedEnvelope) -> Message:
        return (await self.service.handle_admin(encode(envelope), ADMIN.node_id)).reply

    async def count(self, table: str, where: str = "1") -> int:
        row = await self.service.db.fetchone(f"SELECT count(*) AS n FROM {table} WHERE {where}")  # noqa: S608
        assert row is not None
        return int(row["n"])


@pytest.fixture
async def coordinator(tmp_path: Path) -> AsyncIterator[Coordinator]:
    c = Coordinator(tmp_path / "state.db")
    await c.start()
    yield c
    await c.service.db.close()


def request(body: Message) -> SignedEnvelope:
    return make_admin_request(ADMIN, COORDINATOR.node_id, body, now=NOW)


def with_nonce(body: Message, nonce: bytes) -> SignedEnvelope:
    """A different request that reuses `nonce`."""
    req = AdminRequest(
        coordinator=COORDINATOR.node_id, issued_at=NOW, nonce=nonce, body=encode(body)
    )
    return sign_envelope(ADMIN, Tag.ADMIN_REQUEST, req)


def nonce_of(envelope: SignedEnvelope) -> bytes:
    return open_admin_request(envelope, COORDINATOR.node_id, now=NOW).nonce


async def add_device(c: Coordinator, name: str) -> NodeId:
    node = Identity.generate().node_id
    assert isinstance(await c.send(request(DeviceAdd(node_id=node, name=name, tags=()))), OkReply)
    return node


def push_request(devices: tuple[NodeId, ...], sequence: int) -> SignedEnvelope:
    tree = target_tree(devices)
    ann = Announcement(
        sequence=sequence,
        selector=(),
        devices_root=tree.root,
        devices_count=tree.count,
        store_path=SYSTEM,
        substituters=(),
        action=Action.SWITCH,
        issued_at=NOW,
        valid_until=NOW + 3600,
    )
    envelope = sign_envelope(ADMIN, Tag.ANNOUNCEMENT, ann)
    return request(
        PushRequest(announcement=envelope, devices=devices, targets=tuple(str(d) for d in devices))
    )


async def test_a_repeated_push_gets_the_original_acceptance_once_committed(
    coordinator: Coordinator,
) -> None:
    devices = (await add_device(coordinator, "a"), await add_device(coordinator, "b"))
    audited = await coordinator.count("audit")
    envelope = push_request(devices, 1)
    first = await coordinator.send(envelope)
    assert isinstance(first, PushAccepted)
    assert (first.sequence, set(first.devices)) == (1, set(devices))
    again = await coordinator.send(envelope)
    assert again == first
    await coordinator.restart()  # the reply is as durable as the push
    assert await coordinator.send(envelope) == first
    assert await coordinator.count("announcements") == 1
    assert await coordinator.count("audit") == audited + 1  # one entry, no replay refusals


async def test_another_request_reusing_the_nonce_is_still_a_replay(
    coordinator: Coordinator,
) -> None:
    node = await add_device(coordinator, "a")
    envelope = push_request((node,), 1)
    assert isinstance(await coordinator.send(envelope), PushAccepted)
    other = with_nonce(DeviceAdd(node_id=node, name="renamed", tags=()), nonce_of(envelope))
    reply = await coordinator.send(other)
    assert isinstance(reply, ErrorReply)
    assert reply.code == "replay"
    assert await coordinator.count("devices", "name = 'renamed'") == 0


async def test_a_repeated_device_change_is_answered_ok_and_audited_once(
    coordinator: Coordinator,
) -> None:
    envelope = request(DeviceAdd(node_id=Identity.generate().node_id, name="kiosk", tags=()))
    assert isinstance(await coordinator.send(envelope), OkReply)
    assert isinstance(await coordinator.send(envelope), OkReply)
    assert await coordinator.count("audit", "action = 'device-add'") == 1


async def test_a_repeated_refused_request_gets_the_same_refusal(coordinator: Coordinator) -> None:
    node = await add_device(coordinator, "a")
    assert isinstance(await coordinator.send(push_request((node,), 1)), PushAccepted)
    stale = push_request((node,), 1)  # sequence 1 is taken: a conflict
    first = await coordinator.send(stale)
    assert isinstance(first, ErrorReply)
    assert first.code == "conflict"
    assert await coordinator.send(stale) == first


async def test_a_repeated_read_is_a_replay(coordinator: Coordinator) -> None:
    """Reads keep no reply: fleetctl signs a new request to read again."""
    envelope = request(DeviceList())
    await coordinator.send(envelope)
    reply = await coordinator.send(envelope)
    assert isinstance(reply, ErrorReply)
    assert reply.code == "replay"


async def test_the_store_tells_the_same_request_from_another(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "state.db")
    try:
        nonce, digest = b"n" * 16, nonces.request_digest(b"request")
        async with db.transaction() as tx:
            assert await nonces.spend(tx, nonce, ADMIN.node_id, NOW, NOW, digest) is None
        async with db.transaction() as tx:
            seen = await nonces.spend(tx, nonce, ADMIN.node_id, NOW, NOW, digest)
            assert seen == nonces.Seen(same_request=True, reply=None)
            await nonces.keep_reply(tx, nonce, encode(OkReply()))
        async with db.transaction() as tx:
            seen = await nonces.spend(tx, nonce, ADMIN.node_id, NOW, NOW, digest)
            assert seen == nonces.Seen(same_request=True, reply=encode(OkReply()))
            other = nonces.request_digest(b"another request")
            seen = await nonces.spend(tx, nonce, ADMIN.node_id, NOW, NOW, other)
            assert seen == nonces.Seen(same_request=False, reply=None)  # its reply is not shown
        # Expired with the freshness window, like every nonce.
        async with db.transaction() as tx:
            assert await nonces.spend(tx, b"m" * 16, ADMIN.node_id, NOW, NOW + 601, digest) is None
            assert await nonces.spend(tx, nonce, ADMIN.node_id, NOW, NOW + 601, digest) is None
    finally:
        await db.close()
