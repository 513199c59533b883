"""The hash chain that links audit entries (fleet.protocol.messages.AuditEntry).

Each entry stores the hash of the entry before it and its own hash over its content and that
previous hash, so editing, removing or reordering any entry breaks every hash after it. The
content is hashed in fleet's canonical wire encoding (one encoding per record), so any
verifier (the coordinator's, `fleetctl audit verify`, an offline one) recomputes exactly the
same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from fleet.protocol.messages import AuditEntry as AuditEntry  # the one shape of an entry
from fleet.wire import Message, encode

GENESIS = bytes(32)  # prev_hash of the first entry
HASH_LEN = 32


class Outcome:
    ACCEPTED = "accepted"
    REFUSED = "refused"


class _Hashed(Message, type="fleet.audit.record", version=1):
    """What an entry's hash covers: the entry without its hash, in this one encoding."""

    id: int
    time: float
    actor: str
    action: str
    outcome: str
    detail: str
    request: bytes
    prev_hash: bytes


def entry_hash(entry: AuditEntry) -> bytes:
    """The hash an entry must carry: over its content and the previous entry's hash."""
    content = {f.name: getattr(entry, f.name) for f in dataclasses.fields(_Hashed)}
    return hashlib.sha256(encode(_Hashed(**content))).digest()


def encode_detail(detail: Mapping[str, Any]) -> str:
    return json.dumps(dict(detail), sort_keys=True, separators=(",", ":"))


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
    unhashed = AuditEntry(
        id=id,
        time=time,
        actor=actor,
        action=action,
        outcome=outcome,
        detail=encode_detail(detail),
        request=request,
        prev_hash=prev_hash,
        hash=b"",
    )
    return dataclasses.replace(unhashed, hash=entry_hash(unhashed))
