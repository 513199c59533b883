"""STUN in one place: the message codec (`codec`) and the relay's sans-IO answerer (`answerer`).

The relay's asyncio adapter is fleet/relay/stun_responder.py; the mesh's client-side probing
is fleet/mesh/reflexive.py. Both use only what this package exports.
"""

from fleet.stun.answerer import ReplyKind, StunAnswerer, StunReply
from fleet.stun.codec import (
    HEADER_LEN,
    MAGIC_COOKIE,
    MAX_MESSAGE,
    TX_ID_LEN,
    Addr,
    BindingRequest,
    BindingResponse,
    Frame,
    StunError,
    binding_request,
    binding_response,
    classic_binding_response,
    decode,
    encode,
    looks_like_stun,
    new_transaction_id,
    split,
    unknown_attributes_response,
)

__all__ = [
    "HEADER_LEN",
    "MAGIC_COOKIE",
    "MAX_MESSAGE",
    "TX_ID_LEN",
    "Addr",
    "BindingRequest",
    "BindingResponse",
    "Frame",
    "ReplyKind",
    "StunAnswerer",
    "StunError",
    "StunReply",
    "binding_request",
    "binding_response",
    "classic_binding_response",
    "decode",
    "encode",
    "looks_like_stun",
    "new_transaction_id",
    "split",
    "unknown_attributes_response",
]
