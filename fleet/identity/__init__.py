"""Layer 1: Ed25519 identities. A node id is the public key; an Identity holds the secret."""

from fleet.identity.errors import KeyFileError
from fleet.identity.keyfile import decode_key, encode_key, load_identity, write_new_key
from fleet.identity.keys import Identity
from fleet.identity.labels import InvalidLabel, check_label, normalize_tag, normalize_tags
from fleet.identity.nodeid import BadSignature, InvalidNodeId, NodeId

__all__ = [
    "BadSignature",
    "Identity",
    "InvalidLabel",
    "InvalidNodeId",
    "KeyFileError",
    "NodeId",
    "check_label",
    "decode_key",
    "encode_key",
    "load_identity",
    "normalize_tag",
    "normalize_tags",
    "write_new_key",
]
