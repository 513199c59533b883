"""Status at fleet scale: filters applied by the coordinator, pages that stay small, and the
summary of everything that matches."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleet.coordinator import registry, status
from fleet.coordinator.database import Database
from fleet.coordinator.service import CoordinatorService
from fleet.identity import Identity, NodeId
from fleet.protocol.admin import make_admin_request
from fleet.protocol.messages import (
    AgentState,
    ErrorReply,
    StatusPage,
    StatusQuery,
    StatusReport,
    SystemState,
)
from fleet.wire import encode

NOW = 1_700_000_000.0
SYSTEM = "/nix/store/" + "a" * 32 + "-nixos-system"
ADMIN = Identity.generate()
COORDINATOR = Identity.generate()


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[CoordinatorService]:
    db = await Database.open(tmp_path / "state.db")
    yield CoordinatorService(db, COORDINATOR.node_id, [ADMIN.node_id], clock=lambda: NOW)
    await db.close()


async def fleet_of(service: CoordinatorService, n: int) -> list[NodeId]:
    """`n` devices, registered in one transaction: every third failed, the others applied
    (one in five never reported); even ones tagged kiosk."""
    nodes = [Identity.generate().node_id for _ in range(n)]
    async with service.db.transaction() as tx:
        for i, node in enumerate(nodes):
            await registry.add(tx, node, f"d{i:04}", ("kiosk",) if i % 2 == 0 else (), NOW)
            if i % 5 == 4:
                continue
            state = AgentState.FAILED if i % 3 == 0 else AgentState.APPLIED
            report = StatusReport(
                state=state,
                since=NOW,
                sequence=1,
                desired=SYSTEM,
                current=SystemState(store_path=SYSTEM, generation=2),
                progress=None,
                error="exit 1" if state is AgentState.FAILED else None,
                exit_code=None,
                log_tail=None,
            )
            await registry.save_report(tx, node, report, NOW)
    return nodes


async def query(service: CoordinatorService, **fields: object) -> StatusPage | ErrorReply:
    values: dict[str, object] = {
        "states": (),
        "tags": (),
        "offline": False,
        "after": None,
        "limit": 1000,
        "summary": True,
        **fields,
    }
    body = StatusQuery(**values)  # type: ignore[arg-type]
    envelope = make_admin_request(ADMIN, COORDINATOR.node_id, body, now=NOW)
    reply = (await service.handle_admin(encode(envelope), ADMIN.node_id)).reply
    assert isinstance(reply, StatusPage | ErrorReply)
    return reply


async def test_filters_and_summary(service: CoordinatorService) -> None:
    nodes = await fleet_of(service, 60)
    page = await query(service, states=(AgentState.FAILED,), tags=("tag:kiosk",), offline=True)
    assert isinstance(page, StatusPage)
    expected = {nodes[i] for i in range(60) if i % 6 == 0 and i % 5 != 4}
    assert {row.node_id for row in page.devices} == expected
    assert all(row.state is AgentState.FAILED and not row.online for row in page.devices)
    assert page.summary is not None
    assert page.summary.devices == len(expected)
    assert not page.more
    everything = await query(service, limit=0)
    assert isinstance(everything, StatusPage)
    assert everything.devices == ()
    assert everything.more
    assert everything.summary is not None
    assert everything.summary.devices == 60
    assert everything.summary.online == 0
    assert everything.summary.states == {"applied": 32, "failed": 16, "unknown": 12}


async def test_pages_cover_every_row_once_within_the_byte_budget(
    service: CoordinatorService, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = await fleet_of(service, 50)
    monkeypatch.setattr(status, "STATUS_PAGE_BYTES", 1000)  # a few rows per page
    seen: list[NodeId] = []
    after = None
    pages = 0
    while True:
        page = await query(service, after=after, summary=False)
        assert isinstance(page, StatusPage)
        assert page.summary is None
        assert 0 < len(encode(page)) <= 1000  # rows counted whole, with their framing
        seen.extend(row.node_id for row in page.devices)
        pages += 1
        if not page.more:
            break
        after = page.devices[-1].node_id
    assert sorted(seen, key=lambda n: n.raw) == sorted(nodes, key=lambda n: n.raw)
    assert len(seen) == len(set(seen))
    assert pages > 5


async def test_bad_filters_are_refused(service: CoordinatorService) -> None:
    reply = await query(service, tags=("not a tag!",))
    assert isinstance(reply, ErrorReply)
    assert reply.code == "invalid"
    reply = await query(service, limit=-1)
    assert isinstance(reply, ErrorReply)
    assert reply.code == "invalid"
