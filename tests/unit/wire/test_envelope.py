"""Signed envelopes: only the signer's untouched bytes, for the expected purpose, are accepted."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from fleet.identity import Identity
from fleet.wire import (
    BadEnvelope,
    BadEnvelopeSignature,
    MalformedMessage,
    SignedEnvelope,
    Tag,
    UnexpectedMessageType,
    decode,
    encode,
    open_envelope,
    seal,
    sign_envelope,
    verify_envelope,
)
from fleet.wire.tags import sign
from tests.unit.wire.wire_messages import Forward, Ping, Pong

ADMIN = Identity.generate()
OTHER = Identity.generate()


def test_seal_and_open() -> None:
    data = seal(ADMIN, Tag.ENVELOPE, Ping(nonce=7))
    signer, msg = open_envelope(data, Tag.ENVELOPE, Ping)
    assert signer == ADMIN.node_id
    assert msg == Ping(nonce=7)
    assert open_envelope(data, Tag.ENVELOPE) == (ADMIN.node_id, Ping(nonce=7))


def test_signed_bytes_layout() -> None:
    """What is signed, spelled out: prefix, tag length, tag, then the canonical message bytes."""
    data = seal(ADMIN, Tag.ENVELOPE, Ping(nonce=7))
    type_name, version, signer, tag, payload, signature = msgpack.unpackb(data)
    assert (type_name, version) == ("fleet.envelope", 1)
    assert signer == ADMIN.node_id.raw
    assert tag == b"fleet/envelope/v1"
    assert payload == encode(Ping(nonce=7))
    ADMIN.node_id.verify(b"fleet-sig\x00" + bytes([len(tag)]) + tag + payload, signature)


def test_expected_type_checked_after_signature() -> None:
    data = seal(ADMIN, Tag.ENVELOPE, Pong(nonce=7))
    with pytest.raises(UnexpectedMessageType, match=r"expected test\.ping, got test\.pong"):
        open_envelope(data, Tag.ENVELOPE, Ping)


def tampered(**changes: object) -> bytes:
    envelope = sign_envelope(ADMIN, Tag.ENVELOPE, Ping(nonce=7))
    return encode(dataclasses.replace(envelope, **changes))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "text"),
    [
        # Signed by another key, claiming to be ADMIN.
        (
            tampered(signature=sign(OTHER, Tag.ENVELOPE, encode(Ping(nonce=7)))),
            "does not verify for signer",
        ),
        # Someone else's id put on ADMIN's signature.
        (tampered(signer=OTHER.node_id), "does not verify for signer"),
        # Payload changed after signing.
        (tampered(payload=encode(Ping(nonce=8))), "does not verify for signer"),
        # Tag field rewritten to the expected purpose: the signature still binds the real one.
        (
            encode(
                dataclasses.replace(
                    sign_envelope(ADMIN, Tag.DISCO, Ping(nonce=7)), tag=Tag.ENVELOPE
                )
            ),
            "does not verify for signer",
        ),
        # Honestly labelled, but for another purpose.
        (
            seal(ADMIN, Tag.DISCO, Ping(nonce=7)),
            "signed for fleet/disco/v1, expected fleet/envelope/v1",
        ),
        (tampered(signature=b"\x00" * 64), "does not verify for signer"),
        (tampered(signature=b""), "does not verify for signer"),
        # Unsigned garbage is rejected by the signature, before anyone parses it.
        (tampered(payload=b"\xc1garbage"), "does not verify for signer"),
    ],
)
def test_forgeries_rejected(data: bytes, text: str) -> None:
    with pytest.raises(BadEnvelopeSignature, match=text):
        open_envelope(data, Tag.ENVELOPE, Ping)


def test_bit_flip_anywhere_in_signed_parts_rejected() -> None:
    data = seal(ADMIN, Tag.ENVELOPE, Ping(nonce=7))
    envelope = decode(data, SignedEnvelope)
    payload_at = data.index(envelope.payload)
    signature_at = data.index(envelope.signature)
    for at in [*range(payload_at, payload_at + len(envelope.payload)), signature_at, len(data) - 1]:
        flipped = bytearray(data)
        flipped[at] ^= 0x01
        with pytest.raises(BadEnvelopeSignature):
            open_envelope(bytes(flipped), Tag.ENVELOPE)


def test_signed_garbage_is_a_wire_error_after_verification() -> None:
    envelope = SignedEnvelope(
        signer=ADMIN.node_id,
        tag=Tag.ENVELOPE,
        payload=b"\xc1",
        signature=sign(ADMIN, Tag.ENVELOPE, b"\xc1"),
    )
    with pytest.raises(MalformedMessage):
        open_envelope(encode(envelope), Tag.ENVELOPE)


def test_envelope_forwarded_inside_another_message_stays_verifiable() -> None:
    original = seal(ADMIN, Tag.ENVELOPE, Ping(nonce=7))
    relayed = encode(Forward(hops=2, envelope=decode(original, SignedEnvelope)))
    received = decode(relayed, Forward)
    assert encode(received.envelope) == original  # byte-identical after forwarding
    assert verify_envelope(received.envelope, Tag.ENVELOPE, Ping) == (ADMIN.node_id, Ping(nonce=7))


def test_envelope_sealed_again_by_a_relaying_node() -> None:
    inner = sign_envelope(ADMIN, Tag.ENVELOPE, Ping(nonce=7))
    outer = seal(OTHER, Tag.ENVELOPE, inner)
    relay, opened = open_envelope(outer, Tag.ENVELOPE, SignedEnvelope)
    assert relay == OTHER.node_id
    assert opened == inner
    assert verify_envelope(opened, Tag.ENVELOPE, Ping) == (ADMIN.node_id, Ping(nonce=7))


def test_bad_envelope_is_the_common_base() -> None:
    assert issubclass(BadEnvelopeSignature, BadEnvelope)
