"""Admin request nonces: each signed request is carried out at most once, and answered alike.

A nonce is kept for twice the freshness window (fleet.protocol.admin.MAX_CLOCK_SKEW); a
request older than that is refused as stale before its nonce is looked at. With the nonce
the request's SHA-256 is kept and, once the request was carried out (or refused), the reply
it got, in the same transaction: a client whose answer was lost sends the very same signed
request again and gets that reply, while another request reusing the nonce is a replay.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fleet.coordinator.database import Transaction
from fleet.identity import NodeId
from fleet.protocol.admin import MAX_CLOCK_SKEW


@dataclass(frozen=True)
class Seen:
    """A nonce that was used before."""

    same_request: bool  # by this very request (same bytes), not another one reusing it
    reply: bytes | None  # the encoded reply the request got (None: none kept)


def request_digest(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


async def spend(
    tx: Transaction, nonce: bytes, signer: NodeId, issued_at: float, now: float, digest: bytes
) -> Seen | None:
    """Record a nonce with its request's digest; None if new, else what was seen before."""
    await tx.execute("DELETE FROM admin_nonces WHERE issued_at < ?", (now - 2 * MAX_CLOCK_SKEW,))
    row = await tx.fetchone(
        "SELECT request_sha256, reply FROM admin_nonces WHERE nonce = ?", (nonce,)
    )
    if row is not None:
        kept = row["request_sha256"]
        same = kept is not None and hmac.compare_digest(bytes(kept), digest)
        reply = row["reply"]
        return Seen(same, bytes(reply) if same and reply is not None else None)
    await tx.execute(
        "INSERT INTO admin_nonces (nonce, signer, issued_at, request_sha256) VALUES (?, ?, ?, ?)",
        (nonce, str(signer), issued_at, digest),
    )
    return None


async def keep_reply(tx: Transaction, nonce: bytes, reply: bytes) -> None:
    """The reply to the request that spent `nonce`, for a repeat of it (same transaction)."""
    await tx.execute("UPDATE admin_nonces SET reply = ? WHERE nonce = ?", (reply, nonce))
