"""Chains of certificates from a trust root to a key, and the authority they confer.

A chain is the list of signed certificates root -> ... -> subject. It is valid when:
- the first certificate is issued (and signed) by one of the configured trust roots;
- every certificate verifies under Tag.CAPABILITY and is signed by the issuer it names;
- each next certificate is issued by the previous one's subject, and that subject holds
  both `grant` and may_delegate;
- each link narrows: its actions are a subset, its scope lies within, and its validity
  period lies within the period of the one before (a link that widens anything makes the
  whole chain invalid, it is not silently clipped);
- every certificate is valid now and none is revoked.
A trust root acting with its own key needs no chain (an empty one): it holds everything.

Checks run in chain order and the first failure is raised, so the error names the first
certificate that is wrong and what is wrong with it.
"""

from __future__ import annotations

import datetime
import hmac
from collections.abc import Collection, Iterable, Set
from dataclasses import dataclass

from fleet.capability.certificate import (
    ALL_PERMISSIONS,
    Certificate,
    Permission,
    Scope,
    certificate_id,
    format_id,
    sign_certificate,
)
from fleet.capability.errors import (
    ActionNotAllowed,
    BrokenLink,
    Expired,
    NotDelegable,
    NotSubject,
    OutOfScope,
    Revoked,
    UnknownRoot,
    Widened,
)
from fleet.identity import Identity, NodeId
from fleet.wire import Message, SignedEnvelope, Tag, WireError, verify_envelope

MAX_CHAIN = 8  # links; a deeper organisation is a mistake, and this bounds verify cost


class Chain(Message, type="fleet.capability.chain", version=1):
    """Certificates from a trust root to the holder, in order (Tag.CAPABILITY envelopes)."""

    certificates: tuple[SignedEnvelope, ...]

    def __post_init__(self) -> None:
        if len(self.certificates) > MAX_CHAIN:
            raise ValueError(f"a chain has at most {MAX_CHAIN} certificates")


EMPTY_CHAIN = Chain(certificates=())


@dataclass(frozen=True)
class Authority:
    """What a verified chain lets its holder do, and until when."""

    holder: NodeId
    root: NodeId
    actions: frozenset[Permission]
    scope: Scope
    not_before: float | None  # None: a trust root, valid always
    not_after: float | None
    may_delegate: bool
    certificate_ids: tuple[bytes, ...]  # root first; empty for a trust root

    @classmethod
    def of_root(cls, root: NodeId) -> Authority:
        return cls(root, root, ALL_PERMISSIONS, Scope.everything(), None, None, True, ())

    @property
    def is_root(self) -> bool:
        return not self.certificate_ids

    def allows(
        self, action: Permission, device: NodeId | None = None, tags: Iterable[str] = ()
    ) -> bool:
        """May the holder do `action` (on `device`, which carries `tags`)?"""
        if action not in self.actions:
            return False
        return device is None or self.scope.contains(device, tags)

    def require(
        self, action: Permission, device: NodeId | None = None, tags: Iterable[str] = ()
    ) -> None:
        """Like `allows`, but raise ActionNotAllowed / OutOfScope saying what is missing."""
        if action not in self.actions:
            held = ",".join(sorted(self.actions)) or "none"
            raise ActionNotAllowed(
                f"{self.holder.short()} may not {action.value} (its certificate grants {held})"
            )
        tags = tuple(tags)
        if device is not None and not self.scope.contains(device, tags):
            has = f" (tags {','.join(tags)})" if tags else " (no tags)"
            raise OutOfScope(
                f"device {device}{has} is outside the scope {self.scope.describe()} "
                f"of {self.holder.short()}"
            )

    def require_tags(self, tags: Iterable[str]) -> None:
        """Assigning tags needs each tag in scope: otherwise a scoped holder could tag its
        way into another team's scope."""
        if self.scope.all:
            return
        outside = sorted(set(tags) - set(self.scope.tags))
        if outside:
            raise OutOfScope(
                f"tag {', '.join(outside)} is outside the scope {self.scope.describe()} "
                f"of {self.holder.short()}"
            )

    def covers(self, cert: Certificate) -> None:
        """Raise unless this authority may issue `cert` (it narrows and we may delegate)."""
        if not (self.may_delegate and Permission.GRANT in self.actions):
            missing = "may_delegate" if not self.may_delegate else "the grant action"
            raise NotDelegable(
                f"{self.holder.short()} may not issue certificates (its certificate lacks "
                f"{missing})"
            )
        extra = set(cert.actions) - self.actions
        if extra:
            raise Widened(
                f"certificate for {cert.subject.short()} grants {','.join(sorted(extra))}, "
                f"which its issuer {self.holder.short()} does not hold",
                what="actions",
            )
        if not cert.scope.within(self.scope):
            raise Widened(
                f"certificate for {cert.subject.short()} has scope {cert.scope.describe()}, "
                f"wider than its issuer's {self.scope.describe()}",
                what="scope",
            )
        if (self.not_before is not None and cert.not_before < self.not_before) or (
            self.not_after is not None and cert.not_after > self.not_after
        ):
            raise Widened(
                f"certificate for {cert.subject.short()} is valid "
                f"{_period(cert.not_before, cert.not_after)}, outside its issuer's "
                f"{_period(self.not_before, self.not_after)}",
                what="lifetime",
            )

    def narrowed_to(self, cert: Certificate, cert_id: bytes) -> Authority:
        return Authority(
            holder=cert.subject,
            root=self.root,
            actions=frozenset(cert.actions),
            scope=cert.scope,
            not_before=cert.not_before,
            not_after=cert.not_after,
            may_delegate=cert.may_delegate,
            certificate_ids=(*self.certificate_ids, cert_id),
        )


