"""Domain-separation tags: every signature in fleet covers one of these plus the message.

All tags live here so that no two kinds of signed data can ever share one, and a signature
made for one purpose (say, a relay login) can never be replayed as another (an announcement).
The signed bytes are `b"fleet-sig\\x00" + len(tag) + tag + payload`.
"""

from __future__ import annotations

from enum import Enum

from fleet.identity import Identity, NodeId

_PREFIX = b"fleet-sig\x00"


class Tag(Enum):
    """Purposes of signatures. Values are part of the protocol: never reuse or renumber."""

    RELAY_AUTH = b"fleet/relay-auth/v1"
    DISCO = b"fleet/disco/v1"
    ENVELOPE = b"fleet/envelope/v1"
    ANNOUNCEMENT = b"fleet/announcement/v1"
    ADMIN_REQUEST = b"fleet/admin-request/v1"
    CAPABILITY = b"fleet/capability/v1"
    REVOCATION = b"fleet/revocation/v1"
    AUDIT_CHECKPOINT = b"fleet/audit-checkpoint/v1"
    ENROLL_TOKEN = b"fleet/enroll-token/v1"


def signed_bytes(tag: Tag, payload: bytes) -> bytes:
    """The exact bytes a signature with `tag` covers."""
    value = tag.value
    return _PREFIX + bytes([len(value)]) + value + payload


def sign(identity: Identity, tag: Tag, payload: bytes) -> bytes:
    return identity.sign(signed_bytes(tag, payload))


def verify(node_id: NodeId, tag: Tag, payload: bytes, signature: bytes) -> None:
    """Raise fleet.identity.BadSignature unless `signature` is node_id's over (tag, payload)."""
    node_id.verify(signed_bytes(tag, payload), signature)
