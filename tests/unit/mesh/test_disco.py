"""Disco packets: round trips, forgery, staleness, misaddressing, garbage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.identity import Identity
from fleet.mesh import disco
from fleet.mesh.disco import CallMeMaybe, Ping, Pong

NOW = 1_800_000_000.0
ALICE, BOB = Identity.generate(), Identity.generate()


@pytest.mark.parametrize(
    "message",
    [
        Ping.new(),
        Pong(b"t" * 12, ("192.0.2.7", 41641)),
        Pong(b"t" * 12, ("2001:db8::1", 443)),
        CallMeMaybe((("127.0.0.1", 1), ("10.0.0.2", 65535), ("::1", 7))),
        CallMeMaybe(()),
    ],
)
def test_round_trip(message: disco.Message) -> None:
    data = disco.encode(ALICE, BOB.node_id, message, NOW)
    assert disco.is_disco(data)
    assert data[0] & 0x40 == 0  # never a QUIC v1 packet: the fixed bit is clear
    packet = disco.decode(data, BOB.node_id, NOW + 1)
    assert packet.message == message
    assert packet.sender == ALICE.node_id
    assert packet.receiver == BOB.node_id


def test_every_flipped_byte_is_rejected() -> None:
    data = disco.encode(ALICE, BOB.node_id, Pong(b"x" * 12, ("192.0.2.1", 9)), NOW)
    for i in range(len(data)):
        forged = bytearray(data)
        forged[i] ^= 0x01
        with pytest.raises(disco.DiscoError):
            disco.decode(bytes(forged), BOB.node_id, NOW)


def test_signature_by_another_key_is_forged() -> None:
    data = disco.encode(ALICE, BOB.node_id, Ping.new(), NOW)
    mallory = disco.encode(Identity.generate(), BOB.node_id, Ping.new(), NOW)
    claimed = data[:-64] + mallory[-64:]  # Alice's header and body, Mallory's signature
    with pytest.raises(disco.ForgedDisco):
        disco.decode(claimed, BOB.node_id, NOW)


@pytest.mark.parametrize("skew", [-121.0, 121.0, -3600.0])
def test_stale_or_future_timestamps_are_rejected(skew: float) -> None:
    data = disco.encode(ALICE, BOB.node_id, Ping.new(), NOW)
    with pytest.raises(disco.StaleDisco):
        disco.decode(data, BOB.node_id, NOW - skew)


def test_packet_for_another_receiver_is_rejected_but_names_its_sender() -> None:
    data = disco.encode(ALICE, BOB.node_id, Ping.new(), NOW)
    with pytest.raises(disco.MisaddressedDisco) as info:
        disco.decode(data, Identity.generate().node_id, NOW)
    assert info.value.packet.sender == ALICE.node_id


def test_too_many_addresses_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="at most"):
        disco.encode(ALICE, BOB.node_id, CallMeMaybe((("127.0.0.1", 1),) * 17), NOW)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=400),
        st.binary(max_size=400).map(lambda b: disco.MAGIC + b),
        st.binary(min_size=150, max_size=300).map(lambda b: disco.MAGIC + b"\x01" + b),
    )
)
def test_garbage_raises_only_disco_errors(data: bytes) -> None:
    with pytest.raises(disco.DiscoError):
        disco.decode(data, BOB.node_id, NOW)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 300), st.binary(max_size=8))
def test_truncated_and_extended_packets_are_rejected(cut: int, extra: bytes) -> None:
    data = disco.encode(ALICE, BOB.node_id, CallMeMaybe((("127.0.0.1", 5),)), NOW)
    mangled = data[:cut] + extra
    if mangled == data:
        return
    with pytest.raises(disco.DiscoError):
        disco.decode(mangled, BOB.node_id, NOW)
