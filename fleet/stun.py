"""STUN Binding messages (RFC 5389), shared by the relay's STUN responder and the mesh.

The codec is aioice's (`aioice.stun`: it encodes XOR-MAPPED-ADDRESS and FINGERPRINT
correctly and is tested against real servers); this module adds what it leaves out: a strict
check of the header (magic cookie, length, class, method), a size cap, and one error type for
anything malformed, so bad input from the internet never raises anything else.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass

from aioice import stun as aiostun

MAGIC_COOKIE = aiostun.COOKIE.to_bytes(4, "big")
HEADER_LEN = 20
TX_ID_LEN = 12
MAX_MESSAGE = 548  # a Binding message of ours is far smaller; bigger is not worth parsing

Addr = tuple[str, int]


class StunError(ValueError):
    """Bytes that are not an acceptable STUN message (the message says why)."""


def looks_like_stun(data: bytes) -> bool:
    """Cheap demultiplexing test: top two bits zero and the magic cookie at offset 4.

    QUIC v1 packets always have the 0x40 bit set and disco packets start with our own
    magic, so neither can pass this test.
    """
    return len(data) >= HEADER_LEN and data[0] < 0x40 and data[4:8] == MAGIC_COOKIE


def new_transaction_id() -> bytes:
    return os.urandom(TX_ID_LEN)


def binding_request(tx_id: bytes) -> bytes:
    if len(tx_id) != TX_ID_LEN:
        raise ValueError("a STUN transaction id is 12 bytes")
    message = aiostun.Message(aiostun.Method.BINDING, aiostun.Class.REQUEST, tx_id)
    message.add_fingerprint()
    return bytes(message)


def binding_response(tx_id: bytes, mapped: Addr) -> bytes:
    """A Binding success response telling the requester its address as we saw it."""
    message = aiostun.Message(
        aiostun.Method.BINDING,
        aiostun.Class.RESPONSE,
        tx_id,
        {"XOR-MAPPED-ADDRESS": (mapped[0], mapped[1])},
    )
    message.add_fingerprint()
    return bytes(message)


@dataclass(frozen=True, slots=True)
class BindingRequest:
    tx_id: bytes


@dataclass(frozen=True, slots=True)
class BindingResponse:
    tx_id: bytes
    mapped: Addr


def decode(data: bytes) -> BindingRequest | BindingResponse:
    """Parse a Binding request or success response; raise StunError for anything else."""
    if len(data) > MAX_MESSAGE:
        raise StunError("STUN message too large")
    if not looks_like_stun(data):
        raise StunError("not a STUN message (no magic cookie)")
    (length,) = struct.unpack_from(">H", data, 2)
    if length % 4 or HEADER_LEN + length != len(data):
        raise StunError("STUN length does not match the datagram")
    try:
        message = aiostun.parse_message(data)
    except (ValueError, struct.error, IndexError, UnicodeDecodeError) as exc:
        raise StunError(f"malformed STUN message: {exc}") from exc
    if message.message_method != aiostun.Method.BINDING:
        raise StunError(f"STUN method {message.message_method.name} is not Binding")
    tx_id = bytes(message.transaction_id)
    if message.message_class == aiostun.Class.REQUEST:
        return BindingRequest(tx_id)
    if message.message_class != aiostun.Class.RESPONSE:
        raise StunError(f"STUN class {message.message_class.name} is not handled")
    mapped = message.attributes.get("XOR-MAPPED-ADDRESS") or message.attributes.get(
        "MAPPED-ADDRESS"
    )
    if mapped is None:
        raise StunError("STUN response without a mapped address")
    host, port = mapped
    try:
        ip = ipaddress.ip_address(host)
    except ValueError as exc:
        raise StunError(f"bad mapped address {host!r}") from exc
    if not 0 < port < 65536:
        raise StunError(f"bad mapped port {port}")
    return BindingResponse(tx_id, (str(ip), int(port)))
