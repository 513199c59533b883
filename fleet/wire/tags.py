"""Domain-separation tags: every signature in fleet covers one of these plus the message,
and every hash that a signature covers indirectly (a Merkle tree's leaves and nodes) one of
the HashTags.

All tags live here so that no two kinds of signed data can ever share one, and a signature
made for one purpose (say, a relay login) can never be replayed as another (an announcement).
The signed bytes are `b"fleet-sig\\x00" + len(tag) + tag + payload`; a tagged hash is
SHA-256 over `b"fleet-hash\\x00" + len(tag) + tag + data`.
"""

from __future__ import annotations

import hashlib
from enum import Enum

from fleet.identity import Identity, NodeId

_PREFIX = b"fleet-sig\x00"
_HASH_PREFIX = b"fleet-hash\x00"


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


class HashTag(Enum):
    """Purposes of tagged hashes. Values are part of the protocol: never reuse or renumber."""

    TARGET_LEAF = b"fleet/target-leaf/v1"  # a device id in an announcement's target tree
    TARGET_NODE = b"fleet/target-node/v1"  # an inner node of that tree


_HASHERS = {
    tag: hashlib.sha256(_HASH_PREFIX + bytes([len(tag.value)]) + tag.value) for tag in HashTag
}  # the tag's prefix hashed once; each tagged_hash continues a copy


def tagged_hash(tag: HashTag, *parts: bytes) -> bytes:
    """SHA-256 of `parts` for the purpose `tag` (a leaf can never pass for a node)."""
    digest = _HASHERS[tag].copy()
    for part in parts:
        digest.update(part)
    return digest.digest()
