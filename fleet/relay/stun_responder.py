"""The relay's STUN responder: answers Binding requests over UDP with the sender's address.

This is how a node learns its reflexive (public) address without any third-party server: it
asks its relay, from its mesh socket. `StunAnswerer` is the sans-IO core (request bytes and
source address in, response bytes out); `StunResponder` is its asyncio adapter.

What it answers (RFC 5389; section 12 for RFC 3489 clients):
- a Binding request with the magic cookie: a success response with XOR-MAPPED-ADDRESS and
  FINGERPRINT;
- a classic RFC 3489 Binding request (no magic cookie, a 128-bit transaction id): a success
  response with MAPPED-ADDRESS, echoing all 16 bytes of the id;
- a request carrying a comprehension-required attribute (type < 0x8000) that we do not act
  on, e.g. CHANGE-REQUEST of RFC 3489 NAT-type tests: error 420 with UNKNOWN-ATTRIBUTES
  listing them. The answerer uses no request attribute at all, so every such type is
  unknown to it. The same transaction is answered with an error at most
  `max_error_repeats` times: some classic clients (pystun3) resend an erroring request
  forever, which would otherwise keep client and relay in a ping-pong at full speed.
Anything else (garbage, other methods or classes, a bad length or FINGERPRINT) is dropped,
never answered. A response is at most 64 bytes unless the request listed several unknown
attributes (each adds 2 bytes to the answer, against 4 to the request).
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import cast

from aioice import stun as aiostun

from fleet.log import get_logger
from fleet.netaddr import format_host_port
from fleet.relay.metrics import RelayMetrics
from fleet.stun import HEADER_LEN, MAGIC_COOKIE, MAX_MESSAGE, Addr, binding_response

log = get_logger("fleet.relay.stun")

BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111
MAPPED_ADDRESS = 0x0001
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
FINGERPRINT = 0x8028
COMPREHENSION_OPTIONAL = 0x8000  # attribute types from here on may be ignored


class ReplyKind(enum.Enum):
    BINDING = "binding"  # RFC 5389 success: XOR-MAPPED-ADDRESS
    CLASSIC_BINDING = "classic-binding"  # RFC 3489 success: MAPPED-ADDRESS
    UNKNOWN_ATTRIBUTES = "unknown-attributes"  # error 420


@dataclass(frozen=True, slots=True)
class StunReply:
    kind: ReplyKind
    data: bytes


@dataclass(frozen=True, slots=True)
class _Request:
    tx_id: bytes  # 12 bytes (RFC 5389) or 16 (classic: the magic cookie field is part of it)
    classic: bool
    unknown: tuple[int, ...]  # comprehension-required attribute types, in order, once each


def _parse_request(data: bytes) -> _Request | None:
    """A Binding request we may answer, or None for anything to drop."""
    if not HEADER_LEN <= len(data) <= MAX_MESSAGE:
        return None
    kind, length = struct.unpack_from(">HH", data, 0)
    if kind != BINDING_REQUEST or length % 4 or HEADER_LEN + length != len(data):
        return None
    classic = data[4:8] != MAGIC_COOKIE
    unknown: dict[int, None] = {}
    pos = HEADER_LEN
    while pos < len(data):
        if pos + 4 > len(data):
            return None
        attr_type, attr_len = struct.unpack_from(">HH", data, pos)
        end = pos + 4 + attr_len + (-attr_len % 4)
        if end > len(data):
            return None
        if attr_type == FINGERPRINT and not classic:
            # RFC 5389 15.5: the last attribute, CRC-32 of everything before it.
            if attr_len != 4 or end != len(data):
                return None
            (value,) = struct.unpack_from(">I", data, pos + 4)
            if value != aiostun.message_fingerprint(data[:pos]):
                return None
        elif attr_type < COMPREHENSION_OPTIONAL:
            unknown[attr_type] = None
        pos = end
    tx_id = data[4:HEADER_LEN] if classic else data[8:HEADER_LEN]
    return _Request(tx_id, classic, tuple(unknown))


def _header(kind: int, tx_id: bytes, body: bytes, *, classic: bool) -> bytes:
    cookie = b"" if classic else MAGIC_COOKIE  # a classic id already holds those 4 bytes
    return struct.pack(">HH", kind, len(body)) + cookie + tx_id + body


def _attribute(attr_type: int, value: bytes) -> bytes:
    return struct.pack(">HH", attr_type, len(value)) + value + bytes(-len(value) % 4)


def _with_fingerprint(message: bytes) -> bytes:
    crc = aiostun.message_fingerprint(message)
    body_len = len(message) - HEADER_LEN + 8
    return (
        message[:2]
        + struct.pack(">H", body_len)
        + message[4:]
        + _attribute(FINGERPRINT, struct.pack(">I", crc))
    )


def classic_binding_response(tx_id: bytes, mapped: Addr) -> bytes:
    """RFC 5389 section 12: MAPPED-ADDRESS (not XOR-), the request's 16-byte id copied."""
    body = _attribute(MAPPED_ADDRESS, aiostun.pack_address(mapped))
    return _header(BINDING_SUCCESS, tx_id, body, classic=True)


