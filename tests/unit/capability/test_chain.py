"""Capability chains: what a chain grants, and every reason a chain or a use of it is refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fleet.capability import (
    EMPTY_CHAIN,
    ActionNotAllowed,
    BrokenLink,
    CapabilityError,
    Certificate,
    Chain,
    ChainFileError,
    Expired,
    NotDelegable,
    NotSubject,
    OutOfScope,
    Permission,
    Revoked,
    Scope,
    UnknownRoot,
    Widened,
    authority_of,
    certificate_id,
    format_chain,
    format_id,
    issue,
    parse_chain,
    parse_id,
    parse_permissions,
    read_chain,
    sign_certificate,
    verify_chain,
    write_chain,
)
from fleet.identity import Identity
from fleet.wire import SignedEnvelope, Tag, sign_envelope
from tests.capability_kit import DAY, NOW, make_org


def extend(
    issuer: Identity,
    chain: Chain,
    subject: Identity,
    actions: list[Permission],
    scope: Scope,
    *,
    start: float = NOW - DAY,
    end: float = NOW + DAY,
    delegate: bool = False,
) -> Chain:
    """Append a certificate without the issuer-side checks of `issue` (to build bad chains)."""
    envelope = sign_certificate(
        issuer,
        subject.node_id,
        actions,
        scope,
        not_before=start,
        not_after=end,
        may_delegate=delegate,
    )
    return Chain(certificates=(*chain.certificates, envelope))


# ---------------------------------------------------------------- what a valid chain grants


def test_root_lead_ci_chain_narrows_to_the_ci_key() -> None:
    org = make_org()
    authority = verify_chain(org.ci_chain, org.roots, NOW)
    assert authority.holder == org.ci.node_id
    assert authority.root == org.root.node_id
    assert authority.actions == {Permission.PUSH}
    assert authority.scope == Scope.of(tags=["prod"])
    assert authority.not_after == NOW + 7 * DAY
    assert not authority.may_delegate
    assert len(authority.certificate_ids) == 2
    device = Identity.generate().node_id
    assert authority.allows(Permission.PUSH, device, ["prod"])
    assert not authority.allows(Permission.PUSH, device, ["lab"])
    assert not authority.allows(Permission.PUSH, device)
    assert not authority.allows(Permission.READ)


def test_a_trust_root_needs_no_chain_and_holds_everything() -> None:
    org = make_org()
    authority = authority_of(org.root.node_id, EMPTY_CHAIN, org.roots, NOW)
    assert authority.is_root
    assert authority.actions == set(Permission)
    assert authority.allows(Permission.PUSH, Identity.generate().node_id)


def test_scope_by_device_id() -> None:
    device, other = Identity.generate().node_id, Identity.generate().node_id
    org = make_org(
        lead_scope=Scope.of(devices=[device, other]), ci_scope=Scope.of(devices=[device])
    )
    authority = verify_chain(org.ci_chain, org.roots, NOW)
    assert authority.allows(Permission.PUSH, device)
    assert not authority.allows(Permission.PUSH, other)


# ---------------------------------------------------------------- refusals, one per reason


def test_unknown_root() -> None:
    org = make_org()
    with pytest.raises(UnknownRoot, match="not a configured trust root"):
        verify_chain(org.ci_chain, {Identity.generate().node_id}, NOW)


def test_no_chain_for_a_non_root_is_unknown_root() -> None:
    org = make_org()
    with pytest.raises(UnknownRoot, match="presented no certificate chain"):
        authority_of(org.ci.node_id, EMPTY_CHAIN, org.roots, NOW)
    with pytest.raises(UnknownRoot):
        verify_chain(EMPTY_CHAIN, org.roots, NOW)


def test_chain_of_someone_else_is_not_subject() -> None:
    org = make_org()
    with pytest.raises(NotSubject, match="issued to"):
        authority_of(org.lead.node_id, org.ci_chain, org.roots, NOW)


def test_widened_actions() -> None:
    org = make_org()
    chain = extend(org.lead, org.lead_chain, org.ci, [Permission.AUDIT], Scope.of(tags=["prod"]))
    with pytest.raises(Widened, match="audit") as caught:
        verify_chain(chain, org.roots, NOW)
    assert caught.value.what == "actions"


@pytest.mark.parametrize(
    "scope", [Scope.everything(), Scope.of(tags=["prod", "office"]), Scope.of(tags=["office"])]
)
def test_widened_scope(scope: Scope) -> None:
    org = make_org()
    chain = extend(org.lead, org.lead_chain, org.ci, [Permission.PUSH], scope)
    with pytest.raises(Widened, match="wider") as caught:
        verify_chain(chain, org.roots, NOW)
    assert caught.value.what == "scope"


def test_widened_scope_by_device_not_listed_above() -> None:
    device = Identity.generate().node_id
    org = make_org(lead_scope=Scope.of(tags=["prod"]))
    chain = extend(org.lead, org.lead_chain, org.ci, [Permission.PUSH], Scope.of(devices=[device]))
    with pytest.raises(Widened):
        verify_chain(chain, org.roots, NOW)


@pytest.mark.parametrize(
    ("start", "end"), [(NOW - DAY, NOW + 31 * DAY), (NOW - 2 * DAY, NOW + DAY)]
)
def test_widened_lifetime(start: float, end: float) -> None:
    org = make_org()
    chain = extend(
        org.lead,
        org.lead_chain,
        org.ci,
        [Permission.PUSH],
        Scope.of(tags=["prod"]),
        start=start,
        end=end,
    )
    with pytest.raises(Widened) as caught:
        verify_chain(chain, org.roots, NOW)
    assert caught.value.what == "lifetime"


def test_issued_by_a_subject_without_may_delegate() -> None:
    org = make_org()
    third = Identity.generate()
    chain = extend(org.ci, org.ci_chain, third, [Permission.PUSH], Scope.of(tags=["prod"]))
    with pytest.raises(NotDelegable, match="may_delegate"):
        verify_chain(chain, org.roots, NOW)


def test_issued_by_a_subject_without_grant() -> None:
    root, lead, ci = Identity.generate(), Identity.generate(), Identity.generate()
    chain = extend(root, EMPTY_CHAIN, lead, [Permission.PUSH], Scope.everything(), delegate=True)
    chain = extend(lead, chain, ci, [Permission.PUSH], Scope.everything())
    with pytest.raises(NotDelegable, match="grant"):
        verify_chain(chain, {root.node_id}, NOW)


def test_broken_link_issuer_is_not_the_previous_subject() -> None:
    org = make_org()
    stranger = Identity.generate()
    chain = extend(stranger, org.lead_chain, org.ci, [Permission.PUSH], Scope.of(tags=["prod"]))
    with pytest.raises(BrokenLink, match="certificate 2 is issued by"):
        verify_chain(chain, org.roots, NOW)


def test_broken_link_bad_signature() -> None:
    org = make_org()
    first, second = org.ci_chain.certificates
    forged = dataclasses.replace(second, signature=bytes(64))
    with pytest.raises(BrokenLink, match="certificate 2 of the chain does not verify"):
        verify_chain(Chain(certificates=(first, forged)), org.roots, NOW)


def test_broken_link_signed_by_another_than_the_named_issuer() -> None:
    """A key cannot pass its certificate off as one issued by a root."""
    org = make_org()
    cert = Certificate(
        issuer=org.root.node_id,
        subject=org.ci.node_id,
        actions=(Permission.PUSH,),
        scope=Scope.everything(),
        not_before=NOW - DAY,
        not_after=NOW + DAY,
        may_delegate=False,
        serial=bytes(16),
    )
    envelope = sign_envelope(org.ci, Tag.CAPABILITY, cert)
    with pytest.raises(BrokenLink, match="but is signed by"):
        verify_chain(Chain(certificates=(envelope,)), org.roots, NOW)


def test_certificate_signed_for_another_purpose_is_broken() -> None:
    org = make_org()
    envelope = org.lead_chain.certificates[0]
    wrong_tag = SignedEnvelope(
        signer=envelope.signer,
        tag=Tag.ANNOUNCEMENT,
        payload=envelope.payload,
        signature=envelope.signature,
    )
    with pytest.raises(BrokenLink):
        verify_chain(Chain(certificates=(wrong_tag,)), org.roots, NOW)


def test_expired_and_not_yet_valid() -> None:
    org = make_org()
    with pytest.raises(Expired, match="expired 24 h ago"):
        verify_chain(org.ci_chain, org.roots, NOW + 8 * DAY)
    with pytest.raises(Expired, match="not valid for another"):
        verify_chain(org.ci_chain, org.roots, NOW - 2 * DAY)


@pytest.mark.parametrize("which", [0, 1])
def test_revoked_certificate_anywhere_in_the_chain(which: int) -> None:
    org = make_org()
    cert_id = certificate_id(org.ci_chain.certificates[which])
    with pytest.raises(Revoked, match=format_id(cert_id)):
        verify_chain(org.ci_chain, org.roots, NOW, {cert_id})


def test_require_names_the_missing_action_and_the_device_outside_scope() -> None:
    org = make_org()
    authority = verify_chain(org.ci_chain, org.roots, NOW)
    device = Identity.generate().node_id
    with pytest.raises(ActionNotAllowed, match="may not devices") as action:
        authority.require(Permission.DEVICES, device, ["prod"])
    assert action.value.code == "action"
    with pytest.raises(OutOfScope, match=f"device {device} \\(tags lab\\)") as scope:
        authority.require(Permission.PUSH, device, ["lab"])
    assert scope.value.code == "scope"
    authority.require(Permission.PUSH, device, ["prod"])


def test_assigning_tags_needs_each_tag_in_scope() -> None:
    org = make_org()
    lead = verify_chain(org.lead_chain, org.roots, NOW)
    lead.require_tags(["prod", "lab"])
    with pytest.raises(OutOfScope, match="tag office"):
        lead.require_tags(["prod", "office"])


def test_issue_refuses_to_widen_before_signing_anything() -> None:
    org = make_org()
    with pytest.raises(Widened):
        issue(
            org.lead,
            org.lead_chain,
            org.roots,
            org.ci.node_id,
            [Permission.AUDIT],
            Scope.of(tags=["prod"]),
            not_before=NOW,
            not_after=NOW + DAY,
            may_delegate=False,
            now=NOW,
        )
    with pytest.raises(NotDelegable):
        issue(
            org.ci,
            org.ci_chain,
            org.roots,
            Identity.generate().node_id,
            [Permission.PUSH],
            Scope.of(tags=["prod"]),
            not_before=NOW,
            not_after=NOW + DAY,
            may_delegate=False,
            now=NOW,
        )


def test_error_codes_are_distinct() -> None:
    codes = [cls.code for cls in CapabilityError.__subclasses__()]
    assert len(codes) == len(set(codes))


# ---------------------------------------------------------------- parsing and files


def test_scope_parsing() -> None:
    device = Identity.generate().node_id
    assert Scope.parse("*") == Scope.everything()
    assert Scope.parse(["tag:prod,tag:lab"]) == Scope.of(tags=["lab", "prod"])
    assert Scope.parse([f"device:{device}", str(device)]) == Scope.of(devices=[device])
    for bad in ["", "*,tag:x", "nonsense", "tag:"]:
        with pytest.raises(ValueError, match="scope"):
            Scope.parse(bad)


def test_permission_parsing() -> None:
    assert parse_permissions("read, push") == (Permission.PUSH, Permission.READ)
    with pytest.raises(ValueError, match="unknown action 'fly'"):
        parse_permissions("push,fly")
    with pytest.raises(ValueError, match="no action"):
        parse_permissions("")


def test_certificate_ids_parse_back() -> None:
    org = make_org()
    cert_id = certificate_id(org.ci_chain.certificates[-1])
    assert parse_id(format_id(cert_id)) == cert_id
    for bad in ["xyz", "abcd"]:
        with pytest.raises(ValueError, match="certificate id"):
            parse_id(bad)


def test_chain_file_round_trip_and_comments(tmp_path: Path) -> None:
    org = make_org()
    path = tmp_path / "ci.chain"
    write_chain(path, org.ci_chain)
    text = path.read_text()
    assert str(org.ci.node_id) in text
    assert "push on tag:prod" in text
    assert read_chain(path) == org.ci_chain
    assert parse_chain(format_chain(org.lead_chain)) == org.lead_chain


@pytest.mark.parametrize(
    "text",
    [
        "",
        "-----BEGIN FLEET CAPABILITY CHAIN-----\n!!!\n-----END FLEET CAPABILITY CHAIN-----\n",
        "-----BEGIN FLEET CAPABILITY CHAIN-----\naGVsbG8=\n-----END FLEET CAPABILITY CHAIN-----\n",
    ],
)
def test_bad_chain_files_are_refused_with_the_file_name(text: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.chain"
    path.write_text(text)
    with pytest.raises(ChainFileError, match=r"bad\.chain"):
        read_chain(path)
    with pytest.raises(ChainFileError, match="cannot read"):
        read_chain(tmp_path / "missing.chain")
