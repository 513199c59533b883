"""The device registry (approved and pending devices), each device's last reported status, the
tags its agent reported, and the announcements it rejected."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fleet.coordinator.announcements import Reader
from fleet.coordinator.database import Row, Transaction
from fleet.identity import InvalidLabel, NodeId, check_label, normalize_tags
from fleet.protocol.messages import (
    AgentState,
    AnyHello,
    DeviceInfo,
    HelloV1,
    Rejection,
    StatusReport,
    SystemState,
)


class RegistryError(Exception):
    """A registry change that cannot be made; `code` is the ErrorReply code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DeviceRecord:
    node_id: NodeId
    name: str | None
    tags: tuple[str, ...]
    approved: bool
    first_seen: float | None
    last_seen: float | None
    agent_tags: tuple[str, ...] | None = None  # reported by the agent (None: never)

    @property
    def tags_mismatch(self) -> bool:
        return self.agent_tags is not None and set(self.agent_tags) != set(self.tags)

    def info(self) -> DeviceInfo:
        return DeviceInfo(
            node_id=self.node_id,
            name=self.name,
            tags=self.tags,
            approved=self.approved,
            first_seen=self.first_seen,
            last_seen=self.last_seen,
        )


@dataclass(frozen=True)
class LastReport:
    """What the device last told us (persisted; progress is not)."""

    state: AgentState
    state_since: float | None  # None: the agent never changed state (reports `since` 0)
    sequence: int | None
    desired: str | None
    current: SystemState
    error: str | None
    exit_code: int | None
    log_tail: str | None
    reported_at: float  # when the coordinator learned of this state (not of a repeat)


def _device(row: Row) -> DeviceRecord:
    return DeviceRecord(
        node_id=NodeId.parse(row["node_id"]),
        name=row["name"],
        tags=tuple(json.loads(row["tags"])),
        approved=bool(row["approved"]),
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        agent_tags=None if row["agent_tags"] is None else tuple(json.loads(row["agent_tags"])),
    )


def _report(row: Row) -> LastReport:
    return LastReport(
        state=AgentState(row["state"]),
        state_since=float(row["state_since"]) if row["state_since"] > 0 else None,
        sequence=row["sequence"],
        desired=row["desired"],
        current=SystemState(store_path=row["current_path"], generation=row["current_generation"]),
        error=row["error"],
        exit_code=row["exit_code"],
        log_tail=row["log_tail"],
        reported_at=float(row["reported_at"]),
    )


async def get(db: Reader, node: NodeId) -> DeviceRecord | None:
    row = await db.fetchone("SELECT * FROM devices WHERE node_id = ?", (str(node),))
    return _device(row) if row is not None else None


async def get_by_name(db: Reader, name: str) -> DeviceRecord | None:
    row = await db.fetchone("SELECT * FROM devices WHERE name = ?", (name,))
    return _device(row) if row is not None else None


async def all_devices(db: Reader) -> list[DeviceRecord]:
    rows = await db.fetchall(
        "SELECT * FROM devices ORDER BY approved DESC, name IS NULL, name, node_id"
    )
    return [_device(r) for r in rows]


async def pending_count(db: Reader) -> int:
    row = await db.fetchone("SELECT count(*) AS n FROM devices WHERE approved = 0")
    return int(row["n"]) if row is not None else 0


def reported_tags(hello: AnyHello) -> tuple[str, ...] | None:
    """The tags an agent's Hello reports, as stored (None: an agent that reports none)."""
    if isinstance(hello, HelloV1):
        return None
    try:
        return normalize_tags(hello.tags)
    except InvalidLabel:
        return tuple(sorted(set(hello.tags)))  # shown as they are: they cannot match anyway


async def record_seen(
    tx: Transaction, node: NodeId, now: float, agent_tags: tuple[str, ...] | None = None
) -> DeviceRecord:
    """Note a Hello from `node` (and the tags it reported); unknown nodes become pending."""
    tags = None if agent_tags is None else json.dumps(list(agent_tags))
    await tx.execute(
        "INSERT INTO devices (node_id, first_seen, last_seen, added_at, agent_tags)"
        " VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (node_id) DO UPDATE SET"
        " first_seen = coalesce(first_seen, excluded.first_seen), last_seen = excluded.last_seen,"
        " agent_tags = excluded.agent_tags",
        (str(node), now, now, now, tags),
    )
    record = await get(tx, node)
    assert record is not None
    return record


