"""The coordinator service driven directly: admin requests, agent sessions, status, durability."""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleet.agent.verify import verify_announcement
from fleet.coordinator import audit
from fleet.coordinator.database import Database
from fleet.coordinator.service import AdminResult, CoordinatorService
from fleet.coordinator.sessions import AgentSession
from fleet.identity import Identity, InvalidLabel, NodeId, normalize_tags
from fleet.protocol.admin import make_admin_request
from fleet.protocol.messages import (
    Action,
    AgentState,
    Announcement,
    AnnouncementRejected,
    AnnouncementRejectedV1,
    AnnouncementV2,
    Deliver,
    DeliverV1,
    DeviceAdd,
    DeviceApprove,
    DeviceList,
    DeviceListReply,
    DeviceRemove,
    DeviceStatus,
    ErrorReply,
    Hello,
    HelloV1,
    HelloV3,
    NextSequence,
    NextSequenceReply,
    OkReply,
    Progress,
    PushAccepted,
    PushRequest,
    PushRequestV1,
    StatusReport,
    StatusRequest,
    StatusSnapshot,
    SystemState,
    Welcome,
)
from fleet.protocol.targeting import target_tree
from fleet.wire import Message, Tag, decode, encode, sign_envelope, verify_envelope

V1 = "/nix/store/" + "a" * 32 + "-nixos-system-v1"
V2 = "/nix/store/" + "b" * 32 + "-nixos-system-v2"
NOW = 1_700_000_000.0


class FakeLink:
    """An agent connection that records what the service sends."""

    def __init__(self, node: NodeId, path: str | None = "direct") -> None:
        self.remote_id = node
        self.path = path
        self.sent: list[Message] = []
        self.closed: str | None = None

    def send(self, payload: bytes) -> None:
        self.sent.append(decode(payload))

    def close(self, reason: str) -> None:
        self.closed = reason

    def delivered(self) -> list[int]:
        out = []
        for m in self.sent:
            if isinstance(m, DeliverV1):
                _, ann = verify_envelope(m.announcement, Tag.ANNOUNCEMENT, AnnouncementV2)
                out.append(ann.sequence)
        return out


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def hello(last_sequence: int = 0) -> Hello:
    return Hello(
        agent_version="test",
        current=SystemState(store_path=V1, generation=1),
        last_sequence=last_sequence,
        state=AgentState.IDLE,
        state_since=NOW - 100,
        tags=(),
    )


class Harness:
    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.coordinator = Identity.generate()
        self.admin = Identity.generate()
        self.clock = Clock()
        self.service: CoordinatorService

    async def start(self) -> None:
        db = await Database.open(self.db_path)
        self.service = CoordinatorService(
            db, self.coordinator.node_id, [self.admin.node_id], clock=self.clock
        )

    async def restart(self) -> None:
        await self.service.db.close()
        await self.start()

    async def request(
        self, body: Message, *, signer: Identity | None = None, conn: NodeId | None = None
    ) -> AdminResult:
        signer = signer or self.admin
        env = make_admin_request(signer, self.coordinator.node_id, body, now=self.clock.now)
        return await self.service.handle_admin(encode(env), conn or signer.node_id)

    def announcement(
        self,
        devices: list[NodeId],
        sequence: int,
        *,
        signer: Identity | None = None,
        store_path: str = V2,
        valid_for: float = 3600,
    ) -> PushRequestV1:
        ann = AnnouncementV2(
            sequence=sequence,
            devices=tuple(devices),
            targets=tuple(str(d) for d in devices),
            store_path=store_path,
            substituters=("http://cache.example",),
            action=Action.SWITCH,
            issued_at=self.clock.now,
            valid_until=self.clock.now + valid_for,
        )
        return PushRequestV1(
            announcement=sign_envelope(signer or self.admin, Tag.ANNOUNCEMENT, ann)
        )

    async def push(self, devices: list[NodeId], **kw: object) -> AdminResult:
        seq = await self.request(NextSequence())
        assert isinstance(seq.reply, NextSequenceReply)
        result = await self.request(self.announcement(devices, seq.reply.sequence, **kw))  # type: ignore[arg-type]
        if result.delivery is not None:
            await self.service.deliver(result.delivery)
        return result

    async def add_device(self, name: str, tags: tuple[str, ...] = ()) -> NodeId:
        node = Identity.generate().node_id
        result = await self.request(DeviceAdd(node_id=node, name=name, tags=tags))
        assert isinstance(result.reply, OkReply), result.reply
        return node

    async def connect(self, node: NodeId, last_sequence: int = 0) -> tuple[FakeLink, AgentSession]:
        link = FakeLink(node)
        session = await self.service.agent_hello(link, hello(last_sequence))
        assert session is not None
        return link, session

    async def audit_rows(self) -> list[audit.AuditEntry]:
        rows = await self.service.db.fetchall("SELECT * FROM audit ORDER BY id")
        return [audit.entry_of_row(r) for r in rows]


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path / "state.db")
    await harness.start()
    yield harness
    await harness.service.db.close()


