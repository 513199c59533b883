"""Signed envelopes: a message together with who signed it, for which purpose, and the signature.

The envelope keeps the signed payload as the exact bytes that were signed, so any node can
forward it (inside another message, or sealed again by a relaying node) and every receiver
verifies the original signer's signature itself: this is what lets announcements travel
through an untrusted coordinator today and between peers (gossip) later.

Signed bytes: `fleet.wire.tags.signed_bytes(tag, payload)`, that is
`b"fleet-sig\\x00" || len(tag) || tag || payload`, where payload is the canonical encoding of
the inner message (its type and version included). The tag is also carried in the envelope so
a receiver can say which purpose it got; the signature, not that field, is what binds it.
"""

from __future__ import annotations

from typing import TypeVar, overload

from fleet.identity import BadSignature, Identity, NodeId
from fleet.wire.errors import BadEnvelopeSignature
from fleet.wire.schema import DEFAULT_LIMITS, Limits, Message, decode, encode
from fleet.wire.tags import Tag, sign, verify

M = TypeVar("M", bound=Message)


class SignedEnvelope(Message, type="fleet.envelope", version=1):
    signer: NodeId
    tag: Tag
    payload: bytes  # canonical encoding of the inner message, verbatim
    signature: bytes


def sign_envelope(identity: Identity, tag: Tag, message: Message) -> SignedEnvelope:
    """Sign `message` for the purpose `tag`; the result can be a field of other messages."""
    payload = encode(message)
    return SignedEnvelope(
        signer=identity.node_id, tag=tag, payload=payload, signature=sign(identity, tag, payload)
    )


def seal(identity: Identity, tag: Tag, message: Message) -> bytes:
    """The canonical bytes of a signed envelope around `message`."""
    return encode(sign_envelope(identity, tag, message))


@overload
def verify_envelope(
    envelope: SignedEnvelope, tag: Tag, expected_type: None = None, *, limits: Limits = ...
) -> tuple[NodeId, Message]: ...
@overload
def verify_envelope(
    envelope: SignedEnvelope, tag: Tag, expected_type: type[M], *, limits: Limits = ...
) -> tuple[NodeId, M]: ...


def verify_envelope(
    envelope: SignedEnvelope,
    tag: Tag,
    expected_type: type[Message] | None = None,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[NodeId, Message]:
    """Check the signature for `tag`, then decode the payload; return (verified signer, message).

    The payload is parsed only after the signature verifies. The signer is authenticated but
    not authorized: whether it may say this is for the caller to decide.
    """
    if envelope.tag is not tag:
        raise BadEnvelopeSignature(
            f"envelope is signed for {envelope.tag.value.decode()}, expected {tag.value.decode()}"
        )
    try:
        verify(envelope.signer, tag, envelope.payload, envelope.signature)
    except BadSignature:
        raise BadEnvelopeSignature(
            f"envelope signature does not verify for signer {envelope.signer.short()}"
        ) from None
    return envelope.signer, decode(envelope.payload, expected_type, limits=limits)


@overload
def open_envelope(
    data: bytes, tag: Tag, expected_type: None = None, *, limits: Limits = ...
) -> tuple[NodeId, Message]: ...
@overload
def open_envelope(
    data: bytes, tag: Tag, expected_type: type[M], *, limits: Limits = ...
) -> tuple[NodeId, M]: ...


def open_envelope(
    data: bytes,
    tag: Tag,
    expected_type: type[Message] | None = None,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[NodeId, Message]:
    """Decode envelope bytes (from `seal`) and verify them; see `verify_envelope`."""
    envelope = decode(data, SignedEnvelope, limits=limits)
    return verify_envelope(envelope, tag, expected_type, limits=limits)