async def add(
    tx: Transaction, node: NodeId, name: str, tags: tuple[str, ...], now: float
) -> DeviceRecord:
    """Register (or rename and retag) `node` as an approved device named `name`."""
    try:
        check_label(name, "device name")
        clean_tags = normalize_tags(tags)
    except InvalidLabel as exc:
        raise RegistryError("invalid", str(exc)) from None
    holder = await get_by_name(tx, name)
    if holder is not None and holder.node_id != node:
        raise RegistryError(
            "conflict", f"the name {name!r} is taken by device {holder.node_id.short()}"
        )
    await tx.execute(
        "INSERT INTO devices (node_id, name, tags, approved, added_at) VALUES (?, ?, ?, 1, ?)"
        " ON CONFLICT (node_id) DO UPDATE SET"
        " name = excluded.name, tags = excluded.tags, approved = 1",
        (str(node), name, json.dumps(list(clean_tags)), now),
    )
    record = await get(tx, node)
    assert record is not None
    return record


async def add_many(
    tx: Transaction, entries: Iterable[tuple[NodeId, str, tuple[str, ...]]], now: float
) -> None:
    """Register many approved devices (checked by the caller: labels, names free, none
    registered) in one statement; a pending row of the same node is approved and named."""
    await tx.executemany(
        "INSERT INTO devices (node_id, name, tags, approved, added_at) VALUES (?, ?, ?, 1, ?)"
        " ON CONFLICT (node_id) DO UPDATE SET"
        " name = excluded.name, tags = excluded.tags, approved = 1",
        [(str(node), name, json.dumps(list(tags)), now) for node, name, tags in entries],
    )


async def names_and_ids(db: Reader) -> tuple[dict[str, NodeId], dict[NodeId, str | None]]:
    """name -> node of every named device, and node -> name of every registered device
    (approved, or named: a pending device that only connected is not registered)."""
    rows = await db.fetchall(
        "SELECT node_id, name FROM devices WHERE approved = 1 OR name IS NOT NULL"
    )
    by_name: dict[str, NodeId] = {}
    by_id: dict[NodeId, str | None] = {}
    for row in rows:
        node = NodeId.parse(row["node_id"])
        by_id[node] = row["name"]
        if row["name"] is not None:
            by_name[row["name"]] = node
    return by_name, by_id


async def approve(tx: Transaction, node: NodeId) -> DeviceRecord:
    if await tx.execute("UPDATE devices SET approved = 1 WHERE node_id = ?", (str(node),)) == 0:
        raise RegistryError(
            "not-found", f"no device {node.short()} (it has not connected and was not added)"
        )
    record = await get(tx, node)
    assert record is not None
    return record


async def remove(tx: Transaction, name: str) -> DeviceRecord:
    record = await get_by_name(tx, name)
    if record is None:
        raise RegistryError("not-found", f"no device named {name!r}")
    await tx.execute("DELETE FROM devices WHERE node_id = ?", (str(record.node_id),))
    return record


async def save_report(tx: Transaction, node: NodeId, report: StatusReport, now: float) -> None:
    await tx.execute(
        "INSERT OR REPLACE INTO device_status (node_id, state, state_since, sequence, desired,"
        " current_path, current_generation, error, exit_code, log_tail, reported_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            str(node),
            report.state.value,
            report.since,
            report.sequence,
            report.desired,
            report.current.store_path,
            report.current.generation,
            report.error,
            report.exit_code,
            report.log_tail,
            now,
        ),
    )


async def save_rejection(
    tx: Transaction, node: NodeId, sequence: int, code: str, reason: str, now: float
) -> None:
    """Keep that the device refused announcement `sequence` (a repeat updates the row)."""
    await tx.execute(
        "INSERT INTO rejections (node_id, sequence, code, reason, rejected_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (node_id, sequence) DO UPDATE SET"
        " code = excluded.code, reason = excluded.reason, rejected_at = excluded.rejected_at",
        (str(node), sequence, code, reason, now),
    )


def _rejection(row: Row) -> Rejection:
    return Rejection(
        sequence=int(row["sequence"]),
        code=str(row["code"]),
        reason=str(row["reason"]),
        time=float(row["rejected_at"]),
    )


async def latest_rejection(db: Reader, node: NodeId) -> Rejection | None:
    row = await db.fetchone(
        "SELECT * FROM rejections WHERE node_id = ? ORDER BY sequence DESC LIMIT 1", (str(node),)
    )
    return _rejection(row) if row is not None else None


async def latest_rejections(db: Reader) -> dict[str, Rejection]:
    """node id text -> its highest-sequence rejection, for every device that rejected any."""
    rows = await db.fetchall(
        "SELECT r.* FROM rejections r JOIN"
        " (SELECT node_id, max(sequence) AS sequence FROM rejections GROUP BY node_id) m"
        " USING (node_id, sequence)"
    )
    return {str(r["node_id"]): _rejection(r) for r in rows}


async def last_report(db: Reader, node: NodeId) -> LastReport | None:
    row = await db.fetchone("SELECT * FROM device_status WHERE node_id = ?", (str(node),))
    return _report(row) if row is not None else None


async def last_reports(db: Reader) -> dict[str, LastReport]:
    rows = await db.fetchall("SELECT * FROM device_status")
    return {str(r["node_id"]): _report(r) for r in rows}


