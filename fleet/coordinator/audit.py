"""The audit log: every administrative action, accepted or refused, as a hash chain.

Each row stores the hash of the row before it and its own hash over its content and that
previous hash, so editing, removing or reordering any row breaks every hash after it. The
content is hashed in fleet's canonical wire encoding (fleet.audit.record), so every verifier
(fleet.audit.verifier, offline ones included) recomputes exactly the same bytes. Rows are
appended inside the caller's transaction: the action and its audit row commit together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from fleet.audit.record import (
    GENESIS,
    AuditEntry,
    Outcome,
    encode_detail,
    make_entry,
)
from fleet.audit.verifier import walk_chain
from fleet.coordinator.announcements import Reader
from fleet.coordinator.database import Row, Transaction

__all__ = [
    "GENESIS",
    "SIZES",
    "AuditEntry",
    "Outcome",
    "any_after",
    "append",
    "encode_detail",
    "entries_between",
    "entry_of_row",
    "head",
    "sizes",
    "verify_chain",
]


# Each entry's id and stored size in bytes (what paging by size needs, without the content).
SIZES = (
    "SELECT id, length(request) + length(CAST(detail AS BLOB)) + length(CAST(actor AS BLOB))"
    " + length(CAST(action AS BLOB)) + length(CAST(outcome AS BLOB)) AS size"
    " FROM audit WHERE id > ? ORDER BY id LIMIT ?"
)


async def head(db: Reader) -> tuple[int, bytes] | None:
    """The last entry's id and hash (None: the log is empty)."""
    row = await db.fetchone("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1")
    return None if row is None else (int(row["id"]), bytes(row["hash"]))


async def sizes(db: Reader, after: int, limit: int) -> list[tuple[int, int]]:
    """(id, stored size) of up to `limit` entries after `after`, in order."""
    return [(int(r["id"]), int(r["size"])) for r in await db.fetchall(SIZES, (after, limit))]


async def entries_between(db: Reader, low: int, high: int) -> list[AuditEntry]:
    """The entries with low < id <= high, in order."""
    rows = await db.fetchall(
        "SELECT * FROM audit WHERE id > ? AND id <= ? ORDER BY id", (low, high)
    )
    return [entry_of_row(r) for r in rows]


async def any_after(db: Reader, after: int) -> bool:
    return (await db.fetchone("SELECT 1 FROM audit WHERE id > ? LIMIT 1", (after,))) is not None


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
        dataclasses.astuple(entry),  # the columns in the entry's field order
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
    """Check ids, links and hashes from the first row on (fleet.audit.walk_chain, which
    raises AuditVerifyError naming the first bad row); return the number of rows."""
    return sum(1 for _ in walk_chain(entries))
