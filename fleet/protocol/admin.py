"""Signed admin requests: made by fleetctl, opened by the coordinator (one implementation each).

A request is bound to one coordinator, one moment and one nonce, so a captured request can be
replayed neither to another coordinator nor later to the same one (the coordinator keeps the
nonces it has seen for the freshness window).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from fleet.capability import EMPTY_CHAIN, Chain
from fleet.identity import Identity, NodeId
from fleet.protocol.messages import AdminRequest
from fleet.wire import Message, SignedEnvelope, Tag, WireError, decode, encode, sign_envelope
from fleet.wire.envelope import verify_envelope

# How far an admin's clock may be from the coordinator's; also how long nonces are kept.
MAX_CLOCK_SKEW = 300.0
NONCE_LEN = 16


class AdminRequestError(Exception):
    """A request that must be refused; `code` is the ErrorReply code to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class OpenedRequest:
    signer: NodeId  # verified
    nonce: bytes
    issued_at: float
    body: Message
    envelope: SignedEnvelope  # kept verbatim for the audit log
    chain: Chain  # the signer's capability chain (not yet verified)


def make_admin_request(
    identity: Identity,
    coordinator: NodeId,
    body: Message,
    *,
    chain: Chain = EMPTY_CHAIN,
    now: float | None = None,
) -> SignedEnvelope:
    request = AdminRequest(
        coordinator=coordinator,
        issued_at=time.time() if now is None else now,
        nonce=os.urandom(NONCE_LEN),
        body=encode(body),
        chain=chain,
    )
    return sign_envelope(identity, Tag.ADMIN_REQUEST, request)


def open_admin_request(
    envelope: SignedEnvelope, coordinator: NodeId, *, now: float | None = None
) -> OpenedRequest:
    """Verify signature, addressee and freshness, then decode the body.

    The caller still decides whether the signer may do this (its chain), and checks the
    nonce is new.
    """
    try:
        signer, request = verify_envelope(envelope, Tag.ADMIN_REQUEST, AdminRequest)
    except WireError as exc:
        raise AdminRequestError("bad-signature", f"admin request refused: {exc}") from exc
    if request.coordinator != coordinator:
        raise AdminRequestError(
            "wrong-coordinator",
            f"request is addressed to coordinator {request.coordinator.short()}, "
            f"this is {coordinator.short()}",
        )
    now = time.time() if now is None else now
    if abs(now - request.issued_at) > MAX_CLOCK_SKEW:
        raise AdminRequestError(
            "stale",
            f"request issued {now - request.issued_at:+.0f} s from the coordinator's clock; "
            f"at most {MAX_CLOCK_SKEW:.0f} s allowed (check the clocks)",
        )
    if len(request.nonce) != NONCE_LEN:
        raise AdminRequestError("invalid", f"request nonce must be {NONCE_LEN} bytes")
    try:
        body = decode(request.body)
    except WireError as exc:
        raise AdminRequestError("invalid", f"request body: {exc}") from exc
    return OpenedRequest(signer, request.nonce, request.issued_at, body, envelope, request.chain)
