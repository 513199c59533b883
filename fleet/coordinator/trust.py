"""The coordinator's capability state: certificates seen, revocations, audit checkpoints.

Certificates are remembered (with the chain ending at each) so that `fleetctl revoke CERT_ID`
can fetch the chain a revocation must carry; revocations are kept forever and handed to
every agent; checkpoints are the coordinator's signatures over the audit head.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from fleet.capability import (
    CapabilityError,
    Chain,
    RevocationList,
    SignedRevocation,
    certificate_id,
    certificates_of,
)
from fleet.coordinator.announcements import Reader
from fleet.coordinator.database import Database, Transaction
from fleet.identity import NodeId
from fleet.log import get_logger
from fleet.wire import SignedEnvelope, WireError, decode, encode

log = get_logger(__name__)


class KnownRevocations:
    """The verified revocations, loaded from the database on first use, then kept current."""

    def __init__(
        self, db: Database, trust_roots: Iterable[NodeId], clock: Callable[[], float]
    ) -> None:
        self.db = db
        self.trust_roots = frozenset(trust_roots)
        self.clock = clock
        self._revoked: RevocationList | None = None

    async def get(self) -> RevocationList:
        if self._revoked is None:
            revoked = RevocationList()
            for problem in revoked.add_all(
                await all_revocations(self.db), self.trust_roots, self.clock()
            ):
                log.warning("revocation_ignored", reason=str(problem))
            self._revoked = revoked
        return self._revoked


async def remember_chain(tx: Transaction, chain: Chain, now: float) -> None:
    """Store every certificate of a chain with the chain prefix ending at it.

    A chain whose signatures do not verify is not stored (it may come with a request that
    is being refused for exactly that reason).
    """
    try:
        links = certificates_of(chain)
    except CapabilityError:
        return
    for index, (cert_id, cert) in enumerate(links):
        prefix = Chain(certificates=chain.certificates[: index + 1])
        await tx.execute(
            "INSERT OR IGNORE INTO certificates (id, issuer, subject, chain, first_seen)"
            " VALUES (?, ?, ?, ?, ?)",
            (cert_id, str(cert.issuer), str(cert.subject), encode(prefix), now),
        )


async def chain_of(db: Reader, cert_id: bytes) -> Chain | None:
    row = await db.fetchone("SELECT chain FROM certificates WHERE id = ?", (cert_id,))
    if row is None:
        return None
    try:
        chain = decode(bytes(row["chain"]), Chain)
    except WireError:
        return None
    if not chain.certificates or certificate_id(chain.certificates[-1]) != cert_id:
        return None
    return chain


async def certificate_subjects(db: Reader, limit: int) -> list[NodeId]:
    """Node ids that certificates seen here were issued to (admins), newest first."""
    rows = await db.fetchall(
        "SELECT subject, max(first_seen) AS seen FROM certificates"
        " GROUP BY subject ORDER BY seen DESC LIMIT ?",
        (limit,),
    )
    out = []
    for row in rows:
        try:
            out.append(NodeId.parse(str(row["subject"])))
        except ValueError:
            continue
    return out


async def store_revocation(
    tx: Transaction, signed: SignedRevocation, certificate: bytes, revoker: str, now: float
) -> bool:
    """Keep a verified revocation; False if this certificate was already revoked."""
    changed = await tx.execute(
        "INSERT OR IGNORE INTO revocations (certificate, revoker, signed, received_at)"
        " VALUES (?, ?, ?, ?)",
        (certificate, revoker, encode(signed), now),
    )
    return changed > 0


async def all_revocations(db: Reader) -> list[SignedRevocation]:
    rows = await db.fetchall("SELECT signed FROM revocations ORDER BY received_at")
    out = []
    for row in rows:
        try:
            out.append(decode(bytes(row["signed"]), SignedRevocation))
        except WireError:
            continue  # re-verified by the caller anyway; a broken row revokes nothing
    return out


async def last_checkpoint(db: Reader) -> int:
    row = await db.fetchone("SELECT max(sequence) AS s FROM audit_checkpoints")
    return int(row["s"]) if row is not None and row["s"] is not None else 0


async def insert_checkpoint(
    tx: Transaction, sequence: int, envelope: SignedEnvelope, now: float
) -> None:
    await tx.execute(
        "INSERT INTO audit_checkpoints (sequence, envelope, time) VALUES (?, ?, ?)",
        (sequence, encode(envelope), now),
    )


async def checkpoints_between(db: Reader, low: int, high: int) -> list[SignedEnvelope]:
    """Checkpoints with low < sequence <= high, oldest first."""
    rows = await db.fetchall(
        "SELECT envelope FROM audit_checkpoints WHERE sequence > ? AND sequence <= ?"
        " ORDER BY sequence",
        (low, high),
    )
    out = []
    for row in rows:
        try:
            out.append(decode(bytes(row["envelope"]), SignedEnvelope))
        except WireError:
            continue  # the verifier then misses it; it cannot vouch for anything broken
    return out
