"""Layer 1: Ed25519 identities. A node id is the public key; an Identity holds the secret."""

from fleet.identity.errors import KeyFileError
from fleet.identity.keyfile import decode_key, encode_key, load_identity, write_new_key
from fleet.identity.keys import Identity
from fleet.identity.nodeid import BadSignature, InvalidNodeId, NodeId

__all__ = [
    "BadSignature",
    "Identity",
    "InvalidNodeId",
    "KeyFileError",
    "NodeId",
    "decode_key",
    "encode_key",
    "load_identity",
    "write_new_key",
]
