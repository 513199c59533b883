"""Enrollment tokens: made and signed by fleetctl, presented by agents, opened by the coordinator.

A token is an EnrollToken signed with Tag.ENROLL_TOKEN (so no other signature of the admin's
can pass for one, nor a token for anything else), bound to one coordinator, carrying the
signer's capability chain. This module checks what the token itself says (signature,
addressee, expiry, shape); the coordinator then checks the signer's authority and scope and
counts the uses (fleet.coordinator.enrollment). The file is text: comment lines for people,
then the encoded envelope in base64 between BEGIN/END lines; only the armored part is read.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from dataclasses import dataclass

from fleet.capability import EMPTY_CHAIN, Chain
from fleet.identity import Identity, InvalidLabel, NodeId, normalize_tags
from fleet.protocol.messages import EnrollToken
from fleet.wire import SignedEnvelope, Tag, WireError, decode, encode, sign_envelope
from fleet.wire.envelope import verify_envelope

TOKEN_ID_LEN = 16
MAX_USES = 1_000_000
BEGIN = "-----BEGIN FLEET ENROLL TOKEN-----"
END = "-----END FLEET ENROLL TOKEN-----"


class EnrollTokenError(Exception):
    """A token that must be refused; `code` names why (bad-signature, expired, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class OpenedToken:
    signer: NodeId  # verified signature; authority not yet checked
    token: EnrollToken
    envelope: SignedEnvelope  # verbatim, for the audit log

    @property
    def token_hex(self) -> str:
        return self.token.token_id.hex()


def make_enroll_token(
    identity: Identity,
    coordinator: NodeId,
    tags: tuple[str, ...],
    *,
    lifetime: float,
    uses: int,
    chain: Chain = EMPTY_CHAIN,
    now: float | None = None,
) -> SignedEnvelope:
    """A signed token; ValueError (or InvalidLabel) says what is wrong with the arguments."""
    if not 1 <= uses <= MAX_USES:
        raise ValueError(f"uses must be 1..{MAX_USES}")
    if lifetime <= 0:
        raise ValueError("the token must expire in the future")
    issued = time.time() if now is None else now
    token = EnrollToken(
        coordinator=coordinator,
        token_id=os.urandom(TOKEN_ID_LEN),
        tags=normalize_tags(tags),
        issued_at=issued,
        expires_at=issued + lifetime,
        uses=uses,
        chain=chain,
    )
    return sign_envelope(identity, Tag.ENROLL_TOKEN, token)


def open_enroll_token(envelope: SignedEnvelope, coordinator: NodeId, now: float) -> OpenedToken:
    """Verify signature, addressee, expiry and shape; the caller checks authority and uses."""
    try:
        signer, token = verify_envelope(envelope, Tag.ENROLL_TOKEN, EnrollToken)
    except WireError as exc:
        raise EnrollTokenError("bad-signature", f"enrollment token refused: {exc}") from None
    if token.coordinator != coordinator:
        raise EnrollTokenError(
            "wrong-coordinator",
            f"the enrollment token is for coordinator {token.coordinator.short()}, "
            f"this is {coordinator.short()}",
        )
    if len(token.token_id) != TOKEN_ID_LEN or not 1 <= token.uses <= MAX_USES:
        raise EnrollTokenError("invalid", "the enrollment token is malformed")
    try:
        if normalize_tags(token.tags) != token.tags or not token.tags:
            raise EnrollTokenError("invalid", "the enrollment token's tags are not normalized")
    except InvalidLabel as exc:
        raise EnrollTokenError("invalid", f"the enrollment token's tags: {exc}") from None
    if token.expires_at <= now:
        raise EnrollTokenError(
            "expired", f"the enrollment token expired {now - token.expires_at:.0f} s ago"
        )
    return OpenedToken(signer, token, envelope)


def format_token_file(envelope: SignedEnvelope, token: EnrollToken) -> str:
    """The token file's text: what it grants, for people, then the armored envelope."""
    body = base64.b64encode(encode(envelope)).decode()
    lines = [
        "# fleet enrollment token: a bearer credential, keep it secret (mode 0600)",
        f"# token {token.token_id.hex()} signed by {envelope.signer}",
        f"# tags {' '.join(token.tags)}; at most {token.uses} device(s); "
        f"expires {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(token.expires_at))}",
        BEGIN,
        *(body[i : i + 64] for i in range(0, len(body), 64)),
        END,
    ]
    return "\n".join(lines) + "\n"


def parse_token_file(text: str, source: str = "enrollment token") -> SignedEnvelope:
    """The envelope of a token file's text; ValueError names the source and the problem."""
    lines = [line.strip() for line in text.splitlines()]
    if BEGIN not in lines or END not in lines or lines.index(END) < lines.index(BEGIN):
        raise ValueError(f"{source}: no {BEGIN} ... {END} block")
    armored = "".join(lines[lines.index(BEGIN) + 1 : lines.index(END)])
    try:
        envelope = decode(base64.b64decode(armored, validate=True), SignedEnvelope)
        decode(envelope.payload, EnrollToken)
    except (binascii.Error, WireError) as exc:
        raise ValueError(f"{source}: not an enrollment token ({exc})") from None
    return envelope
