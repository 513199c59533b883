"""Audit entries and the hash chain that links them.

Each entry stores the hash of the entry before it and its own hash over its content and that
previous hash, so editing, removing or reordering any entry breaks every hash after it. The
content is hashed in fleet's canonical wire encoding (one encoding per record), so any
verifier (the coordinator's, `fleetctl audit verify`, an offline one) recomputes exactly the
same bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleet.wire import Message, encode

GENESIS = bytes(32)  # prev_hash of the first entry
HASH_LEN = 32


class Outcome:
    ACCEPTED = "accepted"
    REFUSED = "refused"


class AuditRecord(Message, type="fleet.audit.record", version=1):
    """What one audit entry's hash covers."""

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


def encode_detail(detail: Mapping[str, Any]) -> str:
    return json.dumps(dict(detail), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class AuditEntry:
    id: int
    time: float
    actor: str  # node id (text) of the authenticated connection
    action: str
    outcome: str
    detail: str  # JSON object, exactly as hashed
    request: bytes  # the actor's signed request, verbatim
    prev_hash: bytes
    hash: bytes

    def details(self) -> dict[str, Any]:
        try:
            value = json.loads(self.detail)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def record(self) -> AuditRecord:
        return AuditRecord(
            id=self.id,
            time=self.time,
            actor=self.actor,
            action=self.action,
            outcome=self.outcome,
            detail=self.detail,
            request=self.request,
            prev_hash=self.prev_hash,
        )

    def computed_hash(self) -> bytes:
        return record_hash(self.record())


def make_entry(
    *,
    id: int,
    time: float,
    actor: str,
    action: str,
    outcome: str,
    detail: Mapping[str, Any],
    request: bytes,
    prev_hash: bytes,
) -> AuditEntry:
    """The next entry of a chain whose last hash is `prev_hash`."""
    text = encode_detail(detail)
    record = AuditRecord(
        id=id,
        time=time,
        actor=actor,
        action=action,
        outcome=outcome,
        detail=text,
        request=request,
        prev_hash=prev_hash,
    )
    digest = record_hash(record)
    return AuditEntry(id, time, actor, action, outcome, text, request, prev_hash, digest)
