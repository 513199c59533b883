"""The audit log: every administrative action, accepted or refused, as a hash chain.

Each row stores the hash of the row before it and its own hash over its content and that
previous hash, so editing, removing or reordering any row breaks every hash after it. The
content is hashed in fleet's canonical wire encoding (fleet.audit.record), so every verifier
(fleet.audit.verifier, offline ones included) recomputes exactly the same bytes. Rows are
appended inside the caller's transaction: the action and its audit row commit together.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fleet.audit.record import (
    GENESIS,
    AuditEntry,
    AuditRecord,
    Outcome,
    encode_detail,
    make_entry,
    record_hash,
)
from fleet.coordinator.database import Row, Transaction

__all__ = [
    "GENESIS",
    "SIZES",
    "AuditChainError",
    "AuditEntry",
    "AuditRecord",
    "Outcome",
    "append",
    "encode_detail",
    "entry_of_row",
    "record_hash",
    "verify_chain",
]


# Each entry's id and stored size in bytes (what paging by size needs, without the content).
SIZES = (
    "SELECT id, length(request) + length(CAST(detail AS BLOB)) + length(CAST(actor AS BLOB))"
    " + length(CAST(action AS BLOB)) + length(CAST(outcome AS BLOB)) AS size"
    " FROM audit WHERE id > ? ORDER BY id LIMIT ?"
)


class AuditChainError(Exception):
    """The stored audit rows do not form an intact chain (the message names the first bad row)."""


async def append(
    tx: Transaction,
    *,
    time: float,
    actor: str,
    action: str,
    outcome: str,
    detail: Mapping[str, Any],
    request: bytes,
) -> AuditEntry:
    """Append one row after the current last row, within the caller's transaction."""
    last = await tx.fetchone("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1")
    entry = make_entry(
        id=1 if last is None else int(last["id"]) + 1,
        time=time,
        actor=actor,
        action=action,
        outcome=outcome,
        detail=detail,
        request=request,
        prev_hash=GENESIS if last is None else bytes(last["hash"]),
    )
    await tx.execute(
        "INSERT INTO audit (id, time, actor, action, outcome, detail, request, prev_hash, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            entry.id,
            entry.time,
            entry.actor,
            entry.action,
            entry.outcome,
            entry.detail,
            entry.request,
            entry.prev_hash,
            entry.hash,
        ),
    )
    return entry


def entry_of_row(row: Row) -> AuditEntry:
    return AuditEntry(
        id=int(row["id"]),
        time=float(row["time"]),
        actor=str(row["actor"]),
        action=str(row["action"]),
        outcome=str(row["outcome"]),
        detail=str(row["detail"]),
        request=bytes(row["request"]),
        prev_hash=bytes(row["prev_hash"]),
        hash=bytes(row["hash"]),
    )


def verify_chain(entries: Iterable[AuditEntry]) -> int:
    """Check ids, links and hashes from the first row on; return the number of rows."""
    prev = GENESIS
    count = 0
    for count, entry in enumerate(entries, start=1):
        if entry.id != count:
            raise AuditChainError(f"audit row {entry.id}: expected row {count} (gap or reorder)")
        if entry.prev_hash != prev:
            raise AuditChainError(f"audit row {entry.id}: does not link to row {entry.id - 1}")
        if entry.computed_hash() != entry.hash:
            raise AuditChainError(f"audit row {entry.id}: content does not match its hash")
        prev = entry.hash
    return count
