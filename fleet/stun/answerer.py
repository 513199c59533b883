"""The relay's STUN answers without I/O: request bytes and source address in, reply out.

This is how a node learns its reflexive (public) address without any third-party server: it
asks its relay, from its mesh socket. `StunAnswerer` decides; the relay's asyncio adapter
(fleet/relay/stun_responder.py) only moves datagrams and counts.

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

import enum
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass

from fleet.stun.codec import (
    BINDING_REQUEST,
    COMPREHENSION_OPTIONAL,
    Addr,
    StunError,
    binding_response,
    classic_binding_response,
    split,
    unknown_attributes_response,
)

_BINDING_REQUEST_TYPE = BINDING_REQUEST.to_bytes(2, "big")


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
    if data[:2] != _BINDING_REQUEST_TYPE:
        return None  # cheap: most junk and every response ends here, before the walk
    try:
        frame = split(data)
    except StunError:
        return None
    if frame.kind != BINDING_REQUEST:
        return None
    unknown = dict.fromkeys(t for t, _ in frame.attributes if t < COMPREHENSION_OPTIONAL)
    return _Request(frame.tx_id, frame.classic, tuple(unknown))


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
