"""The STUN codec: round trips, strictness, and demultiplexing against QUIC and disco."""

from __future__ import annotations

import contextlib
import struct

import pytest
from aioice import stun as aiostun
from hypothesis import given
from hypothesis import strategies as st

from fleet import stun
from fleet.identity import Identity
from fleet.mesh import disco

TX = bytes(range(12))


def test_request_and_response_round_trip() -> None:
    assert stun.decode(stun.binding_request(TX)) == stun.BindingRequest(TX)
    response = stun.binding_response(TX, ("203.0.113.7", 41641))
    assert stun.decode(response) == stun.BindingResponse(TX, ("203.0.113.7", 41641))
    v6 = stun.binding_response(TX, ("2001:db8::1", 3478))
    assert stun.decode(v6) == stun.BindingResponse(TX, ("2001:db8::1", 3478))


def test_response_uses_xor_mapped_address_per_rfc5389() -> None:
    # The address must not appear in clear (NATs that rewrite addresses in payloads).
    response = stun.binding_response(TX, ("203.0.113.7", 41641))
    assert bytes([203, 0, 113, 7]) not in response
    parsed = aiostun.parse_message(response)
    assert parsed.attributes["XOR-MAPPED-ADDRESS"] == ("203.0.113.7", 41641)
    assert "FINGERPRINT" in parsed.attributes


def test_plain_mapped_address_from_old_servers_is_accepted() -> None:
    message = aiostun.Message(
        aiostun.Method.BINDING,
        aiostun.Class.RESPONSE,
        TX,
        {"MAPPED-ADDRESS": ("198.51.100.1", 5000)},
    )
    assert stun.decode(bytes(message)) == stun.BindingResponse(TX, ("198.51.100.1", 5000))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "no magic"),
        (stun.binding_request(TX)[:-1], "length"),
        (stun.binding_request(TX) + b"\x00" * 4, "length"),
        (stun.binding_request(TX)[:4] + b"\x00\x00\x00\x00" + TX, "magic"),
        (
            bytes(aiostun.Message(aiostun.Method.ALLOCATE, aiostun.Class.REQUEST, TX)),
            "not Binding",
        ),
        (
            bytes(aiostun.Message(aiostun.Method.BINDING, aiostun.Class.RESPONSE, TX)),
            "without a mapped address",
        ),
        (
            bytes(aiostun.Message(aiostun.Method.BINDING, aiostun.Class.ERROR, TX)),
            "not handled",
        ),
        (b"\x01\x01" + struct.pack(">H", 600) + stun.MAGIC_COOKIE + TX + bytes(600), "large"),
    ],
)
def test_bad_messages_raise_stun_error(data: bytes, why: str) -> None:
    with pytest.raises(stun.StunError, match=why):
        stun.decode(data)


def test_corrupted_fingerprint_is_rejected() -> None:
    data = bytearray(stun.binding_response(TX, ("203.0.113.7", 41641)))
    data[-1] ^= 1
    with pytest.raises(stun.StunError, match="fingerprint"):
        stun.decode(bytes(data))


@given(st.binary(max_size=120))
def test_garbage_only_ever_raises_stun_error(data: bytes) -> None:
    framed = data[:2] + struct.pack(">H", max(len(data) - 20, 0)) + stun.MAGIC_COOKIE + data[8:]
    for candidate in (data, framed):
        with contextlib.suppress(stun.StunError):
            stun.decode(candidate)


def test_stun_is_never_confused_with_quic_or_disco() -> None:
    identity = Identity.generate()
    ping = disco.encode(identity, Identity.generate().node_id, disco.Ping.new(), 0.0)
    assert not stun.looks_like_stun(ping)
    assert disco.is_disco(ping)
    quic_like = bytes([0xC0]) + bytes(3) + stun.MAGIC_COOKIE + bytes(1200)
    assert not stun.looks_like_stun(quic_like)
    assert stun.looks_like_stun(stun.binding_request(TX))
    assert not disco.is_disco(stun.binding_request(TX))


def test_split_reads_both_forms_and_checks_the_fingerprint_once() -> None:
    frame = stun.split(stun.binding_response(TX, ("203.0.113.7", 41641)))
    assert (frame.kind, frame.classic, frame.tx_id) == (0x0101, False, TX)
    assert [t for t, _ in frame.attributes] == [0x0020]  # the checked FINGERPRINT left out
    classic_tx = bytes(range(100, 116))
    classic = stun.classic_binding_response(classic_tx, ("198.51.100.1", 5000))
    frame = stun.split(classic)
    assert (frame.classic, frame.tx_id) == (True, classic_tx)
    assert frame.attributes == ((0x0001, aiostun.pack_address(("198.51.100.1", 5000))),)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x01\x01\x00\x04" + stun.MAGIC_COOKIE + TX + b"\x00\x20\x00\x08", "overruns"),
        (
            stun.binding_request(TX)[:2]
            + struct.pack(">H", 16)
            + stun.binding_request(TX)[4:]
            + struct.pack(">HH", 0x8022, 1)
            + b"x\x00\x00\x00",
            "not the last",
        ),
        (b"\x41\x01\x00\x00" + stun.MAGIC_COOKIE + TX, "top two bits"),
    ],
)
def test_split_refuses_what_the_framing_forbids(data: bytes, why: str) -> None:
    with pytest.raises(stun.StunError, match=why):
        stun.split(data)
