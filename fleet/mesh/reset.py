"""QUIC stateless reset (RFC 9000 10.3) with tokens that survive a restart (sans-IO).

When a coordinator is killed and restarted, its agents' connections are gone on its side
but not on theirs: their packets for the old connection were dropped silently, so they
noticed only at the 30 s QUIC idle timeout. Now the token each connection id advertises is
derived from the node's key (HMAC of the connection id under a key derived from the node's
seed with its own label), so the restarted process can answer a packet for a connection it
does not have with a stateless reset the peer recognises, and the peer ends the connection
at once (and redials).

aioquic issues tokens but neither derives them nor recognises a reset it receives;
fleet.mesh.tls_hooks makes its tokens ours, the Endpoint checks unknown packets from a peer
against that peer's tokens (constant time). A reset is always shorter than the packet that
triggered it (no amplification, no reset loops between two endpoints that both lost state)
and resets are rate limited (a token bucket), since anyone can send us such packets.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable

from fleet.identity import Identity

TOKEN_LEN = 16
MIN_RESET_LEN = 21  # RFC 9000 10.3: what a short header packet with a 1-byte payload needs
_LABEL = b"fleet/mesh/stateless-reset/v1"


def reset_key(identity: Identity) -> bytes:
    """The node's reset key: fixed for its key, useless for anything else (own label)."""
    return hmac.new(identity.seed, _LABEL, hashlib.sha256).digest()


def is_stateless_reset(data: bytes, tokens: Iterable[bytes]) -> bool:
    """Whether `data` ends with one of `tokens` (a peer's reset for one of our connections)."""
    if len(data) < MIN_RESET_LEN or data[0] & 0xC0 != 0x40:
        return False
    tail = data[-TOKEN_LEN:]
    found = False
    for token in tokens:
        found |= bool(token) and hmac.compare_digest(tail, token)
    return found


class StatelessResets:
    """Our tokens, and which packets for unknown connections get a reset."""

    def __init__(
        self, key: bytes, *, cid_length: int, rate: float = 1000.0, burst: float = 1000.0
    ) -> None:
        self._key = key
        self._cid_length = cid_length
        self._rate = rate
        self._burst = burst
        self._allowance = burst
        self._last: float | None = None
        self.sent = 0
        self.limited = 0  # resets not sent because of the rate limit

    def token(self, cid: bytes) -> bytes:
        return hmac.new(self._key, cid, hashlib.sha256).digest()[:TOKEN_LEN]

    def answer(self, data: bytes, now: float) -> bytes | None:
        """A stateless reset for `data`, a short header packet for a connection id we do not
        have; None if it is too short to answer with something shorter, or over the rate."""
        if len(data) <= MIN_RESET_LEN or len(data) < 1 + self._cid_length:
            return None
        if data[0] & 0xC0 != 0x40:
            return None
        if self._last is not None:
            self._allowance = min(self._burst, self._allowance + (now - self._last) * self._rate)
        self._last = now
        if self._allowance < 1.0:
            self.limited += 1
            return None
        self._allowance -= 1.0
        self.sent += 1
        token = self.token(data[1 : 1 + self._cid_length])
        # 42 bytes, or the minimum for shorter packets: a reset answering a reset ends it.
        size = 2 * MIN_RESET_LEN if len(data) > 2 * MIN_RESET_LEN else MIN_RESET_LEN
        # Unpredictable bits, the fixed bit set, as a short header packet looks (10.3).
        first = 0x40 | (os.urandom(1)[0] & 0x3F)
        return bytes([first]) + os.urandom(size - 1 - TOKEN_LEN) + token