def iso(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _period(start: float | None, end: float | None) -> str:
    begin = iso(start) if start is not None else "always"
    finish = iso(end) if end is not None else "forever"
    return f"{begin} .. {finish}"


def is_root(node: NodeId, trust_roots: Iterable[NodeId]) -> bool:
    found = False
    for root in trust_roots:
        found |= hmac.compare_digest(node.raw, root.raw)
    return found


def open_certificate(envelope: SignedEnvelope, index: int) -> Certificate:
    """Verify one certificate's signature and that its issuer signed it."""
    try:
        signer, cert = verify_envelope(envelope, Tag.CAPABILITY, Certificate)
    except WireError as exc:
        raise BrokenLink(f"certificate {index + 1} of the chain does not verify: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise BrokenLink(f"certificate {index + 1} of the chain is malformed: {exc}") from None
    if signer != cert.issuer:
        raise BrokenLink(
            f"certificate {index + 1} names issuer {cert.issuer.short()} but is signed by "
            f"{signer.short()}"
        )
    return cert


def verify_chain(
    chain: Chain,
    trust_roots: Collection[NodeId],
    now: float,
    revoked: Set[bytes] = frozenset(),
) -> Authority:
    """The authority `chain` confers on its last subject, or the first reason it confers none."""
    if not chain.certificates:
        raise UnknownRoot("an empty chain confers nothing (only a trust root acts without one)")
    authority: Authority | None = None
    for index, envelope in enumerate(chain.certificates):
        cert = open_certificate(envelope, index)
        cert_id = certificate_id(envelope)
        if authority is None:
            if not is_root(cert.issuer, trust_roots):
                raise UnknownRoot(
                    f"the chain starts at {cert.issuer}, which is not a configured trust root"
                )
            authority = Authority.of_root(cert.issuer)
        elif cert.issuer != authority.holder:
            raise BrokenLink(
                f"certificate {index + 1} is issued by {cert.issuer.short()}, but certificate "
                f"{index} was issued to {authority.holder.short()}"
            )
        authority.covers(cert)
        if cert_id in revoked:
            raise Revoked(
                f"certificate {format_id(cert_id)} (for {cert.subject.short()}) has been revoked"
            )
        if now > cert.not_after:
            raise Expired(
                f"certificate {format_id(cert_id)} (for {cert.subject.short()}) expired "
                f"{_ago(now - cert.not_after)} ago"
            )
        if now < cert.not_before:
            raise Expired(
                f"certificate {format_id(cert_id)} (for {cert.subject.short()}) is not valid "
                f"for another {_ago(cert.not_before - now)}"
            )
        authority = authority.narrowed_to(cert, cert_id)
    assert authority is not None
    return authority


def authority_of(
    signer: NodeId,
    chain: Chain,
    trust_roots: Collection[NodeId],
    now: float,
    revoked: Set[bytes] = frozenset(),
) -> Authority:
    """The authority of `signer`, who presents `chain` (empty if it is a trust root)."""
    if not chain.certificates:
        if is_root(signer, trust_roots):
            return Authority.of_root(signer)
        raise UnknownRoot(
            f"{signer} is not a trust root and presented no certificate chain (use --cert)"
        )
    authority = verify_chain(chain, trust_roots, now, revoked)
    if authority.holder != signer:
        raise NotSubject(
            f"the certificate chain was issued to {authority.holder.short()}, but the request "
            f"is signed by {signer.short()}"
        )
    return authority


def issue(
    issuer: Identity,
    issuer_chain: Chain,
    trust_roots: Collection[NodeId],
    subject: NodeId,
    actions: Iterable[Permission],
    scope: Scope,
    *,
    not_before: float,
    not_after: float,
    may_delegate: bool,
    now: float,
) -> Chain:
    """Extend the issuer's chain by a certificate for `subject`; the subject's whole chain.

    Refuses (with the same errors a verifier would raise) anything the issuer cannot grant,
    so a chain written by `issue` verifies.
    """
    authority = authority_of(issuer.node_id, issuer_chain, trust_roots, now)
    envelope = sign_certificate(
        issuer,
        subject,
        actions,
        scope,
        not_before=not_before,
        not_after=not_after,
        may_delegate=may_delegate,
    )
    authority.covers(open_certificate(envelope, len(issuer_chain.certificates)))
    return Chain(certificates=(*issuer_chain.certificates, envelope))


def certificates_of(chain: Chain) -> list[tuple[bytes, Certificate]]:
    """(id, certificate) for each link, signatures verified but not the rules."""
    return [(certificate_id(e), open_certificate(e, i)) for i, e in enumerate(chain.certificates)]


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"