def error_code(result: AdminResult) -> str:
    assert isinstance(result.reply, ErrorReply), result.reply
    return result.reply.code


# ---------------------------------------------------------------- pushes


async def test_push_is_stored_and_audited_then_delivered_live(h: Harness) -> None:
    node = await h.add_device("web1", ("web",))
    link, _ = await h.connect(node)
    assert link.sent == [Welcome(approved=True, name="web1")]

    result = await h.push([node])

    assert result.reply == PushAccepted(sequence=1, devices=(node,))
    assert link.delivered() == [1]
    rows = await h.audit_rows()
    assert [(r.action, r.outcome) for r in rows] == [
        ("device-add", "accepted"),
        ("push", "accepted"),
    ]
    assert rows[1].details()["sequence"] == 1
    assert rows[1].actor == str(h.admin.node_id)
    assert audit.verify_chain(rows) == 2


async def test_push_and_its_audit_row_commit_together(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = await h.add_device("web1")

    async def broken_append(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(audit, "append", broken_append)
    with pytest.raises(sqlite3.OperationalError):
        await h.request(h.announcement([node], 1))
    monkeypatch.undo()

    # Nothing of the push survived: same sequence is accepted afterwards.
    stored = await h.service.db.fetchall("SELECT * FROM announcements")
    assert stored == []
    result = await h.request(h.announcement([node], 1))
    assert isinstance(result.reply, PushAccepted)


async def test_stale_sequence_is_a_conflict(h: Harness) -> None:
    node = await h.add_device("web1")
    assert isinstance((await h.push([node])).reply, PushAccepted)
    result = await h.request(h.announcement([node], 1))
    assert error_code(result) == "conflict"
    seq = await h.request(NextSequence())
    assert seq.reply == NextSequenceReply(sequence=2)
    assert (await h.audit_rows())[-1].outcome == "refused"


async def test_non_admin_push_refused_and_audited(h: Harness) -> None:
    node = await h.add_device("web1")
    mallory = Identity.generate()
    result = await h.request(h.announcement([node], 1, signer=mallory), signer=mallory)
    assert error_code(result) == "unauthorized"
    last = (await h.audit_rows())[-1]
    assert (last.actor, last.outcome) == (str(mallory.node_id), "refused")
    detail = last.details()
    assert detail["code"] == "unauthorized"
    assert detail["claimed"] == "fleet.admin.push"
    # A key without a valid certificate leaves its request's size and digest, not its bytes.
    assert last.request == b""
    assert detail["request_size"] > 0
    assert len(detail["request_sha256"]) == 64
    assert await h.service.db.fetchall("SELECT * FROM announcements") == []


async def test_announcement_signed_by_non_admin_refused(h: Harness) -> None:
    node = await h.add_device("web1")
    result = await h.request(h.announcement([node], 1, signer=Identity.generate()))
    assert error_code(result) == "unauthorized"


async def test_signer_must_be_the_connection(h: Harness) -> None:
    other = Identity.generate().node_id
    result = await h.request(DeviceList(), conn=other)
    assert error_code(result) == "unauthorized"
    assert "connection" in result.reply.message  # type: ignore[attr-defined]
    last = (await h.audit_rows())[-1]
    assert (last.actor, last.outcome) == (str(other), "refused")


async def test_replayed_request_refused(h: Harness) -> None:
    env = make_admin_request(h.admin, h.coordinator.node_id, DeviceList(), now=h.clock.now)
    first = await h.service.handle_admin(encode(env), h.admin.node_id)
    assert isinstance(first.reply, DeviceListReply)
    again = await h.service.handle_admin(encode(env), h.admin.node_id)
    assert error_code(again) == "replay"
    # Also across a restart: nonces are durable.
    await h.restart()
    assert error_code(await h.service.handle_admin(encode(env), h.admin.node_id)) == "replay"


async def test_unknown_or_pending_target_refused(h: Harness) -> None:
    stranger = Identity.generate().node_id
    assert error_code(await h.request(h.announcement([stranger], 1))) == "not-found"
    pending = Identity.generate().node_id
    await h.service.agent_hello(FakeLink(pending), hello())
    result = await h.request(h.announcement([pending], 1))
    assert error_code(result) == "not-found"
    assert "pending" in result.reply.message  # type: ignore[attr-defined]


async def test_expired_and_bad_store_path_refused(h: Harness) -> None:
    node = await h.add_device("web1")
    stale = h.announcement([node], 1, valid_for=60)
    h.clock.now += 120
    assert error_code(await h.request(stale)) == "expired"
    bad = await h.request(h.announcement([node], 1, store_path="/nix/store/x; rm -rf /"))
    assert error_code(bad) == "invalid"


async def test_garbage_request_refused_and_audited(h: Harness) -> None:
    result = await h.service.handle_admin(b"\x93garbage", h.admin.node_id)
    assert error_code(result) == "invalid"
    last = (await h.audit_rows())[-1]
    assert (last.action, last.request) == ("unknown", b"")
    detail = last.details()
    assert detail["request_size"] == len(b"\x93garbage")
    assert detail["request_sha256"] == hashlib.sha256(b"\x93garbage").hexdigest()
    assert "claimed" not in detail


# ---------------------------------------------------------------- agents


async def test_pending_device_gets_nothing(h: Harness) -> None:
    node = Identity.generate().node_id
    link, session = await h.connect(node)
    assert link.sent == [Welcome(approved=False, name=None)]
    devices = (await h.request(DeviceList())).reply
    assert isinstance(devices, DeviceListReply)
    (info,) = devices.devices
    assert (info.node_id, info.approved, info.first_seen) == (node, False, NOW)
    # Its reports are not listened to either.
    await h.service.agent_message(session, report(AgentState.APPLIED, 1))
    assert await h.service.db.fetchall("SELECT * FROM device_status") == []
    assert link.sent == [Welcome(approved=False, name=None)]


async def test_approval_triggers_welcome_and_latest_delivery(h: Harness) -> None:
    node = Identity.generate().node_id
    link, _ = await h.connect(node)
    assert isinstance((await h.request(DeviceApprove(node_id=node))).reply, OkReply)
    assert link.sent[1:] == [Welcome(approved=True, name=None)]
    await h.push([node])
    assert link.delivered() == [1]

    # A device that connected pending while a push for it existed gets it on approval.
    other = Identity.generate().node_id
    link2, _ = await h.connect(other)
    await h.request(DeviceAdd(node_id=other, name="late", tags=()))
    # (no push to it yet: nothing delivered)
    assert link2.delivered() == []
    await h.push([node, other])
    assert link2.delivered() == [2]


async def test_offline_device_gets_latest_on_connect_only_if_newer(h: Harness) -> None:
    node = await h.add_device("web1")
    await h.push([node])
    await h.push([node], store_path=V1)
    link, _ = await h.connect(node, last_sequence=0)
    assert link.delivered() == [2]  # only the latest
    link_b, _ = await h.connect(node, last_sequence=2)
    assert link_b.delivered() == []


async def test_expired_announcement_not_delivered_on_connect(h: Harness) -> None:
    node = await h.add_device("web1")
    await h.push([node], valid_for=60)
    h.clock.now += 120
    link, _ = await h.connect(node)
    assert link.delivered() == []


async def test_second_connection_replaces_first(h: Harness) -> None:
    node = await h.add_device("web1")
    first, s1 = await h.connect(node)
    second, _ = await h.connect(node)
    assert first.closed is not None
    assert "replaced" in first.closed
    await h.service.agent_gone(s1)  # the old connection's end does not mark it offline
    (row,) = (await h.request(StatusRequest(watch=False))).reply.devices  # type: ignore[attr-defined]
    assert row.online
    await h.push([node])
    assert second.delivered() == [1]
    assert first.delivered() == []


async def test_push_during_welcome_lookup_is_not_lost(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet.coordinator import announcements

    node = await h.add_device("web1")
    real_latest = announcements.latest_for
    pushed: list[AdminResult] = []

    async def latest_then_push(db: object, n: NodeId) -> object:
        found = await real_latest(db, n)  # type: ignore[arg-type]
        if not pushed:  # a push is accepted and delivered after the lookup read the db
            pushed.append(await h.push([node]))
        return found

    monkeypatch.setattr(announcements, "latest_for", latest_then_push)
    link, _ = await h.connect(node)
    assert isinstance(pushed[0].reply, PushAccepted)
    assert link.sent[0] == Welcome(approved=True, name="web1")
    assert link.delivered() == [1]


def report(state: AgentState, sequence: int | None, error: str | None = None) -> StatusReport:
    return StatusReport(
        state=state,
        since=NOW,
        sequence=sequence,
        desired=V2,
        current=SystemState(store_path=V2 if state is AgentState.APPLIED else V1, generation=2),
        progress=None,
        error=error,
        exit_code=None,
        log_tail=None,
    )


# ---------------------------------------------------------------- status


async def test_status_snapshot_and_live_updates(h: Harness) -> None:
    node = await h.add_device("web1", ("web",))
    result = await h.request(StatusRequest(watch=True))
    assert isinstance(result.reply, StatusSnapshot)
    (row,) = result.reply.devices
    assert (row.name, row.online, row.desired, row.state) == ("web1", False, None, None)
    watcher = result.watcher
    assert watcher is not None

    _, session = await h.connect(node)
    online = await watcher.next(timeout=1)
    assert (online.online, online.path, online.state) == (True, "direct", AgentState.IDLE)

    await h.push([node])
    desired = await watcher.next(timeout=1)
    assert desired.desired is not None
    assert desired.desired.sequence == 1

    await h.service.agent_message(session, report(AgentState.APPLIED, 1))
    applied = await watcher.next(timeout=1)
    assert (applied.state, applied.current) == (
        AgentState.APPLIED,
        SystemState(store_path=V2, generation=2),
    )

    await h.service.agent_message(
        session, AnnouncementRejected(sequence=1, code="replay", reason="replayed")
    )
    rejected = await watcher.next(timeout=1)
    assert rejected.rejection is not None
    assert (rejected.rejection.sequence, rejected.rejection.code) == (1, "replay")
    assert rejected.rejection.reason == "replayed"
    assert rejected.error is None  # the agent's own error field is left alone

    await h.service.agent_gone(session)
    offline = await watcher.next(timeout=1)
    assert (offline.online, offline.path) == (False, None)
    # The last report survives a restart.
    await h.restart()
    snap = (await h.request(StatusRequest(watch=False))).reply
    assert isinstance(snap, StatusSnapshot)
    assert snap.devices[0].state is AgentState.APPLIED
    assert snap.devices[0].rejection is not None
    assert snap.devices[0].rejection.reason == "replayed"


async def test_slow_watcher_is_cut_off_not_waited_for(h: Harness) -> None:
    node = await h.add_device("web1")
    result = await h.request(StatusRequest(watch=True))
    watcher = result.watcher
    assert watcher is not None
    watcher._limit = 3  # a small bound for the test
    _, session = await h.connect(node)
    for i in range(5):
        await h.service.agent_message(session, report(AgentState.DOWNLOADING, i + 1))
    assert watcher.overflowed
    assert watcher not in h.service.watchers


async def test_remove_device_disconnects_it(h: Harness) -> None:
    node = await h.add_device("web1")
    link, _ = await h.connect(node)
    assert isinstance((await h.request(DeviceRemove(name="web1"))).reply, OkReply)
    assert link.closed is not None
    assert node not in h.service.sessions
    listed = (await h.request(DeviceList())).reply
    assert isinstance(listed, DeviceListReply)
    assert listed.devices == ()


async def test_name_conflict_refused(h: Harness) -> None:
    await h.add_device("web1")
    other = Identity.generate().node_id
    result = await h.request(DeviceAdd(node_id=other, name="web1", tags=()))
    assert error_code(result) == "conflict"
    bad = await h.request(DeviceAdd(node_id=other, name="tag:x", tags=()))
    assert error_code(bad) == "invalid"


# ---------------------------------------------------------------- durability


async def test_crash_between_commit_and_reply_loses_nothing(h: Harness) -> None:
    node = await h.add_device("web1")
    # handle_admin returned: committed. The process dies before replying or delivering.
    result = await h.request(h.announcement([node], 1))
    assert isinstance(result.reply, PushAccepted)
    await h.restart()
    link, _ = await h.connect(node)
    assert link.delivered() == [1]
    assert audit.verify_chain(await h.audit_rows()) == 2


async def test_status_rows_are_contract_shaped(h: Harness) -> None:
    node = await h.add_device("web1")
    snap = (await h.request(StatusRequest(watch=False))).reply
    assert isinstance(snap, StatusSnapshot)
    (row,) = snap.devices
    assert isinstance(row, DeviceStatus)
    assert row.node_id == node


# ---------------------------------------------------------------- rejections, tags, times


async def _row(h: Harness) -> DeviceStatus:
    snap = (await h.request(StatusRequest(watch=False))).reply
    assert isinstance(snap, StatusSnapshot)
    (row,) = snap.devices
    return row


async def test_a_rejection_is_kept_per_push_shown_at_once_and_survives_a_restart(
    h: Harness,
) -> None:
    node = await h.add_device("web1", ("web",))
    _, session = await h.connect(node)
    await h.service.agent_message(session, report(AgentState.APPLIED, 1))
    await h.push([node])  # sequence 1
    watch = await h.request(StatusRequest(watch=True))
    assert watch.watcher is not None
    h.clock.now += 30
    refusal = AnnouncementRejected(sequence=1, code="scope", reason="announcement 1: scope")
    await h.service.agent_message(session, refusal)
    update = await watch.watcher.next(timeout=1)  # published with the rejection, no delay
    assert update.rejection is not None
    assert (update.rejection.sequence, update.rejection.code, update.rejection.time) == (
        1,
        "scope",
        NOW + 30,
    )
    h.service.unwatch(watch.watcher)
    await h.restart()
    row = await _row(h)
    assert row.rejection is not None
    assert row.rejection.reason == "announcement 1: scope"
    rows = await h.service.db.fetchall("SELECT node_id, sequence, code FROM rejections")
    assert [tuple(r) for r in rows] == [(str(node), 1, "scope")]


async def test_a_rejection_is_no_longer_shown_once_the_device_did_newer_work(h: Harness) -> None:
    node = await h.add_device("web1")
    _, session = await h.connect(node)
    await h.service.agent_message(
        session, AnnouncementRejected(sequence=1, code="expired", reason="too late")
    )
    assert (await _row(h)).rejection is not None
    h.clock.now += 5
    await h.service.agent_message(session, report(AgentState.APPLIED, 2))
    assert (await _row(h)).rejection is None


async def test_a_refused_replay_of_an_older_push_stays_visible(h: Harness) -> None:
    node = await h.add_device("web1")
    _, session = await h.connect(node)
    await h.service.agent_message(session, report(AgentState.APPLIED, 2))
    h.clock.now += 5
    replay = AnnouncementRejected(sequence=1, code="replay", reason="not newer than 2")
    await h.service.agent_message(session, replay)
    h.clock.now += 5
    await h.restart()  # a reconnect's Hello repeats the state: not newer work
    again = dataclasses.replace(hello(2), state=AgentState.APPLIED, state_since=NOW)
    assert await h.service.agent_hello(FakeLink(node), again) is not None
    row = await _row(h)
    assert row.rejection is not None
    assert row.rejection.code == "replay"


async def test_a_version_1_agent_is_still_served(h: Harness) -> None:
    node = await h.add_device("web1", ("web",))
    link = FakeLink(node)
    old = HelloV1(
        agent_version="0.1",
        current=SystemState(store_path=V1, generation=1),
        last_sequence=0,
        state=AgentState.IDLE,
        state_since=NOW - 100,
    )
    session = await h.service.agent_hello(link, old)
    assert session is not None
    assert link.sent == [Welcome(approved=True, name="web1")]
    await h.service.agent_message(session, AnnouncementRejectedV1(sequence=3, reason="old"))
    row = await _row(h)
    assert row.agent_tags is None  # it reported none: no mismatch claimed
    assert row.rejection is not None
    assert (row.rejection.sequence, row.rejection.code) == (3, "unknown")


async def test_the_agents_own_tags_are_stored_next_to_the_registrys(h: Harness) -> None:
    node = await h.add_device("web1", ("web",))
    link = FakeLink(node)
    own = dataclasses.replace(hello(), tags=("tag:lobby", "kiosk"))
    assert await h.service.agent_hello(link, own) is not None
    row = await _row(h)
    assert (row.tags, row.agent_tags) == (("web",), ("kiosk", "lobby"))
    await h.restart()
    assert (await _row(h)).agent_tags == ("kiosk", "lobby")


async def test_devices_add_takes_tag_prefixed_tags_and_refuses_bad_ones(h: Harness) -> None:
    node = Identity.generate().node_id
    ok = await h.request(DeviceAdd(node_id=node, name="k1", tags=("tag:kiosk", "lobby")))
    assert isinstance(ok.reply, OkReply), ok.reply
    assert (await _row(h)).tags == ("kiosk", "lobby")
    bad = await h.request(DeviceAdd(node_id=node, name="k1", tags=("tag:a b",)))
    assert isinstance(bad.reply, ErrorReply)
    assert bad.reply.code == "invalid"
    with pytest.raises(InvalidLabel) as agent_side:
        normalize_tags(["tag:a b"])
    assert bad.reply.message == str(agent_side.value)  # the agent's --tag says the same


async def test_a_fresh_device_has_no_state_since_and_last_seen_is_its_last_message(
    h: Harness,
) -> None:
    node = await h.add_device("web1")
    link = FakeLink(node)
    fresh = dataclasses.replace(hello(), state_since=0.0)  # a device that never changed state
    session = await h.service.agent_hello(link, fresh)
    assert session is not None
    row = await _row(h)
    assert (row.state, row.state_since, row.last_seen) == (AgentState.IDLE, None, NOW)
    h.clock.now += 50
    progress = dataclasses.replace(
        report(AgentState.DOWNLOADING, 1),
        progress=Progress(paths_done=1, paths_total=2, bytes_done=1, bytes_total=2),
    )
    await h.service.agent_message(session, progress)
    h.clock.now += 50
    await h.service.agent_message(session, progress)  # progress only: nothing written
    assert (await _row(h)).last_seen == NOW + 100
    stored = await h.service.db.fetchone("SELECT last_seen FROM devices")
    assert stored is not None
    assert stored["last_seen"] == NOW + 50  # persisted with the state change, not per message
    listed = (await h.request(DeviceList())).reply
    assert isinstance(listed, DeviceListReply)
    assert listed.devices[0].last_seen == NOW + 100  # `devices list` agrees with `status`
    h.clock.now += 10
    await h.service.agent_gone(session)
    assert (await _row(h)).last_seen == NOW + 110


# ---------------------------------------------------------------- announcement v3: targets


def targeted_push(
    h: Harness,
    sequence: int,
    explicit: list[NodeId],
    selector: tuple[str, ...] = (),
    *,
    legacy: list[NodeId] | None = None,
    claimed: list[NodeId] | None = None,
) -> PushRequest:
    """A v3 push as fleetctl makes it; `claimed`: other ids than the root's, in the request."""
    tree = target_tree(explicit)
    ann = Announcement(
        sequence=sequence, selector=selector, devices_root=tree.root, devices_count=tree.count,
        store_path=V2, substituters=(), action=Action.SWITCH, issued_at=h.clock.now,
        valid_until=h.clock.now + 3600,
    )  # fmt: skip
    old = None
    if legacy is not None:
        old = AnnouncementV2(
            sequence=sequence, devices=tuple(legacy), targets=(), store_path=V2,
            substituters=(), action=Action.SWITCH, issued_at=ann.issued_at,
            valid_until=ann.valid_until,
        )  # fmt: skip
    return PushRequest(
        announcement=sign_envelope(h.admin, Tag.ANNOUNCEMENT, ann),
        devices=tuple(claimed if claimed is not None else explicit),
        targets=("as typed",),
        legacy=sign_envelope(h.admin, Tag.ANNOUNCEMENT, old) if old is not None else None,
    )


async def push_v3(h: Harness, request: PushRequest) -> AdminResult:
    result = await h.request(request)
    if result.delivery is not None:
        await h.service.deliver(result.delivery)
    return result


def accepts(link: FakeLink, tags: tuple[str, ...] = ()) -> list[int]:
    """Sequences of the Deliver v2 messages that the agent's own check accepts."""
    out = []
    for m in link.sent:
        if isinstance(m, Deliver):
            accepted = verify_announcement(
                m.announcement, trust_roots=[m.announcement.signer], device=link.remote_id,
                floor=0, current=None, now=NOW, tags=tags, proof=m.proof,
            )  # fmt: skip
            out.append(accepted.announcement.sequence)
    return out


async def test_v3_explicit_push_reaches_only_its_ids_each_with_a_proof_that_verifies(
    h: Harness,
) -> None:
    nodes = [await h.add_device(f"d{i}") for i in range(5)]
    links = [(await h.connect(n))[0] for n in nodes]
    result = await push_v3(h, targeted_push(h, 1, nodes[:3]))
    assert isinstance(result.reply, PushAccepted)
    assert set(result.reply.devices) == set(nodes[:3])
    assert [accepts(link) for link in links] == [[1], [1], [1], [], []]
    sizes = {len(encode(m)) for link in links[:3] for m in link.sent if isinstance(m, Deliver)}
    assert max(sizes) < 1024  # the envelope and two proof hashes, not a list of ids
    [row] = [r for r in await h.audit_rows() if r.action == "push"]
    detail = row.details()
    assert sorted(detail["devices"]) == sorted(str(n) for n in nodes[:3])
    assert detail["devices_count"] == 3
    assert detail["targets"] == ["as typed"]


async def test_v3_selector_push_reaches_the_devices_with_the_tag(h: Harness) -> None:
    kiosks = [await h.add_device(f"k{i}", ("kiosk",)) for i in range(2)]
    other = await h.add_device("printer", ("office",))
    links = {n: (await h.connect(n))[0] for n in [*kiosks, other]}
    result = await push_v3(h, targeted_push(h, 1, [], ("kiosk",)))
    assert isinstance(result.reply, PushAccepted)
    assert set(result.reply.devices) == set(kiosks)
    for kiosk in kiosks:
        assert accepts(links[kiosk], tags=("kiosk",)) == [1]
        assert [m.proof for m in links[kiosk].sent if isinstance(m, Deliver)] == [None]
    assert accepts(links[other], tags=("office",)) == []


async def test_v3_push_whose_ids_are_not_under_the_root_is_refused(h: Harness) -> None:
    nodes = [await h.add_device(f"d{i}") for i in range(3)]
    result = await push_v3(h, targeted_push(h, 1, nodes[:2], claimed=nodes))
    assert error_code(result) == "invalid"
    assert [(r.action, r.outcome) for r in await h.audit_rows()][-1] == ("push", "refused")


async def test_v3_push_to_a_tag_nobody_has_is_refused(h: Harness) -> None:
    await h.add_device("d0", ("office",))
    assert error_code(await push_v3(h, targeted_push(h, 1, [], ("kiosk",)))) == "not-found"


async def test_v3_old_agents_get_the_legacy_announcement_or_nothing(h: Harness) -> None:
    nodes = [await h.add_device(f"d{i}") for i in range(2)]
    links = []
    for node in nodes:
        link = FakeLink(node)
        old_hello = HelloV3(
            **{f.name: getattr(hello(), f.name) for f in dataclasses.fields(HelloV3)}
        )
        assert await h.service.agent_hello(link, old_hello) is not None
        links.append(link)
    await push_v3(h, targeted_push(h, 1, nodes, legacy=nodes))
    assert [link.delivered() for link in links] == [[1], [1]]  # Deliver v1, Announcement v2
    await push_v3(h, targeted_push(h, 2, nodes))  # no legacy announcement: nothing to send
    assert [link.delivered() for link in links] == [[1], [1]]
    assert not any(isinstance(m, Deliver) for link in links for m in link.sent)


async def test_v3_reconnecting_device_gets_its_own_proof_after_a_restart(h: Harness) -> None:
    nodes = [await h.add_device(f"d{i}") for i in range(3)]
    await push_v3(h, targeted_push(h, 1, nodes))
    await h.restart()
    for node in nodes:
        link, _ = await h.connect(node)
        assert accepts(link) == [1]