def unknown_attributes_response(tx_id: bytes, unknown: tuple[int, ...], *, classic: bool) -> bytes:
    """Binding Error Response 420 listing the attribute types we do not understand."""
    listed = list(unknown)
    if classic and len(listed) % 2:
        listed.append(listed[0])  # RFC 3489 11.2.7: an odd list repeats one entry
    body = _attribute(ERROR_CODE, aiostun.pack_error_code((420, "Unknown Attribute"))) + _attribute(
        UNKNOWN_ATTRIBUTES, struct.pack(f">{len(listed)}H", *listed)
    )
    message = _header(BINDING_ERROR, tx_id, body, classic=classic)
    return message if classic else _with_fingerprint(message)


def _mapped(source: tuple[str | int, ...]) -> Addr:
    """The requester's address as the answer states it (IPv4-mapped IPv6 as plain IPv4)."""
    ip = ipaddress.ip_address(str(source[0]).partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(source[1])


class StunAnswerer:
    """The responder without I/O: `answer(datagram, source)` is the reply to send, or None."""

    def __init__(self, *, max_error_repeats: int = 3, remember: int = 4096) -> None:
        self.max_error_repeats = max_error_repeats
        self.remember = remember
        # (source, transaction id) -> error answers sent; bounded, oldest forgotten first
        self._errors: OrderedDict[tuple[Addr, bytes], int] = OrderedDict()

    def answer(self, data: bytes, source: tuple[str | int, ...]) -> StunReply | None:
        request = _parse_request(data)
        if request is None:
            return None
        try:
            mapped = _mapped(source)
        except (ValueError, IndexError):
            return None
        if request.unknown:
            key = (mapped, request.tx_id)
            count = self._errors.pop(key, 0)
            if count >= self.max_error_repeats:
                self._errors[key] = count
                return None
            self._errors[key] = count + 1
            while len(self._errors) > self.remember:
                self._errors.popitem(last=False)
            error = unknown_attributes_response(
                request.tx_id, request.unknown, classic=request.classic
            )
            return StunReply(ReplyKind.UNKNOWN_ATTRIBUTES, error)
        if request.classic:
            return StunReply(
                ReplyKind.CLASSIC_BINDING, classic_binding_response(request.tx_id, mapped)
            )
        return StunReply(ReplyKind.BINDING, binding_response(request.tx_id, mapped))


class StunResponder(asyncio.DatagramProtocol):
    """asyncio adapter: feeds each datagram to a StunAnswerer and counts the outcome."""

    def __init__(self, metrics: RelayMetrics, answerer: StunAnswerer | None = None) -> None:
        self.metrics = metrics
        self.answerer = answerer or StunAnswerer()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        reply = self.answerer.answer(data, addr)
        if reply is None or self.transport is None:
            self.metrics.stun_rejected += 1
            return
        if reply.kind is ReplyKind.UNKNOWN_ATTRIBUTES:
            self.metrics.stun_errors += 1
        else:
            self.metrics.stun_requests += 1
        self.transport.sendto(reply.data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("relay_stun_error", error=str(exc))


class StunListenError(Exception):
    """The STUN port could not be bound (the message names the address and why)."""

    def __init__(self, address: Addr, reason: str) -> None:
        super().__init__(f"cannot answer STUN on UDP {format_host_port(*address)}: {reason}")
        self.address = address
        self.reason = reason


async def start_stun_responder(
    host: str, port: int, metrics: RelayMetrics
) -> tuple[asyncio.DatagramTransport, tuple[str, int]]:
    """Listen for STUN on UDP HOST:PORT; returns the transport and the bound address."""
    loop = asyncio.get_running_loop()
    try:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: StunResponder(metrics), local_addr=(host, port)
        )
    except OSError as exc:
        raise StunListenError((host, port), exc.strerror or str(exc)) from exc
    bound = transport.get_extra_info("sockname")
    return transport, (str(bound[0]), int(bound[1]))
