"""A node's secret identity: an Ed25519 signing key and the node id derived from it."""

from __future__ import annotations

from nacl.signing import SigningKey

from fleet.identity.nodeid import NodeId


class Identity:
    """Holds the private key; signs. Its repr never shows the secret."""

    __slots__ = ("_node_id", "_signing_key")

    def __init__(self, signing_key: SigningKey) -> None:
        self._signing_key = signing_key
        self._node_id = NodeId(bytes(signing_key.verify_key))

    @classmethod
    def generate(cls) -> Identity:
        return cls(SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return cls(SigningKey(seed))

    @property
    def node_id(self) -> NodeId:
        return self._node_id

    @property
    def seed(self) -> bytes:
        """The 32-byte private seed. Handle with care: for key files and TLS keys only."""
        return bytes(self._signing_key)

    def sign(self, message: bytes) -> bytes:
        """Raw Ed25519 signature. Callers must prefix a domain-separation tag (see fleet.wire)."""
        return self._signing_key.sign(message).signature

    def __repr__(self) -> str:
        return f"Identity({self._node_id.short()})"
