"""Audit witnesses on the coordinator's side: hand agents the newest signed checkpoint and keep
what they report back, for `fleetctl audit verify` to check the log against.

The coordinator cannot vouch for itself: whoever controls its database can rewrite the log and
sign a fresh checkpoint over the forged head. Agents keep the last checkpoint they received
(fleet.agent.witness) and report it on every connection, so a checkpoint signed before the
rewrite comes back and no longer matches. What is kept is bounded by what agents may send:
per device, the newest checkpoint that matches the log, plus up to MAX_CONFLICTS that do not.
"""

from __future__ import annotations

from fleet.audit import BadCheckpoint, open_checkpoint
from fleet.coordinator.announcements import Reader
from fleet.coordinator.database import Transaction
from fleet.identity import InvalidNodeId, NodeId
from fleet.log import get_logger
from fleet.protocol.messages import Witness
from fleet.wire import SignedEnvelope, WireError, decode, encode

log = get_logger(__name__)

MAX_CONFLICTS = 16  # checkpoints per device that do not match the log
MAX_LISTED = 1024  # distinct checkpoints in one AuditWitnessesReply, conflicting ones first


async def latest_checkpoint(db: Reader) -> SignedEnvelope | None:
    row = await db.fetchone("SELECT envelope FROM audit_checkpoints ORDER BY sequence DESC LIMIT 1")
    if row is None:
        return None
    try:
        return decode(bytes(row["envelope"]), SignedEnvelope)
    except WireError:
        return None


async def record(
    tx: Transaction, node: NodeId, envelope: SignedEnvelope, coordinator: NodeId, now: float
) -> bool | None:
    """Keep a checkpoint `node` reported; True if it matches the log, False if it does not,
    None if it is not this coordinator's signature (then it proves nothing and is dropped)."""
    try:
        checkpoint = open_checkpoint(envelope, coordinator)
    except BadCheckpoint as exc:
        log.warning("audit_witness_ignored", device=node.short(), reason=str(exc))
        return None
    await tx.execute(
        "INSERT INTO audit_witnesses (node_id, sequence, head, envelope, reported_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (node_id, sequence, head)"
        " DO UPDATE SET envelope = excluded.envelope, reported_at = excluded.reported_at",
        (str(node), checkpoint.sequence, checkpoint.head, encode(envelope), now),
    )
    found = await tx.fetchone(
        "SELECT 1 FROM audit WHERE id = ? AND hash = ?", (checkpoint.sequence, checkpoint.head)
    )
    if found is not None:
        # Older checkpoints of this device that still match the log say nothing more.
        await tx.execute(
            "DELETE FROM audit_witnesses WHERE node_id = ? AND sequence < ? AND EXISTS"
            " (SELECT 1 FROM audit a WHERE a.id = audit_witnesses.sequence"
            "  AND a.hash = audit_witnesses.head)",
            (str(node), checkpoint.sequence),
        )
        return True
    log.error(
        "audit_witness_conflict",
        device=node.short(),
        sequence=checkpoint.sequence,
        head=checkpoint.head.hex()[:16],
        detail="a device holds a checkpoint this coordinator signed that its log does not match",
    )
    await tx.execute(
        "DELETE FROM audit_witnesses WHERE node_id = ? AND (sequence, head) IN"
        " (SELECT w.sequence, w.head FROM audit_witnesses w WHERE w.node_id = ? AND NOT EXISTS"
        "  (SELECT 1 FROM audit a WHERE a.id = w.sequence AND a.hash = w.head)"
        "  ORDER BY w.reported_at DESC LIMIT -1 OFFSET ?)",
        (str(node), str(node), MAX_CONFLICTS),
    )
    return False


async def listed(db: Reader) -> list[Witness]:
    """Distinct reported checkpoints: those not matching the log first, then newest first."""
    rows = await db.fetchall(
        "SELECT w.envelope AS envelope, count(*) AS devices, max(w.reported_at) AS reported_at,"
        " w.node_id AS node_id, max(w.sequence) AS sequence,"
        " max(NOT EXISTS (SELECT 1 FROM audit a WHERE a.id = w.sequence AND a.hash = w.head))"
        " AS conflict"
        " FROM audit_witnesses w GROUP BY w.envelope"
        " ORDER BY conflict DESC, sequence DESC LIMIT ?",
        (MAX_LISTED,),
    )
    out = []
    for row in rows:
        try:
            envelope = decode(bytes(row["envelope"]), SignedEnvelope)
            device = NodeId.parse(str(row["node_id"]))
        except (WireError, InvalidNodeId):
            continue
        out.append(
            Witness(
                checkpoint=envelope,
                device=device,
                devices=int(row["devices"]),
                reported_at=float(row["reported_at"]),
            )
        )
    return out
