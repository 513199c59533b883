"""Node ids: the 32-byte Ed25519 public key, written as lowercase unpadded base32.

One canonical text form, parsed strictly, so that an id copied between configs, logs and
the CLI always means exactly one key.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

NODE_ID_LEN = 32
NODE_ID_TEXT_LEN = 52  # ceil(32 * 8 / 5)
_DIGITS = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 base32, lowercase
_ALPHABET = frozenset(_DIGITS)
# The codec works on the id as one 260-bit number (256 bits and 4 zero bits of padding):
# the stdlib's base32 is a byte-by-byte Python loop, ~20x slower, and ids are encoded and
# parsed for every row of a status or registry read (10,000 rows at fleet scale).
# Parsing maps each digit to its value's digit in int()'s base 32 (0-9a-v), both in C.
_TO_INT_DIGITS = str.maketrans(_DIGITS, "0123456789abcdefghijklmnopqrstuv")
_PAIRS = [a + b for a in _DIGITS for b in _DIGITS]  # 10 bits -> two digits
_PAD_BITS = NODE_ID_TEXT_LEN * 5 - NODE_ID_LEN * 8


def _encode(raw: bytes) -> str:
    number = int.from_bytes(raw, "big") << _PAD_BITS
    return "".join(_PAIRS[(number >> shift) & 0x3FF] for shift in range(250, -1, -10))


class InvalidNodeId(ValueError):
    """Text or bytes that are not a valid node id."""


class BadSignature(Exception):
    """A signature that does not verify under the claimed node id."""


@dataclass(frozen=True, slots=True)
class NodeId:
    """An Ed25519 public key identifying a node (agent, coordinator, relay, admin)."""

    raw: bytes
    # The text form, once computed (or parsed): ids are printed and looked up by text often.
    _text: str | None = field(default=None, init=False, compare=False, repr=False)

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
        number = int(text.translate(_TO_INT_DIGITS), 32)
        if number & ((1 << _PAD_BITS) - 1):
            # Non-zero padding bits: a second spelling of the same key is not accepted.
            raise InvalidNodeId("a node id's last character has unused bits set")
        node_id = cls((number >> _PAD_BITS).to_bytes(NODE_ID_LEN, "big"))
        object.__setattr__(node_id, "_text", text)
        return node_id

    def __str__(self) -> str:
        text = self._text
        if text is None:
            text = _encode(self.raw)
            object.__setattr__(self, "_text", text)
        return text

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
