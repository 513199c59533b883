"""Enrollment tokens as signed data: bound to one coordinator, expiring, domain-separated."""

from __future__ import annotations

import dataclasses

import pytest

from fleet.identity import Identity
from fleet.protocol.admin import AdminRequestError, open_admin_request
from fleet.protocol.enroll_token import (
    EnrollTokenError,
    format_token_file,
    make_enroll_token,
    open_enroll_token,
    parse_token_file,
)
from fleet.protocol.messages import EnrollToken
from fleet.wire import SignedEnvelope, Tag, decode, sign_envelope

NOW = 1_800_000_000.0
ADMIN, COORDINATOR = Identity.generate(), Identity.generate()


def token(**kw: float) -> SignedEnvelope:
    return make_enroll_token(
        ADMIN, COORDINATOR.node_id, ("tag:kiosk", "lab"), lifetime=kw.get("lifetime", 60),
        uses=3, now=NOW,
    )  # fmt: skip


def test_a_token_opens_with_normalized_tags_until_it_expires() -> None:
    opened = open_enroll_token(token(), COORDINATOR.node_id, NOW + 59)
    assert opened.signer == ADMIN.node_id
    assert (opened.token.tags, opened.token.uses) == (("kiosk", "lab"), 3)
    with pytest.raises(EnrollTokenError) as expired:
        open_enroll_token(token(), COORDINATOR.node_id, NOW + 60)
    assert expired.value.code == "expired"


def test_a_token_is_for_one_coordinator() -> None:
    with pytest.raises(EnrollTokenError) as refused:
        open_enroll_token(token(), Identity.generate().node_id, NOW)
    assert refused.value.code == "wrong-coordinator"


def test_its_signature_is_domain_separated() -> None:
    genuine = token()
    as_request = SignedEnvelope(
        signer=genuine.signer, tag=Tag.ADMIN_REQUEST, payload=genuine.payload,
        signature=genuine.signature,
    )  # fmt: skip
    with pytest.raises(AdminRequestError):
        open_admin_request(as_request, COORDINATOR.node_id, now=NOW)
    body = decode(genuine.payload, EnrollToken)
    as_announcement_signed = sign_envelope(ADMIN, Tag.ANNOUNCEMENT, body)
    with pytest.raises(EnrollTokenError) as refused:
        open_enroll_token(as_announcement_signed, COORDINATOR.node_id, NOW)
    assert refused.value.code == "bad-signature"


def test_bad_arguments_and_unnormalized_tags_are_refused() -> None:
    with pytest.raises(ValueError, match="uses"):
        make_enroll_token(ADMIN, COORDINATOR.node_id, ("kiosk",), lifetime=60, uses=0)
    body = decode(token().payload, EnrollToken)
    odd = sign_envelope(ADMIN, Tag.ENROLL_TOKEN, dataclasses.replace(body, tags=("b", "a")))
    with pytest.raises(EnrollTokenError) as refused:
        open_enroll_token(odd, COORDINATOR.node_id, NOW)
    assert refused.value.code == "invalid"


def test_the_file_round_trips_and_says_what_it_grants() -> None:
    envelope = token()
    text = format_token_file(envelope, decode(envelope.payload, EnrollToken))
    assert "tags kiosk lab; at most 3 device(s)" in text
    assert parse_token_file("# notes\n" + text) == envelope
    with pytest.raises(ValueError, match="no -----BEGIN"):
        parse_token_file("nothing here", "t")
    with pytest.raises(ValueError, match="not an enrollment token"):
        parse_token_file(text.replace(text.splitlines()[4][:8], "AAAAAAAA"), "t")
