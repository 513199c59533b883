"""The relay's STUN answers (sans-IO): RFC 5389, classic RFC 3489 clients, error 420, garbage.

Requests come from aioice's encoder and from pystun3 (a classic RFC 3489 client from PyPI,
driven here over an in-memory socket), not only from our own encoder.
"""

from __future__ import annotations

import binascii
import struct
from collections import deque

import pytest
import stun as pystun3  # pystun3, a classic RFC 3489 client (untyped: see pyproject)
from aioice import stun as aiostun
from hypothesis import given
from hypothesis import strategies as st

from fleet import stun
from fleet.stun import ReplyKind, StunAnswerer

SOURCE = ("198.51.100.7", 41641)
TX = bytes(range(12))
CLASSIC_TX = bytes(range(100, 116))  # 16 bytes, no magic cookie in them
CHANGE_REQUEST = 0x0003


def classic_request(tx_id: bytes, attributes: bytes = b"") -> bytes:
    return struct.pack(">HH", 0x0001, len(attributes)) + tx_id + attributes


def attributes_of(data: bytes) -> dict[int, bytes]:
    """Attribute type -> value of a STUN message (classic or not), checked for framing."""
    (length,) = struct.unpack_from(">H", data, 2)
    assert len(data) == 20 + length
    out, pos = {}, 20
    while pos < len(data):
        attr_type, attr_len = struct.unpack_from(">HH", data, pos)
        out[attr_type] = data[pos + 4 : pos + 4 + attr_len]
        pos += 4 + attr_len + (-attr_len % 4)
    assert pos == len(data)
    return out


def test_rfc5389_request_gets_xor_mapped_address() -> None:
    request = aiostun.Message(aiostun.Method.BINDING, aiostun.Class.REQUEST, TX)
    request.add_fingerprint()
    reply = StunAnswerer().answer(bytes(request), SOURCE)
    assert reply is not None
    assert reply.kind is ReplyKind.BINDING
    parsed = aiostun.parse_message(reply.data)  # checks FINGERPRINT
    assert parsed.message_class == aiostun.Class.RESPONSE
    assert parsed.transaction_id == TX
    assert parsed.attributes["XOR-MAPPED-ADDRESS"] == SOURCE
    assert stun.decode(reply.data) == stun.BindingResponse(TX, SOURCE)  # what nodes read


def test_request_without_fingerprint_is_answered_too() -> None:
    request = bytes(aiostun.Message(aiostun.Method.BINDING, aiostun.Class.REQUEST, TX))
    reply = StunAnswerer().answer(request, SOURCE)
    assert reply is not None
    assert stun.decode(reply.data) == stun.BindingResponse(TX, SOURCE)


def test_classic_request_gets_mapped_address_and_its_whole_transaction_id() -> None:
    reply = StunAnswerer().answer(classic_request(CLASSIC_TX), SOURCE)
    assert reply is not None
    assert reply.kind is ReplyKind.CLASSIC_BINDING
    assert reply.data[:2] == b"\x01\x01"
    assert reply.data[4:20] == CLASSIC_TX  # the 128-bit id, where 5389 has its cookie
    attrs = attributes_of(reply.data)
    assert list(attrs) == [0x0001]  # MAPPED-ADDRESS only: no XOR-, no FINGERPRINT
    assert aiostun.unpack_address(attrs[0x0001]) == SOURCE


def test_ipv6_and_ipv4_mapped_sources() -> None:
    answerer = StunAnswerer()
    reply = answerer.answer(classic_request(CLASSIC_TX), ("2001:db8::7", 5000, 0, 0))
    assert reply is not None
    assert aiostun.unpack_address(attributes_of(reply.data)[0x0001]) == ("2001:db8::7", 5000)
    reply = answerer.answer(stun.binding_request(TX), ("::ffff:203.0.113.9", 7000, 0, 0))
    assert reply is not None
    assert stun.decode(reply.data) == stun.BindingResponse(TX, ("203.0.113.9", 7000))


