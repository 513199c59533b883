"""Refused requests leave bounded, rate-limited audit entries, and any audit log can be read
page by page: pages are bounded in bytes, and entries written by the old code path (a raw
0.9 MiB request each) still come out, verified."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleet.audit import encode_detail, verify_log
from fleet.coordinator import audit
from fleet.coordinator.database import Database
from fleet.coordinator.refusals import (
    RefusalLimiter,
    RefusalLimits,
    RequestFacts,
    bounded_detail,
)
from fleet.coordinator.service import (
    AUDIT_PAGE_BYTES,
    MAX_ADMIN_REQUEST,
    AdminResult,
    CoordinatorService,
)
from fleet.identity import Identity
from fleet.protocol.admin import make_admin_request
from fleet.protocol.messages import AuditPage, AuditQuery, DeviceList, ErrorReply
from fleet.protocol.stream import MESSAGE_CAP
from fleet.wire import encode

NOW = 1_700_000_000.0
LIMITS = RefusalLimits(per_key_burst=3, per_key_rate=0.1, global_burst=5, global_rate=1)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self, db: Database) -> None:
        self.coordinator = Identity.generate()
        self.admin = Identity.generate()
        self.clock = Clock()
        self.service = CoordinatorService(
            db,
            self.coordinator.node_id,
            [self.admin.node_id],
            signer=self.coordinator,
            clock=self.clock,
            refusal_limits=LIMITS,
        )

    async def garbage(self, who: Identity, size: int = 900 * 1024) -> AdminResult:
        return await self.service.handle_admin(os.urandom(size), who.node_id)

    async def read_log(self) -> tuple[list[audit.AuditEntry], list[AuditPage]]:
        """The whole log through AuditQuery, as fleetctl pages through it."""
        entries: list[audit.AuditEntry] = []
        pages: list[AuditPage] = []
        after = 0
        while True:
            env = make_admin_request(
                self.admin,
                self.coordinator.node_id,
                AuditQuery(after=after, limit=500),
                now=self.clock.now,
            )
            page = (await self.service.handle_admin(encode(env), self.admin.node_id)).reply
            assert isinstance(page, AuditPage), page
            pages.append(page)
            entries += page.entries
            if not page.more:
                return entries, pages
            after = page.entries[-1].id

    async def rows(self) -> list[audit.AuditEntry]:
        rows = await self.service.db.fetchall("SELECT * FROM audit ORDER BY id")
        return [audit.entry_of_row(r) for r in rows]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    db = await Database.open(tmp_path / "state.db")
    yield Rig(db)
    await db.close()


def error(result: AdminResult) -> ErrorReply:
    assert isinstance(result.reply, ErrorReply), result.reply
    return result.reply


async def test_garbage_is_answered_recorded_small_and_then_only_counted(rig: Rig) -> None:
    mallory = Identity.generate()
    for _ in range(12):
        assert error(await rig.garbage(mallory)).code == "invalid"
    rows = await rig.rows()
    assert len(rows) == LIMITS.per_key_burst  # the rest is counted, not stored
    for row in rows:
        assert row.request == b""
        assert len(row.detail) < 1024
        assert row.details()["request_size"] == 900 * 1024
    entries, _ = await rig.read_log()  # an audit read sums up what was suppressed
    summary = entries[-1]
    assert (summary.action, summary.actor) == ("refusals-suppressed", str(rig.coordinator.node_id))
    detail = summary.details()
    assert detail["reason"] == f"9 refusals from 1 key suppressed, total bytes {9 * 900 * 1024}"
    assert detail["top"] == [{"key": str(mallory.node_id), "refusals": 9, "bytes": 9 * 900 * 1024}]
    report = verify_log(entries, [], rig.coordinator.node_id)
    assert report.refused == LIMITS.per_key_burst + 1


async def test_many_fresh_keys_are_bounded_by_the_global_bucket(rig: Rig) -> None:
    for _ in range(20):
        await rig.garbage(Identity.generate(), size=100)
    assert len(await rig.rows()) == LIMITS.global_burst
    # An admin with a valid certificate (here: a trust root) still gets its refusal recorded.
    env = make_admin_request(rig.admin, rig.coordinator.node_id, DeviceList(), now=NOW)
    await rig.service.handle_admin(encode(env), rig.admin.node_id)
    assert error(await rig.service.handle_admin(encode(env), rig.admin.node_id)).code == "replay"
    last = (await rig.rows())[-1]
    assert (last.actor, last.details()["code"]) == (str(rig.admin.node_id), "replay")
    assert last.request == b""


async def test_a_window_of_suppressed_refusals_is_summed_up_by_the_next_checkpoint(
    rig: Rig,
) -> None:
    mallory = Identity.generate()
    for _ in range(5):
        await rig.garbage(mallory, size=10)
    await rig.service.checkpoint()
    assert [r.action for r in await rig.rows()] == ["unknown"] * 3  # window not over yet
    rig.clock.now += LIMITS.window
    await rig.service.checkpoint()
    assert (await rig.rows())[-1].details()["suppressed"] == 2


def test_the_limiter_forgets_keys_but_stays_bounded() -> None:
    limiter = RefusalLimiter(RefusalLimits(per_key_burst=1, global_burst=1000, tracked_keys=10))
    for index in range(100):
        limiter.admit(f"k{index % 50}", 1, certified=False, now=NOW)
        limiter.admit(f"k{index % 50}", 1, certified=False, now=NOW)
    assert len(limiter._buckets) == 10
    window = limiter.take_summary(NOW, force=True)
    assert window is not None
    assert (len(window.keys), window.keys_overflow) == (10, True)
    # Each key's bucket was forgotten before it came back (50 keys, 10 buckets): its first
    # refusal was recorded again, its second counted.
    assert window.refusals == 100
    assert limiter.take_summary(NOW, force=True) is None


async def test_a_request_over_the_cap_is_refused_too_large_and_recorded(rig: Rig) -> None:
    mallory = Identity.generate()
    over = await rig.garbage(mallory, size=MAX_ADMIN_REQUEST + 1)
    assert error(over).code == "too-large"
    unread = await rig.service.refuse_unread(mallory.node_id, RequestFacts(50 << 20, None))
    assert error(unread).code == "too-large"
    first, second = await rig.rows()
    assert first.details()["request_size"] == MAX_ADMIN_REQUEST + 1
    assert second.details()["request_size"] == 50 << 20
    assert second.details()["request_sha256"] is None
    assert len(first.detail) < 1024
    assert len(second.detail) < 1024


async def test_pages_are_bounded_in_bytes_and_old_huge_entries_still_read(rig: Rig) -> None:
    """Entries as the old code wrote them: each refusal kept the raw request (0.9 MiB), and
    one entry is as large as any the coordinator could write (1 MiB request and detail)."""
    async with rig.service.db.transaction() as tx:
        for index in range(12):
            await audit.append(
                tx, time=NOW + index, actor=str(Identity.generate().node_id), action="unknown",
                outcome="refused", detail={"code": "invalid", "reason": "not a signed request"},
                request=os.urandom(900 * 1024),
            )  # fmt: skip
        await audit.append(
            tx, time=NOW + 20, actor="x", action="unknown", outcome="refused",
            detail={"code": "invalid", "reason": "x" * ((1 << 20) - 100)},
            request=os.urandom(1 << 20),
        )  # fmt: skip
    entries, pages = await rig.read_log()
    assert [e.id for e in entries] == list(range(1, 14))
    for page in pages:
        size = len(encode(page))
        assert size <= MESSAGE_CAP
        assert size <= AUDIT_PAGE_BYTES + 64 * 1024 or len(page.entries) == 1
    assert len(pages) >= 6  # 2 MiB pages: two old entries each, the biggest alone
    report = verify_log(entries, pages[-1].checkpoints, rig.coordinator.node_id)
    assert (report.entries, report.sealed) == (13, 13)
    assert [len(e.request) for e in entries[:12]] == [900 * 1024] * 12  # kept, not cut


async def test_an_entry_no_coordinator_could_write_gets_a_clear_refusal(rig: Rig) -> None:
    """A row with a 2 MiB request (written into SQLite around the coordinator) cannot be
    encoded: the audit read is refused saying so, instead of a stream dropped unanswered."""
    async with rig.service.db.transaction() as tx:
        await tx.execute(
            "INSERT INTO audit (id, time, actor, action, outcome, detail, request, prev_hash,"
            " hash) VALUES (1, ?, 'x', 'unknown', 'refused', '{}', ?, ?, ?)",
            (NOW, b"\0" * (2 << 20), bytes(32), bytes(32)),
        )
    env = make_admin_request(
        rig.admin, rig.coordinator.node_id, AuditQuery(after=0, limit=500), now=NOW
    )
    refused = error(await rig.service.handle_admin(encode(env), rig.admin.node_id))
    assert refused.code == "unreadable"
    assert "entries 1..1 cannot be sent" in refused.message


def test_a_refusal_detail_is_bounded_whatever_the_request_held() -> None:
    detail = bounded_detail(
        {
            "code": "unauthorized",
            "reason": "r" * 5000,
            "targets": [f"t{i}" * 300 for i in range(10_000)],
            "nested": {"a": {"b": {"c": {"d": "deep"}}}},
        }
    )
    assert detail["clipped"] is True
    assert len(detail["reason"]) == 300
    assert len(detail["targets"]) == 16
    assert all(len(t) <= 200 for t in detail["targets"])
    assert len(encode_detail(detail)) < 5000
