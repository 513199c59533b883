"""Revocations: a signed statement that a certificate (and every chain through it) is void.

Who may revoke a certificate: a trust root (any certificate), or a holder of `grant` who
issued one of the certificates on the revoked certificate's chain, i.e. an ancestor of it
(a team lead revokes what it or its delegates handed out, never a sibling team's keys).
So that anyone can check this offline, the revocation carries the revoker's own chain and
the chain ending at the revoked certificate (both may be empty when a root revokes).

Revocations never expire; the coordinator stores them and hands them to agents, which
verify each before they believe it, so a coordinator cannot revoke on its own either.
The revoker's authority is checked as of the revocation's own time and without regard to
other revocations: a revocation only ever removes authority, so one made by a lead whose
certificate later expired or was revoked stays in force (the worst a stolen key can do with
it is revoke what it could already revoke), and the order revocations arrive in is moot.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection, Iterable, Iterator

from fleet.capability.certificate import CERT_ID_LEN, Permission, certificate_id, format_id
from fleet.capability.chain import EMPTY_CHAIN, Chain, authority_of, certificates_of, is_root
from fleet.capability.errors import BadRevocation, CapabilityError
from fleet.identity import Identity, NodeId
from fleet.wire import Message, SignedEnvelope, Tag, WireError, sign_envelope, verify_envelope


class Revocation(Message, type="fleet.capability.revocation", version=1):
    """What the revoker signs (Tag.REVOCATION)."""

    certificate: bytes  # the revoked certificate's id
    issued_at: float
    reason: str

    def __post_init__(self) -> None:
        if len(self.certificate) != CERT_ID_LEN:
            raise ValueError(f"a certificate id is {CERT_ID_LEN} bytes")
        if len(self.reason) > 1000:
            raise ValueError("a revocation reason is at most 1000 characters")


class SignedRevocation(Message, type="fleet.capability.signed-revocation", version=1):
    revocation: SignedEnvelope  # Tag.REVOCATION around a Revocation
    revoker_chain: Chain  # empty if the revoker is a trust root
    revoked_chain: Chain  # ends at the revoked certificate; may be empty for a root revoker


def revoke(
    revoker: Identity,
    revoker_chain: Chain,
    certificate: bytes,
    *,
    revoked_chain: Chain = EMPTY_CHAIN,
    reason: str,
    now: float,
) -> SignedRevocation:
    statement = Revocation(certificate=certificate, issued_at=now, reason=reason)
    return SignedRevocation(
        revocation=sign_envelope(revoker, Tag.REVOCATION, statement),
        revoker_chain=revoker_chain,
        revoked_chain=revoked_chain,
    )


MAX_FUTURE = 300.0  # how far ahead of our clock a revocation may be dated


def verify_revocation(
    signed: SignedRevocation, trust_roots: Collection[NodeId], now: float
) -> Revocation:
    """The revocation, if its signer had authority over the revoked certificate."""
    try:
        signer, statement = verify_envelope(signed.revocation, Tag.REVOCATION, Revocation)
    except WireError as exc:
        raise BadRevocation(f"revocation does not verify: {exc}") from None
    target = format_id(statement.certificate)
    if statement.issued_at > now + MAX_FUTURE:
        raise BadRevocation(f"revocation of {target} is dated in the future")
    try:
        authority = authority_of(signer, signed.revoker_chain, trust_roots, statement.issued_at)
    except CapabilityError as exc:
        raise BadRevocation(f"revocation of {target} by {signer.short()}: {exc}") from None
    if authority.is_root:
        return statement
    if Permission.GRANT not in authority.actions:
        raise BadRevocation(
            f"revocation of {target}: {signer.short()} does not hold the grant action"
        )
    chain = signed.revoked_chain.certificates
    if not chain or not hmac.compare_digest(certificate_id(chain[-1]), statement.certificate):
        raise BadRevocation(
            f"revocation of {target} by {signer.short()} does not carry the revoked "
            "certificate's chain (only a trust root may revoke without it)"
        )
    try:
        links = certificates_of(signed.revoked_chain)
    except CapabilityError as exc:
        raise BadRevocation(f"revocation of {target}: revoked chain: {exc}") from None
    if not is_root(links[0][1].issuer, trust_roots):
        raise BadRevocation(f"revocation of {target}: the revoked chain is not from a trust root")
    for index, (_, cert) in enumerate(links[1:], start=1):
        if cert.issuer != links[index - 1][1].subject:
            raise BadRevocation(f"revocation of {target}: the revoked chain is broken")
    if not any(cert.issuer == signer for _, cert in links):
        raise BadRevocation(
            f"revocation of {target}: {signer.short()} issued none of the certificates it "
            "descends from, so it has no authority over it"
        )
    return statement


class RevocationList:
    """Verified revocations by certificate id: what agents and the coordinator consult."""

    def __init__(self) -> None:
        self._by_id: dict[bytes, SignedRevocation] = {}

    def __contains__(self, cert_id: object) -> bool:
        return cert_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._by_id)

    def ids(self) -> frozenset[bytes]:
        return frozenset(self._by_id)

    def signed(self) -> list[SignedRevocation]:
        return list(self._by_id.values())

    def add(
        self, signed: SignedRevocation, trust_roots: Collection[NodeId], now: float
    ) -> Revocation:
        """Verify and keep; raises BadRevocation (and keeps nothing) if it does not verify."""
        statement = verify_revocation(signed, trust_roots, now)
        self._by_id.setdefault(statement.certificate, signed)
        return statement

    def add_all(
        self, signed: Iterable[SignedRevocation], trust_roots: Collection[NodeId], now: float
    ) -> list[BadRevocation]:
        """Add what verifies; return why the others did not."""
        errors: list[BadRevocation] = []
        for item in signed:
            try:
                self.add(item, trust_roots, now)
            except BadRevocation as exc:
                errors.append(exc)
        return errors