@pytest.mark.parametrize("classic", [False, True])
def test_change_request_gets_error_420_listing_it(classic: bool) -> None:
    change = struct.pack(">HHI", CHANGE_REQUEST, 4, 6)
    if classic:
        request = classic_request(CLASSIC_TX, change)
    else:
        request = struct.pack(">HH", 0x0001, 8) + stun.MAGIC_COOKIE + TX + change
    reply = StunAnswerer().answer(request, SOURCE)
    assert reply is not None
    assert reply.kind is ReplyKind.UNKNOWN_ATTRIBUTES
    assert reply.data[:2] == b"\x01\x11"  # Binding Error Response
    attrs = attributes_of(reply.data)
    assert aiostun.unpack_error_code(attrs[0x0009]) == (420, "Unknown Attribute")
    listed = struct.unpack(f">{len(attrs[0x000A]) // 2}H", attrs[0x000A])
    if classic:
        assert reply.data[4:20] == CLASSIC_TX
        assert listed == (CHANGE_REQUEST, CHANGE_REQUEST)  # RFC 3489: an odd list repeats one
        assert 0x8028 not in attrs
    else:
        parsed = aiostun.parse_message(reply.data)  # FINGERPRINT is right
        assert parsed.message_class == aiostun.Class.ERROR
        assert parsed.transaction_id == TX
        assert parsed.error_code == 420
        assert listed == (CHANGE_REQUEST,)
    assert len(reply.data) <= 64


def test_every_unknown_required_attribute_is_listed_once_and_optional_ones_ignored() -> None:
    message = aiostun.Message(
        aiostun.Method.BINDING,
        aiostun.Class.REQUEST,
        TX,
        {"PRIORITY": 5, "USE-CANDIDATE": None, "SOFTWARE": "x", "ICE-CONTROLLING": 1},
    )
    message.add_fingerprint()
    reply = StunAnswerer().answer(bytes(message), SOURCE)
    assert reply is not None
    listed = attributes_of(reply.data)[0x000A]
    assert struct.unpack(">2H", listed) == (0x0024, 0x0025)
    # Only comprehension-optional attributes: a plain success.
    optional = aiostun.Message(
        aiostun.Method.BINDING, aiostun.Class.REQUEST, TX, {"SOFTWARE": "pion", "ICE-CONTROLLED": 2}
    )
    optional.add_fingerprint()
    ok = StunAnswerer().answer(bytes(optional), SOURCE)
    assert ok is not None
    assert ok.kind is ReplyKind.BINDING


def test_an_erroring_transaction_is_answered_a_few_times_then_dropped() -> None:
    answerer = StunAnswerer(max_error_repeats=3, remember=2)
    request = classic_request(CLASSIC_TX, struct.pack(">HHI", CHANGE_REQUEST, 4, 6))
    answers = [answerer.answer(request, SOURCE) for _ in range(10)]
    assert [a is not None for a in answers] == [True] * 3 + [False] * 7
    # Another source or another transaction is answered; the memory stays bounded.
    assert answerer.answer(request, ("198.51.100.8", 1)) is not None
    other = classic_request(bytes(16), struct.pack(">HHI", CHANGE_REQUEST, 4, 6))
    assert answerer.answer(other, SOURCE) is not None
    assert len(answerer._errors) == 2
    assert answerer.answer(request, SOURCE) is not None  # forgotten, so answered again
    assert answerer.answer(classic_request(CLASSIC_TX), SOURCE) is not None  # no limit on success


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello",
        bytes(20),  # type 0: not a Binding request
        stun.binding_response(TX, SOURCE),  # a response, not a request
        bytes(aiostun.Message(aiostun.Method.ALLOCATE, aiostun.Class.REQUEST, TX)),
        bytes(aiostun.Message(aiostun.Method.BINDING, aiostun.Class.INDICATION, TX)),
        stun.binding_request(TX)[:-1],  # length does not match
        stun.binding_request(TX) + bytes(4),
        classic_request(CLASSIC_TX, b"\x00\x03\x00\x08\x00\x00\x00\x06"),  # attribute overruns
        classic_request(CLASSIC_TX, b"\x00\x03\x00"),  # length not a multiple of 4
        stun.binding_request(TX)[:-1] + b"\x00",  # wrong FINGERPRINT
        b"\x00\x01" + struct.pack(">H", 600) + stun.MAGIC_COOKIE + TX + bytes(600),  # too big
    ],
)
def test_anything_else_is_dropped(data: bytes) -> None:
    assert StunAnswerer().answer(data, SOURCE) is None


