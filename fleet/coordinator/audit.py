"""The audit log: every administrative action, accepted or refused, as a hash chain.

Each row stores the hash of the row before it and its own hash over its content and that
previous hash, so editing, removing or reordering any row breaks every hash after it. The
content is hashed in fleet's canonical wire encoding (one encoding per record), so a verifier
written later (`fleetctl audit verify`, issue 5) recomputes exactly the same bytes. Rows are
appended inside the caller's transaction: the action and its audit row commit together.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fleet.coordinator.database import Row, Transaction
from fleet.wire import Message, encode

GENESIS = bytes(32)  # prev_hash of the first row


class Outcome:
    ACCEPTED = "accepted"
    REFUSED = "refused"


class AuditRecord(Message, type="fleet.audit.record", version=1):
    """What one audit row's hash covers."""

    id: int
    time: float
    actor: str
    action: str
    outcome: str
    detail: str
    request: bytes
    prev_hash: bytes


def record_hash(record: AuditRecord) -> bytes:
    return hashlib.sha256(encode(record)).digest()


@dataclass(frozen=True)
class AuditEntry:
    id: int
    time: float
    actor: str
    action: str
    outcome: str
    detail: str  # JSON object, exactly as hashed
    request: bytes
    prev_hash: bytes
    hash: bytes

    def details(self) -> dict[str, Any]:
        value = json.loads(self.detail)
        return value if isinstance(value, dict) else {}


class AuditChainError(Exception):
    """The stored audit rows do not form an intact chain (the message names the first bad row)."""


def encode_detail(detail: Mapping[str, Any]) -> str:
    return json.dumps(dict(detail), sort_keys=True, separators=(",", ":"))


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
    next_id = 1 if last is None else int(last["id"]) + 1
    prev_hash = GENESIS if last is None else bytes(last["hash"])
    detail_text = encode_detail(detail)
    record = AuditRecord(
        id=next_id,
        time=time,
        actor=actor,
        action=action,
        outcome=outcome,
        detail=detail_text,
        request=request,
        prev_hash=prev_hash,
    )
    digest = record_hash(record)
    await tx.execute(
        "INSERT INTO audit (id, time, actor, action, outcome, detail, request, prev_hash, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (next_id, time, actor, action, outcome, detail_text, request, prev_hash, digest),
    )
    return AuditEntry(
        next_id, time, actor, action, outcome, detail_text, request, prev_hash, digest
    )


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
        record = AuditRecord(
            id=entry.id,
            time=entry.time,
            actor=entry.actor,
            action=entry.action,
            outcome=entry.outcome,
            detail=entry.detail,
            request=entry.request,
            prev_hash=entry.prev_hash,
        )
        if record_hash(record) != entry.hash:
            raise AuditChainError(f"audit row {entry.id}: content does not match its hash")
        prev = entry.hash
    return count
