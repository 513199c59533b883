"""Stored announcements: admin-signed envelopes kept verbatim, with the devices they target."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fleet.coordinator.database import Row, Transaction
from fleet.identity import NodeId
from fleet.protocol.messages import Announcement, DesiredSystem, PushRecord
from fleet.vocabulary import Action
from fleet.wire import SignedEnvelope, decode, encode


class Reader(Protocol):
    """Database or Transaction: anything that can run a query."""

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...


@dataclass(frozen=True)
class StoredAnnouncement:
    sequence: int
    signer: NodeId
    envelope: SignedEnvelope  # exactly as the admin signed it
    store_path: str
    action: Action
    issued_at: float
    valid_until: float
    devices: tuple[NodeId, ...]

    def expired(self, now: float) -> bool:
        return self.valid_until <= now

    def desired(self) -> DesiredSystem:
        return DesiredSystem(store_path=self.store_path, sequence=self.sequence, action=self.action)


async def max_sequence(db: Reader) -> int:
    row = await db.fetchone("SELECT max(sequence) AS s FROM announcements")
    return int(row["s"]) if row is not None and row["s"] is not None else 0


async def insert(
    tx: Transaction,
    signer: NodeId,
    envelope: SignedEnvelope,
    announcement: Announcement,
    received_at: float,
) -> StoredAnnouncement:
    await tx.execute(
        "INSERT INTO announcements (sequence, signer, envelope, store_path, action, issued_at,"
        " valid_until, targets, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            announcement.sequence,
            str(signer),
            encode(envelope),
            announcement.store_path,
            announcement.action.value,
            announcement.issued_at,
            announcement.valid_until,
            json.dumps(list(announcement.targets)),
            received_at,
        ),
    )
    devices = tuple(dict.fromkeys(announcement.devices))
    await tx.executemany(
        "INSERT INTO announcement_devices (node_id, sequence) VALUES (?, ?)",
        [(str(d), announcement.sequence) for d in devices],
    )
    return StoredAnnouncement(
        sequence=announcement.sequence,
        signer=signer,
        envelope=envelope,
        store_path=announcement.store_path,
        action=announcement.action,
        issued_at=announcement.issued_at,
        valid_until=announcement.valid_until,
        devices=devices,
    )


async def accepted(db: Reader, sequence: int) -> PushRecord | None:
    """The push of `sequence` as it was accepted, or None if none was."""
    row = await db.fetchone(
        "SELECT a.*, (SELECT count(*) FROM announcement_devices d"
        " WHERE d.sequence = a.sequence) AS devices FROM announcements a WHERE sequence = ?",
        (sequence,),
    )
    if row is None:
        return None
    return PushRecord(
        signer=NodeId.parse(row["signer"]),
        store_path=str(row["store_path"]),
        action=Action(row["action"]),
        targets=tuple(json.loads(row["targets"])),
        devices=int(row["devices"]),
        issued_at=float(row["issued_at"]),
        valid_until=float(row["valid_until"]),
        accepted_at=float(row["received_at"]),
    )


async def latest_for(db: Reader, node: NodeId) -> StoredAnnouncement | None:
    """The highest-sequence announcement that targets `node` (expired or not)."""
    row = await db.fetchone(
        "SELECT a.* FROM announcement_devices d JOIN announcements a USING (sequence)"
        " WHERE d.node_id = ? ORDER BY d.sequence DESC LIMIT 1",
        (str(node),),
    )
    if row is None:
        return None
    targets = await db.fetchall(
        "SELECT node_id FROM announcement_devices WHERE sequence = ?", (row["sequence"],)
    )
    return _of_row(row, tuple(NodeId.parse(t["node_id"]) for t in targets))


async def latest_desired(db: Reader) -> dict[str, DesiredSystem]:
    """node id text -> desired system from its latest announcement, for every targeted device."""
    rows = await db.fetchall(
        "SELECT d.node_id, a.sequence, a.store_path, a.action FROM"
        " (SELECT node_id, max(sequence) AS sequence FROM announcement_devices GROUP BY node_id)"
        " d JOIN announcements a USING (sequence)"
    )
    return {
        str(r["node_id"]): DesiredSystem(
            store_path=str(r["store_path"]), sequence=int(r["sequence"]), action=Action(r["action"])
        )
        for r in rows
    }


async def desired_of(db: Reader, nodes: Sequence[str]) -> dict[str, DesiredSystem]:
    """latest_desired for `nodes` (node id texts, at most a page) only."""
    marks = ",".join("?" * len(nodes))  # only "?"s: values stay parameters
    rows = await db.fetchall(
        "SELECT d.node_id, a.sequence, a.store_path, a.action FROM"  # noqa: S608
        " (SELECT node_id, max(sequence) AS sequence FROM announcement_devices"
        f" WHERE node_id IN ({marks}) GROUP BY node_id) d JOIN announcements a USING (sequence)",
        list(nodes),
    )
    return {
        str(r["node_id"]): DesiredSystem(
            store_path=str(r["store_path"]), sequence=int(r["sequence"]), action=Action(r["action"])
        )
        for r in rows
    }


def _of_row(row: Row, devices: tuple[NodeId, ...]) -> StoredAnnouncement:
    return StoredAnnouncement(
        sequence=int(row["sequence"]),
        signer=NodeId.parse(row["signer"]),
        envelope=decode(bytes(row["envelope"]), SignedEnvelope),
        store_path=str(row["store_path"]),
        action=Action(row["action"]),
        issued_at=float(row["issued_at"]),
        valid_until=float(row["valid_until"]),
        devices=devices,
    )
