"""Admin request nonces: each signed request is carried out at most once.

A nonce is kept for twice the freshness window (fleet.protocol.admin.MAX_CLOCK_SKEW); a
request older than that is refused as stale before its nonce is looked at.
"""

from __future__ import annotations

from fleet.coordinator.database import Transaction
from fleet.identity import NodeId
from fleet.protocol.admin import MAX_CLOCK_SKEW


async def spend(
    tx: Transaction, nonce: bytes, signer: NodeId, issued_at: float, now: float
) -> bool:
    """Record a nonce; False if it was seen before (a replayed request)."""
    await tx.execute("DELETE FROM admin_nonces WHERE issued_at < ?", (now - 2 * MAX_CLOCK_SKEW,))
    seen = await tx.fetchone("SELECT 1 FROM admin_nonces WHERE nonce = ?", (nonce,))
    if seen is not None:
        return False
    await tx.execute(
        "INSERT INTO admin_nonces (nonce, signer, issued_at) VALUES (?, ?, ?)",
        (nonce, str(signer), issued_at),
    )
    return True
