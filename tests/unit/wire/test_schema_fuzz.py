"""Hostile input: random bytes and mutated valid encodings fed to every decoder of the wire layer.

The only acceptable outcomes are success or a WireError; anything else (another exception, a
hang) would let one bad packet take down a daemon. Accepted input must also be canonical.
"""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.identity import Identity
from fleet.wire import (
    FrameDecoder,
    Limits,
    SignedEnvelope,
    Tag,
    WireError,
    decode,
    encode,
    encode_frame,
    open_envelope,
    seal,
)
from tests.unit.wire.wire_messages import Forward, Tree, everything

ADMIN = Identity.generate()
fuzz = settings(max_examples=400, deadline=timedelta(seconds=2))

trees = st.recursive(
    st.builds(Tree, label=st.text(max_size=3)),
    lambda kids: st.builds(Tree, label=st.text(max_size=3), children=st.lists(kids, max_size=3)),
    max_leaves=12,
)
envelopes = everything.map(lambda m: seal(ADMIN, Tag.ENVELOPE, m))
forwards = envelopes.map(lambda e: encode(Forward(hops=1, envelope=decode(e, SignedEnvelope))))
valid = st.one_of(everything.map(encode), trees.map(encode), envelopes, forwards)


@st.composite
def mutated(draw: st.DrawFn, seeds: st.SearchStrategy[bytes]) -> bytes:
    """A valid encoding damaged by a few bit flips, truncations, insertions, deletions."""
    data = bytearray(draw(seeds))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "replace"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=9))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 9))]
        elif op == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
    return bytes(data)


hostile = st.one_of(st.binary(max_size=200), mutated(valid))


def check_decode(data: bytes, limits: Limits | None = None) -> None:
    try:
        msg = decode(data) if limits is None else decode(data, limits=limits)
    except WireError:
        return
    assert encode(msg, limits=limits or Limits()) == data  # one message, one encoding


@fuzz
@given(hostile)
def test_decode_only_succeeds_or_raises_wire_error(data: bytes) -> None:
    check_decode(data)


@fuzz
@given(mutated(valid))
def test_decode_with_tight_limits(data: bytes) -> None:
    check_decode(data, Limits(max_depth=3, max_items=20, max_str_len=40, max_bin_len=40))


@fuzz
@given(st.one_of(st.binary(max_size=200), mutated(envelopes)))
def test_open_envelope_only_succeeds_or_raises_wire_error(data: bytes) -> None:
    try:
        signer, _ = open_envelope(data, Tag.ENVELOPE)
    except WireError:
        return
    assert signer == ADMIN.node_id  # nothing else can have produced a valid signature


def frame_stream(frames: list[bytes]) -> bytes:
    return b"".join(encode_frame(f, cap=4096) for f in frames)


@fuzz
@given(
    st.one_of(
        st.binary(max_size=300),
        mutated(st.lists(valid, max_size=4).map(frame_stream)),
    ),
    st.lists(st.integers(0, 64), max_size=10),
)
def test_frame_decoder_only_succeeds_or_raises_wire_error(data: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(cap=4096)
    frames: list[bytes] = []
    pos = 0
    try:
        for size in [*cuts, len(data)]:
            frames += decoder.feed(data[pos : pos + size])
            pos += size
        decoder.end_of_input()
    except WireError:
        pass
    consumed = frame_stream(frames)
    assert data.startswith(consumed)
    for frame in frames:  # and what comes out of the frames goes on to the message decoder
        check_decode(frame)
