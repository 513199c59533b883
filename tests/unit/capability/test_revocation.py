"""Revocations: who may revoke which certificate, and that they survive their revoker."""

from __future__ import annotations

import dataclasses

import pytest

from fleet.capability import (
    EMPTY_CHAIN,
    BadRevocation,
    Permission,
    RevocationList,
    Revoked,
    Scope,
    certificate_id,
    issue,
    revoke,
    verify_chain,
    verify_revocation,
)
from fleet.identity import Identity
from tests.capability_kit import DAY, NOW, Org, make_org


def ci_id(org: Org) -> bytes:
    return certificate_id(org.ci_chain.certificates[-1])


def test_a_root_revokes_any_certificate_by_id_alone() -> None:
    org = make_org()
    signed = revoke(org.root, EMPTY_CHAIN, ci_id(org), reason="laptop lost", now=NOW)
    statement = verify_revocation(signed, org.roots, NOW)
    assert statement.certificate == ci_id(org)
    assert statement.reason == "laptop lost"


def test_the_lead_revokes_what_it_issued_and_the_chain_stops_verifying() -> None:
    org = make_org()
    signed = revoke(
        org.lead, org.lead_chain, ci_id(org), revoked_chain=org.ci_chain, reason="rotated", now=NOW
    )
    revoked = RevocationList()
    revoked.add(signed, org.roots, NOW)
    assert ci_id(org) in revoked
    assert len(revoked) == 1
    with pytest.raises(Revoked):
        verify_chain(org.ci_chain, org.roots, NOW, revoked.ids())
    verify_chain(org.lead_chain, org.roots, NOW, revoked.ids())  # the lead is unaffected


def test_a_sibling_team_lead_cannot_revoke_another_teams_key() -> None:
    org = make_org()
    other_lead = Identity.generate()
    other_chain = issue(
        org.root,
        EMPTY_CHAIN,
        org.roots,
        other_lead.node_id,
        [Permission.GRANT, Permission.PUSH],
        Scope.everything(),
        not_before=NOW - DAY,
        not_after=NOW + DAY,
        may_delegate=True,
        now=NOW,
    )
    signed = revoke(
        other_lead, other_chain, ci_id(org), revoked_chain=org.ci_chain, reason="x", now=NOW
    )
    with pytest.raises(BadRevocation, match="issued none of the certificates"):
        verify_revocation(signed, org.roots, NOW)


def test_a_holder_without_grant_cannot_revoke() -> None:
    org = make_org()
    signed = revoke(
        org.ci, org.ci_chain, ci_id(org), revoked_chain=org.ci_chain, reason="x", now=NOW
    )
    with pytest.raises(BadRevocation, match="does not hold the grant action"):
        verify_revocation(signed, org.roots, NOW)


def test_a_non_root_must_carry_the_revoked_chain() -> None:
    org = make_org()
    signed = revoke(org.lead, org.lead_chain, ci_id(org), reason="x", now=NOW)
    with pytest.raises(BadRevocation, match="does not carry the revoked certificate's chain"):
        verify_revocation(signed, org.roots, NOW)
    wrong_chain = revoke(
        org.lead, org.lead_chain, ci_id(org), revoked_chain=org.lead_chain, reason="x", now=NOW
    )
    with pytest.raises(BadRevocation):
        verify_revocation(wrong_chain, org.roots, NOW)


def test_a_stranger_and_a_forged_signature_are_refused() -> None:
    org = make_org()
    stranger = Identity.generate()
    with pytest.raises(BadRevocation, match="not a trust root"):
        verify_revocation(
            revoke(stranger, EMPTY_CHAIN, ci_id(org), reason="x", now=NOW), org.roots, NOW
        )
    signed = revoke(org.root, EMPTY_CHAIN, ci_id(org), reason="x", now=NOW)
    forged = dataclasses.replace(
        signed, revocation=dataclasses.replace(signed.revocation, signature=bytes(64))
    )
    with pytest.raises(BadRevocation, match="does not verify"):
        verify_revocation(forged, org.roots, NOW)
    revoked = RevocationList()
    errors = revoked.add_all([forged, signed], org.roots, NOW)
    assert len(errors) == 1
    assert list(revoked) == [ci_id(org)]


def test_a_revocation_outlives_its_revokers_certificate() -> None:
    """The lead's certificate expires after 30 days; what it revoked stays revoked."""
    org = make_org()
    signed = revoke(
        org.lead, org.lead_chain, ci_id(org), revoked_chain=org.ci_chain, reason="x", now=NOW
    )
    later = NOW + 60 * DAY
    assert verify_revocation(signed, org.roots, later).certificate == ci_id(org)


def test_a_revocation_dated_in_the_future_is_refused() -> None:
    org = make_org()
    signed = revoke(org.root, EMPTY_CHAIN, ci_id(org), reason="x", now=NOW + DAY)
    with pytest.raises(BadRevocation, match="future"):
        verify_revocation(signed, org.roots, NOW)
