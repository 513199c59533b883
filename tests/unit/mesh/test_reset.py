"""Stateless resets: tokens that survive a restart, never an amplifier, garbage is harmless."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fleet.identity import Identity
from fleet.mesh.reset import (
    MIN_RESET_LEN,
    TOKEN_LEN,
    StatelessResets,
    is_stateless_reset,
    reset_key,
)

CID = 8


def _short_header(cid: bytes, size: int = 60) -> bytes:
    return bytes([0x41]) + cid + bytes(size - 1 - len(cid))


def test_a_restarted_node_answers_with_the_token_it_advertised_before() -> None:
    identity = Identity.generate()
    before = StatelessResets(reset_key(identity), cid_length=CID)
    cid = bytes(range(CID))
    advertised = before.token(cid)
    after = StatelessResets(reset_key(identity), cid_length=CID)  # new process, same key
    reset = after.answer(_short_header(cid), now=0.0)
    assert reset is not None
    assert is_stateless_reset(reset, [advertised])
    assert reset[0] & 0xC0 == 0x40  # looks like any short header packet
    # Another node's key, or another connection id, gives another token.
    other = StatelessResets(reset_key(Identity.generate()), cid_length=CID)
    assert not is_stateless_reset(other.answer(_short_header(cid), 0.0) or b"", [advertised])
    assert after.token(bytes(CID)) != advertised


def test_a_reset_is_shorter_than_what_caused_it_and_small_packets_get_none() -> None:
    resets = StatelessResets(b"k" * 32, cid_length=CID)
    assert resets.answer(_short_header(bytes(CID), MIN_RESET_LEN), 0.0) is None
    for size in (MIN_RESET_LEN + 1, 30, 1200):
        reset = resets.answer(_short_header(bytes(CID), size), 0.0)
        assert reset is not None
        assert MIN_RESET_LEN <= len(reset) < size
    # A reset answering a reset shrinks, so two nodes without state stop within a few.
    packet = _short_header(bytes(CID), 1200)
    rounds = 0
    while (packet_or_none := resets.answer(packet, 0.0)) is not None:
        packet, rounds = packet_or_none, rounds + 1
    assert rounds <= 2
    assert resets.answer(b"\xc0" + bytes(59), 0.0) is None  # a long header: never


def test_resets_are_rate_limited() -> None:
    resets = StatelessResets(b"k" * 32, cid_length=CID, rate=10.0, burst=5.0)
    packet = _short_header(bytes(CID))
    assert sum(resets.answer(packet, 0.0) is not None for _ in range(50)) == 5
    assert resets.limited == 45
    assert sum(resets.answer(packet, 1.0) is not None for _ in range(50)) == 5  # refilled
    assert resets.sent == 10


@given(st.binary(max_size=200), st.lists(st.binary(min_size=TOKEN_LEN, max_size=TOKEN_LEN)))
def test_garbage_is_never_an_error(data: bytes, tokens: list[bytes]) -> None:
    resets = StatelessResets(b"k" * 32, cid_length=CID)
    answer = resets.answer(data, 0.0)
    assert answer is None or len(answer) < len(data)
    found = is_stateless_reset(data, tokens)
    assert found == (
        len(data) >= MIN_RESET_LEN and data[0] & 0xC0 == 0x40 and data[-TOKEN_LEN:] in tokens
    )
