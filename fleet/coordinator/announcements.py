"""Stored announcements: admin-signed envelopes kept verbatim, with the devices they target.

A push is stored with every device it resolved to and, for each explicit id, its target
proof; what a device is sent (`StoredAnnouncement.deliver_to`) depends on what its agent
reads: Deliver v2 (the Announcement v3 and its proof) for Hello v4, else Deliver v1 with
the push's Announcement v2 when it has one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fleet.coordinator.database import Row, Transaction
from fleet.identity import NodeId
from fleet.protocol.messages import (
    AnnouncementV2,
    AnyAnnouncement,
    Deliver,
    DeliverV1,
    DesiredSystem,
    PushRecord,
    TargetProof,
)
from fleet.protocol.targeting import read_announcement
from fleet.vocabulary import Action
from fleet.wire import Message, SignedEnvelope, decode, encode


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
    # The targeted devices loaded with it (by latest_for: only the device asked about).
    devices: tuple[NodeId, ...]
    proofs: Mapping[NodeId, TargetProof]  # of the explicit ids among `devices`
    legacy: SignedEnvelope | None  # the same push as an Announcement v2, for old agents
    lists_devices: bool  # `envelope` is itself an Announcement v2 (fleetctl before v3)

    def deliver_to(self, node: NodeId, reads_targets: bool) -> Message | None:
        """What `node` is sent: Deliver v2 if its agent reads it (`reads_targets`, Hello v4),
        else Deliver v1 with an Announcement v2; None when there is none for an old agent."""
        if self.lists_devices:
            return DeliverV1(announcement=self.envelope)
        if reads_targets:
            return Deliver(announcement=self.envelope, proof=self.proofs.get(node))
        return DeliverV1(announcement=self.legacy) if self.legacy is not None else None

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
    announcement: AnyAnnouncement,
    received_at: float,
    *,
    devices: Sequence[NodeId],
    targets: Sequence[str],
    proofs: Mapping[NodeId, TargetProof],
    legacy: SignedEnvelope | None,
) -> StoredAnnouncement:
    """Store a push: `devices` every device it resolved to, `proofs` those of its explicit
    ids, `targets` what the admin typed, `legacy` its Announcement v2 (if any)."""
    await tx.execute(
        "INSERT INTO announcements (sequence, signer, envelope, store_path, action, issued_at,"
        " valid_until, targets, received_at, legacy) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            announcement.sequence,
            str(signer),
            encode(envelope),
            announcement.store_path,
            announcement.action.value,
            announcement.issued_at,
            announcement.valid_until,
            json.dumps(list(targets)),
            received_at,
            encode(legacy) if legacy is not None else None,
        ),
    )
    devices = tuple(dict.fromkeys(devices))
    await tx.executemany(
        "INSERT INTO announcement_devices (node_id, sequence, proof) VALUES (?, ?, ?)",
        [(str(d), announcement.sequence, _proof_blob(proofs.get(d))) for d in devices],
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
        proofs=proofs,
        legacy=legacy,
        lists_devices=isinstance(announcement, AnnouncementV2),
    )


def _proof_blob(proof: TargetProof | None) -> bytes | None:
    return encode(proof) if proof is not None else None


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
    """The highest-sequence announcement that targets `node` (expired or not), loaded with
    this one device and its proof (not the whole target list: a reconnect costs O(1))."""
    row = await db.fetchone(
        "SELECT a.*, d.proof AS proof FROM announcement_devices d JOIN announcements a"
        " USING (sequence) WHERE d.node_id = ? ORDER BY d.sequence DESC LIMIT 1",
        (str(node),),
    )
    if row is None:
        return None
    proofs = {node: decode(bytes(row["proof"]), TargetProof)} if row["proof"] is not None else {}
    return _of_row(row, (node,), proofs)


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


def _of_row(
    row: Row, devices: tuple[NodeId, ...], proofs: Mapping[NodeId, TargetProof]
) -> StoredAnnouncement:
    envelope = decode(bytes(row["envelope"]), SignedEnvelope)
    legacy = row["legacy"]
    return StoredAnnouncement(
        sequence=int(row["sequence"]),
        signer=NodeId.parse(row["signer"]),
        envelope=envelope,
        store_path=str(row["store_path"]),
        action=Action(row["action"]),
        issued_at=float(row["issued_at"]),
        valid_until=float(row["valid_until"]),
        devices=devices,
        proofs=proofs,
        legacy=decode(bytes(legacy), SignedEnvelope) if legacy is not None else None,
        lists_devices=isinstance(read_announcement(envelope.payload), AnnouncementV2),
    )
