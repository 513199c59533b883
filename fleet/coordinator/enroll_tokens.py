"""The enroll_tokens table: how many devices each enrollment token enrolled, and revocations."""

from __future__ import annotations

from fleet.coordinator.database import Transaction
from fleet.identity import NodeId


async def take_use(
    tx: Transaction, token_id: bytes, signer: NodeId, max_uses: int, expires_at: float, now: float
) -> int | None:
    """Count one more use of the token; its number (1 = first), or None if all were used."""
    row = await tx.fetchone("SELECT used FROM enroll_tokens WHERE token_id = ?", (token_id,))
    used = 0 if row is None else int(row["used"])
    if used >= max_uses:
        return None
    await tx.execute(
        "INSERT INTO enroll_tokens (token_id, signer, used, max_uses, expires_at, last_used)"
        " VALUES (?, ?, 1, ?, ?, ?)"
        " ON CONFLICT (token_id) DO UPDATE SET used = used + 1, last_used = excluded.last_used,"
        " signer = excluded.signer, max_uses = excluded.max_uses,"
        " expires_at = excluded.expires_at",
        (token_id, str(signer), max_uses, expires_at, now),
    )
    return used + 1


async def revoked(tx: Transaction, token_id: bytes) -> bool:
    row = await tx.fetchone(
        "SELECT 1 FROM enroll_tokens WHERE token_id = ? AND revoked_at IS NOT NULL", (token_id,)
    )
    return row is not None


async def revoke(tx: Transaction, token_id: bytes, now: float) -> bool:
    """Mark the token revoked; False if it already was."""
    if await revoked(tx, token_id):
        return False
    await tx.execute(
        "INSERT INTO enroll_tokens (token_id, revoked_at) VALUES (?, ?)"
        " ON CONFLICT (token_id) DO UPDATE SET revoked_at = excluded.revoked_at",
        (token_id, now),
    )
    return True
