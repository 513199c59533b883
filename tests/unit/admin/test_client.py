"""AdminClient and push against an in-memory stand-in coordinator (no mesh needed)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from fleet.admin.errors import (
    CoordinatorRefused,
    CoordinatorUnreachable,
    OutcomeUnknown,
    ProtocolViolation,
)
from fleet.admin.push import PushPlan, push, wait_for_devices
from fleet.admin.targets import PushTargets
from fleet.admin.tracking import Outcome, PushTracker
from fleet.identity import Identity
from fleet.protocol.admin import open_admin_request
from fleet.protocol.messages import (
    Action,
    AgentState,
    AnnouncementV2,
    DeviceAdd,
    DeviceInfo,
    ErrorReply,
    OkReply,
    StatusSnapshot,
    StatusUpdate,
)
from fleet.wire import Tag, verify_envelope
from tests.admin_standin import StandIn, device_status, memory_client

STORE = "/nix/store/" + "c" * 32 + "-nixos-system"


@pytest.fixture
def admin() -> Identity:
    return Identity.generate()


@pytest.fixture
def standin(admin: Identity) -> StandIn:
    s = StandIn(identity=Identity.generate(), admins={admin.node_id})
    s.devices = [
        DeviceInfo(
            node_id=Identity.generate().node_id,
            name=f"d{i}",
            tags=("all",),
            approved=True,
            first_seen=1.0,
            last_seen=2.0,
        )
        for i in range(2)
    ]
    return s


def _plan(standin: StandIn) -> PushPlan:
    return PushPlan(
        store_path=STORE,
        to=PushTargets(
            typed=("tag:all",),
            devices=tuple(d.node_id for d in standin.devices),
            explicit=(),
            selector=("all",),
        ),
        substituters=("http://cache.example",),
        action=Action.TEST,
        valid_for=3600.0,
    )


async def test_requests_are_signed_for_this_coordinator(standin: StandIn, admin: Identity) -> None:
    async with memory_client(standin, admin) as client:
        assert await client.devices() == tuple(standin.devices)
        await client.add_device(standin.devices[0].node_id, "kiosk", ("a", "b"))
    envelope = standin.envelopes[-1]
    assert envelope.tag is Tag.ADMIN_REQUEST
    opened = open_admin_request(envelope, standin.identity.node_id)
    assert opened.signer == admin.node_id
    assert opened.body == DeviceAdd(
        node_id=standin.devices[0].node_id, name="kiosk", tags=("a", "b")
    )


async def test_error_reply_becomes_a_typed_refusal(standin: StandIn, admin: Identity) -> None:
    standin.refuse = ErrorReply(code="not-found", message="no device named 'x'")
    async with memory_client(standin, admin) as client:
        with pytest.raises(CoordinatorRefused) as info:
            await client.remove_device("x")
    assert info.value.code == "not-found"
    assert info.value.reason == "no device named 'x'"
    assert str(info.value) == "coordinator refused (not-found): no device named 'x'"


async def test_a_key_that_is_not_an_admin_is_refused(standin: StandIn) -> None:
    async with memory_client(standin, Identity.generate()) as client:
        with pytest.raises(CoordinatorRefused, match="unauthorized"):
            await client.devices()


async def test_silent_coordinator_times_out(standin: StandIn, admin: Identity) -> None:
    standin.silent = True
    async with memory_client(standin, admin, timeout=0.2) as client:
        with pytest.raises(CoordinatorUnreachable, match=r"no answer .* within 0.2 s"):
            await client.devices()


async def test_a_push_whose_answer_is_lost_is_sent_again_and_accepted_once(
    standin: StandIn, admin: Identity
) -> None:
    standin.lost_answers = 1
    async with memory_client(standin, admin, timeout=0.3) as client:
        accepted = await push(client, _plan(standin))
    assert accepted.sequence == 1
    assert len(standin.pushes) == 1
    sent = [e for e, b in zip(standin.envelopes, standin.received, strict=True)
            if type(b).__name__ == "PushRequest"]  # fmt: skip
    assert len(sent) == 2
    assert sent[0] == sent[1]  # the very same signed request: same nonce, same bytes


async def test_a_push_never_answered_is_reported_unknown_with_how_to_check(
    standin: StandIn, admin: Identity
) -> None:
    standin.lost_answers = 5
    standin.next_sequence = 7
    async with memory_client(standin, admin, timeout=0.2) as client:
        with pytest.raises(OutcomeUnknown) as info:
            await push(client, _plan(standin))
    message = str(info.value)
    assert "3 sends of the same PushRequest" in message
    assert "may or may not have been carried out" in message
    assert "`fleetctl push --status 7`" in message
    assert len(standin.pushes) == 1  # committed once, whatever the client knows


async def test_a_read_is_not_sent_again(standin: StandIn, admin: Identity) -> None:
    standin.silent = True
    async with memory_client(standin, admin, timeout=0.2) as client:
        with pytest.raises(CoordinatorUnreachable) as info:
            await client.devices()
    assert not isinstance(info.value, OutcomeUnknown)
    assert len(standin.envelopes) == 1


async def test_wrong_reply_type_is_a_protocol_violation(standin: StandIn, admin: Identity) -> None:
    standin.refuse = OkReply()
    async with memory_client(standin, admin) as client:
        with pytest.raises(ProtocolViolation, match=r"expected DeviceListReply.*got OkReply"):
            await client.devices()


async def test_push_signs_the_announcement_with_the_sequence(
    standin: StandIn, admin: Identity
) -> None:
    standin.next_sequence = 41
    async with memory_client(standin, admin) as client:
        accepted = await push(client, _plan(standin), clock=lambda: 1000.0)
    assert accepted.sequence == 41
    [(signer, announcement)] = standin.pushes
    assert signer == admin.node_id
    assert announcement.sequence == 41
    # `tag:all` is signed as a selector (each agent checks its own tags), not as a list.
    assert announcement.selector == ("all",)
    assert (announcement.devices_root, announcement.devices_count) == (b"", 0)
    [request] = standin.push_requests
    assert request.targets == ("tag:all",)
    assert request.devices == ()
    # Agents before Hello v4 get the same push as an Announcement v2 that lists them.
    assert request.legacy is not None
    _, legacy = verify_envelope(request.legacy, Tag.ANNOUNCEMENT, AnnouncementV2)
    assert legacy.devices == tuple(d.node_id for d in standin.devices)
    assert (legacy.sequence, legacy.store_path) == (41, STORE)
    assert announcement.store_path == STORE
    assert announcement.substituters == ("http://cache.example",)
    assert announcement.action is Action.TEST
    assert (announcement.issued_at, announcement.valid_until) == (1000.0, 4600.0)


async def test_push_retries_on_conflict_with_a_fresh_sequence(
    standin: StandIn, admin: Identity
) -> None:
    standin.conflicts = 2
    async with memory_client(standin, admin) as client:
        accepted = await push(client, _plan(standin))
    assert accepted.sequence == 3
    assert [a.sequence for _, a in standin.pushes] == [3]


async def test_push_gives_up_after_a_few_conflicts(standin: StandIn, admin: Identity) -> None:
    standin.conflicts = 10
    async with memory_client(standin, admin) as client:
        with pytest.raises(CoordinatorRefused, match="conflict"):
            await push(client, _plan(standin), attempts=3)
    assert standin.pushes == []
    assert standin.conflicts == 7


async def test_watch_yields_the_snapshot_then_each_update(
    standin: StandIn, admin: Identity
) -> None:
    d0 = standin.devices[0].node_id
    standin.publish(device_status(d0, "d0"))
    async with (
        memory_client(standin, admin) as client,
        contextlib.aclosing(client.watch()) as stream,
    ):
        first = await anext(stream)
        assert isinstance(first, StatusSnapshot)
        assert [s.node_id for s in first.devices] == [d0]
        await standin.watching.wait()
        standin.publish(device_status(d0, "d0", state=AgentState.DOWNLOADING))
        update = await anext(stream)
        assert isinstance(update, StatusUpdate)
        assert update.device.state is AgentState.DOWNLOADING


async def test_wait_for_devices_follows_them_to_applied(standin: StandIn, admin: Identity) -> None:
    d0, d1 = (d.node_id for d in standin.devices)
    standin.publish(device_status(d0, "d0", state=AgentState.APPLIED, sequence=1))
    standin.publish(device_status(d1, "d1", online=False))
    lines: list[str] = []
    async with memory_client(standin, admin) as client:
        accepted = await push(client, _plan(standin))
        tracker = PushTracker(accepted.sequence, accepted.devices, {d0: "d0", d1: "d1"})

        async def device_comes_online() -> None:
            await standin.watching.wait()
            standin.publish(device_status(d1, "d1", state=AgentState.APPLIED, sequence=1))

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(device_comes_online())
            await wait_for_devices(client, tracker, timeout=5, emit=lines.append)
    assert tracker.succeeded
    assert lines == ["d0: applied", "d1: offline; it gets the push when it connects", "d1: applied"]


async def test_wait_for_devices_expires_at_the_timeout(standin: StandIn, admin: Identity) -> None:
    d0 = standin.devices[0].node_id
    standin.publish(device_status(d0, "d0", state=AgentState.DOWNLOADING, sequence=1))
    async with memory_client(standin, admin) as client:
        tracker = PushTracker(1, [d0], {d0: "d0"})
        await wait_for_devices(client, tracker, timeout=0.3, emit=lambda _: None)
    assert tracker.tracks[d0].outcome is Outcome.TIMED_OUT
    assert tracker.tracks[d0].reason == "still downloading"