async def save_hello(tx: Transaction, node: NodeId, hello: AnyHello, now: float) -> None:
    """What the agent says on connect; an error shown for the same state is kept."""
    await tx.execute(
        "INSERT INTO device_status (node_id, state, state_since, sequence, current_path,"
        " current_generation, reported_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (node_id) DO UPDATE SET"
        " error = CASE WHEN state = excluded.state AND state_since = excluded.state_since"
        "   THEN error ELSE NULL END,"
        " exit_code = CASE WHEN state = excluded.state AND state_since = excluded.state_since"
        "   THEN exit_code ELSE NULL END,"
        " log_tail = CASE WHEN state = excluded.state AND state_since = excluded.state_since"
        "   THEN log_tail ELSE NULL END,"
        " desired = CASE WHEN state = excluded.state AND state_since = excluded.state_since"
        "   THEN desired ELSE NULL END,"
        " state = excluded.state, state_since = excluded.state_since,"
        " sequence = coalesce(sequence, excluded.sequence),"
        " current_path = excluded.current_path, current_generation = excluded.current_generation,"
        " reported_at = CASE WHEN state = excluded.state AND state_since = excluded.state_since"
        "   THEN reported_at ELSE excluded.reported_at END",
        (
            str(node),
            hello.state.value,
            hello.state_since,
            hello.last_sequence or None,
            hello.current.store_path,
            hello.current.generation,
            now,
        ),
    )


async def touch(tx: Transaction, node: NodeId, now: float) -> None:
    """Persist last_seen of a known device (a removed device is not brought back).

    The service keeps the time of each message in memory and writes it here only with
    writes it makes anyway and at disconnection: no disk write per progress report."""
    await tx.execute("UPDATE devices SET last_seen = ? WHERE node_id = ?", (now, str(node)))


async def approval_of(db: Reader, nodes: Iterable[NodeId]) -> dict[NodeId, bool]:
    """node -> approved, for those of `nodes` that are in the registry (batched lookups)."""
    wanted = list(dict.fromkeys(nodes))
    found: dict[NodeId, bool] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        placeholders = ",".join("?" * len(chunk))  # only "?"s: values stay parameters
        rows = await db.fetchall(
            f"SELECT node_id, approved FROM devices WHERE node_id IN ({placeholders})",  # noqa: S608
            [str(n) for n in chunk],
        )
        by_text = {str(n): n for n in chunk}
        for row in rows:
            found[by_text[row["node_id"]]] = bool(row["approved"])
    return found


def _marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))  # only "?"s: values stay parameters


async def status_index(
    db: Reader, states: Sequence[str], tags: Sequence[str]
) -> list[tuple[str, bool, str | None]]:
    """(node id text, approved, reported state) of every device in one of `states` (any,
    also none, when empty) with every tag of `tags`, in node id text order. Nothing is
    parsed: this is the cheap pass over the whole registry that status pages filter."""
    where, params = [], list(states)
    if states:
        where.append(f"s.state IN ({_marks(states)})")
    for tag in tags:
        where.append("EXISTS (SELECT 1 FROM json_each(d.tags) WHERE value = ?)")
        params.append(tag)
    rows = await db.fetchall(
        "SELECT d.node_id, d.approved, s.state FROM devices d"  # noqa: S608
        " LEFT JOIN device_status s USING (node_id)"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY d.node_id",
        params,
    )
    return [(str(r["node_id"]), bool(r["approved"]), r["state"]) for r in rows]


async def devices_of(db: Reader, nodes: Sequence[str]) -> list[DeviceRecord]:
    """The registry entries of `nodes` (node id texts, at most a page), in node id order."""
    rows = await db.fetchall(
        f"SELECT * FROM devices WHERE node_id IN ({_marks(nodes)}) ORDER BY node_id",  # noqa: S608
        list(nodes),
    )
    return [_device(r) for r in rows]


async def reports_of(db: Reader, nodes: Sequence[str]) -> dict[str, LastReport]:
    rows = await db.fetchall(
        f"SELECT * FROM device_status WHERE node_id IN ({_marks(nodes)})",  # noqa: S608
        list(nodes),
    )
    return {str(r["node_id"]): _report(r) for r in rows}


async def rejections_of(db: Reader, nodes: Sequence[str]) -> dict[str, Rejection]:
    """node id text -> its highest-sequence rejection, for those of `nodes` that have one."""
    rows = await db.fetchall(
        "SELECT r.* FROM rejections r JOIN"  # noqa: S608
        " (SELECT node_id, max(sequence) AS sequence FROM rejections"
        f" WHERE node_id IN ({_marks(nodes)}) GROUP BY node_id) m USING (node_id, sequence)",
        list(nodes),
    )
    return {str(r["node_id"]): _rejection(r) for r in rows}