def test_fingerprint_must_be_the_last_attribute() -> None:
    request = stun.binding_request(TX)
    trailing = struct.pack(">HH", 0x0003, 4) + bytes(4)
    data = request[:2] + struct.pack(">H", len(request) - 20 + 8) + request[4:] + trailing
    assert StunAnswerer().answer(data, SOURCE) is None


def test_garbage_source_addresses_are_dropped() -> None:
    assert StunAnswerer().answer(stun.binding_request(TX), ("not-an-ip", 1)) is None


@given(st.binary(max_size=200), st.booleans(), st.booleans())
def test_garbage_is_never_answered_and_never_raises(data: bytes, frame: bool, cookie: bool) -> None:
    if frame:  # make it past the header checks, so the attribute walk gets the garbage
        body = data[20:][: (len(data) - 20) // 4 * 4] if len(data) > 20 else b""
        head = (data + bytes(20))[:20]
        magic = stun.MAGIC_COOKIE if cookie else head[4:8]
        data = b"\x00\x01" + struct.pack(">H", len(body)) + magic + head[8:20] + body
    reply = StunAnswerer().answer(data, SOURCE)
    if reply is None:
        return
    # Whatever is answered was a well-formed Binding request, and the answer says so.
    assert data[:2] == b"\x00\x01"
    assert reply.data[4:20] == data[4:20]
    assert len(reply.data) <= 20 + 28 + 4 + 2 * (len(data) // 4) + 4 + 8
    if reply.kind is ReplyKind.BINDING:
        assert stun.decode(reply.data) == stun.BindingResponse(data[8:20], SOURCE)


class MemorySocket:
    """Just enough of a UDP socket for pystun3: datagrams go to a StunAnswerer in memory."""

    def __init__(self, answerer: StunAnswerer, source: tuple[str, int]) -> None:
        self.answerer = answerer
        self.source = source
        self.inbox: deque[bytes] = deque()
        self.received: list[bytes] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        reply = self.answerer.answer(data, self.source)
        if reply is not None:
            self.inbox.append(reply.data)
        return len(data)

    def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
        if not self.inbox:
            raise TimeoutError  # socket.timeout, as a real socket with a timeout raises
        data = self.inbox.popleft()
        self.received.append(data)
        return data, ("192.0.2.1", 3478)


def test_pystun3_reads_its_mapped_address() -> None:
    pystun3._initialize()
    sock = MemorySocket(StunAnswerer(), SOURCE)
    result = pystun3.stun_test(sock, "192.0.2.1", 3478, "0.0.0.0", 54320)
    assert result["Resp"] is True
    assert (result["ExternalIP"], result["ExternalPort"]) == SOURCE


def test_pystun3_change_request_gets_420_and_then_silence() -> None:
    """pystun3 resends an erroring request at once, forever (its loop only ends on a success
    or a timeout): the answerer's repeat limit is what ends it, as 'no response'."""
    pystun3._initialize()
    sock = MemorySocket(StunAnswerer(max_error_repeats=3), SOURCE)
    change = "".join([pystun3.ChangeRequest, "0004", "00000006"])
    result = pystun3.stun_test(sock, "192.0.2.1", 3478, "0.0.0.0", 54320, change)
    assert result["Resp"] is False
    assert len(sock.received) == 3
    for data in sock.received:
        assert data[:2] == b"\x01\x11"
        attrs = attributes_of(data)
        assert aiostun.unpack_error_code(attrs[0x0009])[0] == 420
        assert binascii.hexlify(attrs[0x000A]) == b"00030003"
