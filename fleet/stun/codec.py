"""STUN Binding messages (RFC 5389, and RFC 3489's classic form): the one encoder and decoder.

`split` is the framing every reader shares: a size cap, the header, an exact length, the
attribute walk and the FINGERPRINT check, with one error type for anything malformed, so bad
input from the internet never raises anything else. `decode` reads what a node cares about
(a Binding request or success response with its mapped address); the relay's answerer reads
requests through `split` too. Addresses and error codes are packed by aioice's helpers
(`aioice.stun`, tested against real servers); the messages around them are built here.
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

# Message types (method and class bits together) and the parts of them.
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111
BINDING = 0x0001
METHOD_MASK = 0x3EEF
CLASS_MASK = 0x0110
CLASS_REQUEST = 0x0000
CLASS_SUCCESS = 0x0100

# Attribute types.
MAPPED_ADDRESS = 0x0001
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
XOR_MAPPED_ADDRESS = 0x0020
FINGERPRINT = 0x8028
COMPREHENSION_OPTIONAL = 0x8000  # attribute types from here on may be ignored

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


# --- encoding ----------------------------------------------------------------------------


def _attribute(attr_type: int, value: bytes) -> bytes:
    return struct.pack(">HH", attr_type, len(value)) + value + bytes(-len(value) % 4)


def encode(
    kind: int,
    tx_id: bytes,
    attributes: tuple[tuple[int, bytes], ...] = (),
    *,
    classic: bool = False,
    fingerprint: bool = True,
) -> bytes:
    """A message of type `kind`; classic (RFC 3489) ones have a 16-byte id and no cookie.

    FINGERPRINT (RFC 5389 15.5) goes last, its CRC over everything before it with the length
    already counting it; classic messages never carry one.
    """
    body = b"".join(_attribute(t, v) for t, v in attributes)
    cookie = b"" if classic else MAGIC_COOKIE  # a classic id already holds those 4 bytes
    message = struct.pack(">HH", kind, len(body)) + cookie + tx_id + body
    if not fingerprint or classic:
        return message
    crc = aiostun.message_fingerprint(message)  # computed with the final length
    length = len(body) + 8
    return (
        message[:2]
        + struct.pack(">H", length)
        + message[4:]
        + _attribute(FINGERPRINT, struct.pack(">I", crc))
    )


def binding_request(tx_id: bytes) -> bytes:
    if len(tx_id) != TX_ID_LEN:
        raise ValueError("a STUN transaction id is 12 bytes")
    return encode(BINDING_REQUEST, tx_id)


def binding_response(tx_id: bytes, mapped: Addr) -> bytes:
    """A Binding success response telling the requester its address as we saw it."""
    xor_mapped = aiostun.pack_xor_address((mapped[0], mapped[1]), tx_id)
    return encode(BINDING_SUCCESS, tx_id, ((XOR_MAPPED_ADDRESS, xor_mapped),))


def classic_binding_response(tx_id: bytes, mapped: Addr) -> bytes:
    """RFC 5389 section 12: MAPPED-ADDRESS (not XOR-), the request's 16-byte id copied."""
    attributes = ((MAPPED_ADDRESS, aiostun.pack_address(mapped)),)
    return encode(BINDING_SUCCESS, tx_id, attributes, classic=True)


def unknown_attributes_response(tx_id: bytes, unknown: tuple[int, ...], *, classic: bool) -> bytes:
    """Binding Error Response 420 listing the attribute types we do not understand."""
    listed = list(unknown)
    if classic and len(listed) % 2:
        listed.append(listed[0])  # RFC 3489 11.2.7: an odd list repeats one entry
    attributes = (
        (ERROR_CODE, aiostun.pack_error_code((420, "Unknown Attribute"))),
        (UNKNOWN_ATTRIBUTES, struct.pack(f">{len(listed)}H", *listed)),
    )
    return encode(BINDING_ERROR, tx_id, attributes, classic=classic)


# --- decoding ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """A message split into its parts, framing and FINGERPRINT checked, nothing interpreted."""

    kind: int  # the message type: method and class
    classic: bool  # no magic cookie (RFC 3489): the transaction id is then 16 bytes
    tx_id: bytes
    attributes: tuple[tuple[int, bytes], ...]  # in order; a checked FINGERPRINT left out


def split(data: bytes) -> Frame:
    """The parts of a STUN message of either form; StunError for anything malformed."""
    if len(data) > MAX_MESSAGE:
        raise StunError("STUN message too large")
    if len(data) < HEADER_LEN:
        raise StunError("not a STUN message (shorter than its header)")
    kind, length = struct.unpack_from(">HH", data, 0)
    if kind >= 0x4000:
        raise StunError("not a STUN message (the top two bits are set)")
    if length % 4 or HEADER_LEN + length != len(data):
        raise StunError("STUN length does not match the datagram")
    classic = data[4:8] != MAGIC_COOKIE
    attributes: list[tuple[int, bytes]] = []
    pos = HEADER_LEN
    while pos < len(data):
        if pos + 4 > len(data):
            raise StunError("truncated STUN attribute")
        attr_type, attr_len = struct.unpack_from(">HH", data, pos)
        end = pos + 4 + attr_len + (-attr_len % 4)
        if end > len(data):
            raise StunError("STUN attribute overruns the message")
        value = data[pos + 4 : pos + 4 + attr_len]
        if attr_type == FINGERPRINT and not classic:
            if attr_len != 4 or end != len(data):
                raise StunError("STUN fingerprint is not the last attribute")
            if struct.unpack(">I", value)[0] != aiostun.message_fingerprint(data[:pos]):
                raise StunError("STUN fingerprint does not match")
        else:
            attributes.append((attr_type, value))
        pos = end
    tx_id = data[4:HEADER_LEN] if classic else data[8:HEADER_LEN]
    return Frame(kind, classic, tx_id, tuple(attributes))


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
    frame = split(data)
    method, message_class = frame.kind & METHOD_MASK, frame.kind & CLASS_MASK
    if method != BINDING:
        raise StunError(f"STUN method 0x{method:03x} is not Binding")
    if message_class == CLASS_REQUEST:
        return BindingRequest(frame.tx_id)
    if message_class != CLASS_SUCCESS:
        raise StunError(f"STUN class {aiostun.Class(message_class).name} is not handled")
    return BindingResponse(frame.tx_id, _mapped_address(frame))


def _mapped_address(frame: Frame) -> Addr:
    """XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS from old servers; nothing after MESSAGE-INTEGRITY
    counts (it would not be authenticated, RFC 8489 section 9)."""
    found: dict[int, bytes] = {}
    for attr_type, value in frame.attributes:
        if attr_type == MESSAGE_INTEGRITY:
            break
        found[attr_type] = value
    xored = XOR_MAPPED_ADDRESS in found
    packed = found.get(XOR_MAPPED_ADDRESS if xored else MAPPED_ADDRESS)
    if packed is None:
        raise StunError("STUN response without a mapped address")
    try:
        if xored:
            host, port = aiostun.unpack_xor_address(packed, frame.tx_id)
        else:
            host, port = aiostun.unpack_address(packed)
    except (ValueError, struct.error) as exc:
        raise StunError(f"bad mapped address: {exc}") from exc
    if not 0 < port < 65536:
        raise StunError(f"bad mapped port {port}")
    return str(ipaddress.ip_address(host)), int(port)
