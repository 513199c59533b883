"""Node ids: the 32-byte Ed25519 public key, written as lowercase unpadded base32.

One canonical text form, parsed strictly, so that an id copied between configs, logs and
the CLI always means exactly one key.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

NODE_ID_LEN = 32
NODE_ID_TEXT_LEN = 52  # ceil(32 * 8 / 5)
_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")


class InvalidNodeId(ValueError):
    """Text or bytes that are not a valid node id."""


class BadSignature(Exception):
    """A signature that does not verify under the claimed node id."""


@dataclass(frozen=True, slots=True)
class NodeId:
    """An Ed25519 public key identifying a node (agent, coordinator, relay, admin)."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != NODE_ID_LEN:
            raise InvalidNodeId(f"a node id is {NODE_ID_LEN} bytes")

    @classmethod
    def parse(cls, text: str) -> NodeId:
        """Parse the canonical text form; anything else is an InvalidNodeId naming the fault."""
        if not isinstance(text, str):
            raise InvalidNodeId("a node id must be text")
        if len(text) != NODE_ID_TEXT_LEN:
            raise InvalidNodeId(
                f"a node id is {NODE_ID_TEXT_LEN} characters of lowercase base32, "
                f"got {len(text)} characters"
            )
        bad = sorted(set(text) - _ALPHABET)
        if bad:
            raise InvalidNodeId(
                f"a node id uses only a-z and 2-7 (lowercase base32); found {''.join(bad)!r}"
            )
        try:
            raw = base64.b32decode(text.upper() + "====")
        except binascii.Error as exc:  # pragma: no cover - alphabet checked above
            raise InvalidNodeId(f"not base32: {exc}") from exc
        node_id = cls(raw)
        if str(node_id) != text:
            # Non-zero padding bits: a second spelling of the same key is not accepted.
            raise InvalidNodeId("a node id's last character has unused bits set")
        return node_id

    def __str__(self) -> str:
        return base64.b32encode(self.raw).decode("ascii").rstrip("=").lower()

    def __repr__(self) -> str:
        return f"NodeId({self.short()})"

    def short(self) -> str:
        """The first 10 characters: for logs and tables, never for authentication."""
        return str(self)[:10]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NodeId):
            return NotImplemented
        return hmac.compare_digest(self.raw, other.raw)

    def __hash__(self) -> int:
        return hash(self.raw)

    def verify(self, message: bytes, signature: bytes) -> None:
        """Check an Ed25519 signature by this node over `message`; raise BadSignature if not."""
        try:
            VerifyKey(self.raw).verify(message, signature)
        except (BadSignatureError, ValueError, TypeError) as exc:
            raise BadSignature(f"signature does not verify for node {self.short()}") from exc
