"""The relay's sans-IO sessions: who may log in, what gets forwarded, and how bad input ends."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.identity import Identity, NodeId
from fleet.relay.protocol import (
    HEADER,
    MAX_FRAME_PAYLOAD,
    MAX_PACKET_SIZE,
    PROTOCOL_VERSION,
    Authenticated,
    AuthenticationFailed,
    AuthRefused,
    ClientAuthenticated,
    ClientState,
    FrameTooLarge,
    FrameType,
    HandshakeTimeout,
    MalformedFrame,
    PacketDropped,
    PacketForward,
    PacketReceived,
    PeerGone,
    PingTimeout,
    RateLimitAbuse,
    RelayClientSession,
    RelayIdMismatch,
    RelayProtocolError,
    RelayServerSession,
    ServerClosed,
    ServerSessionConfig,
    ServerState,
    UnexpectedFrame,
    UnknownFrameType,
    auth_payload,
    encode_frame,
)
from fleet.wire.tags import Tag, sign

RELAY = Identity.generate()
ALICE = Identity.generate()
BOB = Identity.generate()
CHALLENGE = bytes(range(32))


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split encoded frames (test helper, trusts its input)."""
    out = []
    while data:
        frame_type, length = HEADER.unpack_from(data)
        out.append((frame_type, data[5 : 5 + length]))
        data = data[5 + length :]
    return out


def receive(
    session: RelayServerSession | RelayClientSession, data: bytes, now: float
) -> list[object]:
    """Feed `data` to a session and take every event it then has (next_event until None)."""
    session.receive_data(data, now)
    events: list[object] = []
    while (event := session.next_event()) is not None:
        events.append(event)
    return events


def server_session(config: ServerSessionConfig | None = None) -> RelayServerSession:
    return RelayServerSession(RELAY, 0.0, config, challenge=CHALLENGE)


def login(
    identity: Identity = ALICE, config: ServerSessionConfig | None = None
) -> tuple[RelayServerSession, RelayClientSession]:
    server = server_session(config)
    client = RelayClientSession(identity, RELAY.node_id, 0.0)
    assert receive(client, server.data_to_send(), 0.0) == []
    events = receive(server, client.data_to_send(), 0.0)
    assert events == [ClientAuthenticated(identity.node_id)]
    assert receive(client, server.data_to_send(), 0.0) == [Authenticated(RELAY.node_id)]
    return server, client


def client_auth(signer: Identity, claimed: NodeId, signed_payload: bytes, tag: Tag) -> bytes:
    signature = sign(signer, tag, signed_payload)
    return encode_frame(FrameType.CLIENT_AUTH, bytes([PROTOCOL_VERSION]) + claimed.raw + signature)


def test_login_then_packets_carry_the_authenticated_source() -> None:
    server, client = login(ALICE)
    assert server.state is ServerState.AUTHENTICATED
    assert server.client_id == ALICE.node_id
    assert client.state is ClientState.CONNECTED

    client.send_packet(BOB.node_id, b"quic packet 1")
    client.send_packet(BOB.node_id, b"")
    events = receive(server, client.data_to_send(), 1.0)
    assert [type(e) for e in events] == [PacketForward, PacketForward]
    assert all(isinstance(e, PacketForward) and e.dst == BOB.node_id.raw for e in events)

    # The frames the relay made are what Bob's session decodes, with Alice as the source.
    _, bob = login(BOB)
    received = receive(bob, b"".join(e.frame for e in events if isinstance(e, PacketForward)), 1.0)
    assert received == [
        PacketReceived(ALICE.node_id, b"quic packet 1"),
        PacketReceived(ALICE.node_id, b""),
    ]


def test_frames_split_at_every_byte_are_reassembled() -> None:
    server, client = login()
    for i in range(3):
        client.send_packet(BOB.node_id, bytes([i]) * 100)
    data = client.data_to_send()
    events = []
    for i in range(len(data)):
        events += receive(server, data[i : i + 1], 1.0)
    assert [len(e.frame) for e in events if isinstance(e, PacketForward)] == [137, 137, 137]


def test_bad_signature_is_refused_and_the_client_is_told_why() -> None:
    server = server_session()
    server.data_to_send()
    # Mallory signs, but claims to be Alice.
    payload = auth_payload(RELAY.node_id, CHALLENGE, ALICE.node_id)
    with pytest.raises(AuthenticationFailed):
        receive(server, client_auth(BOB, ALICE.node_id, payload, Tag.RELAY_AUTH), 0.0)
    assert server.state is ServerState.CLOSED
    assert server.client_id is None
    [(frame_type, reason)] = frames(server.data_to_send())
    assert frame_type == FrameType.AUTH_FAILED
    assert b"does not verify" in reason


@pytest.mark.parametrize(
    ("what", "payload", "tag"),
    [
        (
            "another relay",
            auth_payload(BOB.node_id, CHALLENGE, ALICE.node_id),
            Tag.RELAY_AUTH,
        ),
        (
            "another challenge",
            auth_payload(RELAY.node_id, bytes(32), ALICE.node_id),
            Tag.RELAY_AUTH,
        ),
        ("another tag", auth_payload(RELAY.node_id, CHALLENGE, ALICE.node_id), Tag.DISCO),
        ("another client id", auth_payload(RELAY.node_id, CHALLENGE, BOB.node_id), Tag.RELAY_AUTH),
    ],
)
def test_signature_must_cover_this_relay_challenge_client_and_tag(
    what: str, payload: bytes, tag: Tag
) -> None:
    server = server_session()
    with pytest.raises(AuthenticationFailed):
        receive(server, client_auth(ALICE, ALICE.node_id, payload, tag), 0.0)
    assert server.state is ServerState.CLOSED, what


def test_client_reports_the_relays_refusal() -> None:
    client = RelayClientSession(ALICE, RELAY.node_id, 0.0)
    receive(client, server_session().data_to_send(), 0.0)
    with pytest.raises(AuthRefused, match="go away"):
        receive(client, encode_frame(FrameType.AUTH_FAILED, b"go away"), 0.0)
    assert client.state is ClientState.CLOSED


def test_client_refuses_a_relay_announcing_another_id() -> None:
    client = RelayClientSession(ALICE, BOB.node_id, 0.0)
    with pytest.raises(RelayIdMismatch, match=str(BOB.node_id)):
        receive(client, server_session().data_to_send(), 0.0)
    assert client.data_to_send() == b""  # no signature was given away


def test_garbage_is_an_unknown_frame() -> None:
    server = server_session()
    server.data_to_send()
    with pytest.raises(UnknownFrameType):
        receive(server, b"\xff\x00\x00\x00\x01\x00", 0.0)
    [(frame_type, reason)] = frames(server.data_to_send())
    assert frame_type == FrameType.CLOSE
    assert reason.startswith(b"unknown_frame")


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    server, _ = login()
    header = HEADER.pack(FrameType.SEND_PACKET, MAX_FRAME_PAYLOAD + 1)
    with pytest.raises(FrameTooLarge):
        receive(server, header, 1.0)
    client = RelayClientSession(ALICE, RELAY.node_id, 0.0)
    with pytest.raises(FrameTooLarge):
        receive(client, HEADER.pack(FrameType.SERVER_HELLO, 2**32 - 1), 0.0)


def test_largest_packet_passes() -> None:
    server, client = login()
    client.send_packet(BOB.node_id, bytes(MAX_PACKET_SIZE))
    [event] = receive(server, client.data_to_send(), 1.0)
    assert isinstance(event, PacketForward)
    with pytest.raises(ValueError, match="exceeds"):
        client.send_packet(BOB.node_id, bytes(MAX_PACKET_SIZE + 1))


@pytest.mark.parametrize(
    "frame",
    [
        encode_frame(FrameType.SEND_PACKET, bytes(40)),
        encode_frame(FrameType.PING, bytes(8)),
        encode_frame(FrameType.RECV_PACKET, bytes(40)),
        encode_frame(FrameType.AUTH_OK),
    ],
)
def test_server_refuses_frames_before_login(frame: bytes) -> None:
    with pytest.raises(UnexpectedFrame):
        receive(server_session(), frame, 0.0)


@pytest.mark.parametrize(
    "frame",
    [
        encode_frame(FrameType.CLIENT_AUTH, bytes(97)),
        encode_frame(FrameType.SERVER_HELLO, bytes(65)),
        encode_frame(FrameType.RECV_PACKET, bytes(40)),
        encode_frame(FrameType.PEER_GONE, bytes(32)),
        encode_frame(FrameType.CLOSE, b"bye"),
    ],
)
def test_server_refuses_frames_a_client_may_not_send_after_login(frame: bytes) -> None:
    server, _ = login()
    with pytest.raises(UnexpectedFrame):
        receive(server, frame, 1.0)
    assert server.state is ServerState.CLOSED


def test_client_refuses_frames_in_the_wrong_state() -> None:
    with pytest.raises(UnexpectedFrame):
        receive(
            RelayClientSession(ALICE, RELAY.node_id, 0.0),
            encode_frame(FrameType.RECV_PACKET, bytes(40)),
            0.0,
        )
    client = RelayClientSession(ALICE, RELAY.node_id, 0.0)
    receive(client, server_session().data_to_send(), 0.0)
    with pytest.raises(UnexpectedFrame):
        receive(client, encode_frame(FrameType.RECV_PACKET, bytes(40)), 0.0)
    _, connected = login()
    with pytest.raises(UnexpectedFrame):
        receive(connected, server_session().data_to_send(), 1.0)


def test_malformed_payloads() -> None:
    server, client = login()
    with pytest.raises(MalformedFrame):
        receive(server, encode_frame(FrameType.SEND_PACKET, bytes(31)), 1.0)
    with pytest.raises(MalformedFrame):
        receive(client, encode_frame(FrameType.PING, bytes(9)), 1.0)
    with pytest.raises(MalformedFrame):
        receive(server_session(), encode_frame(FrameType.CLIENT_AUTH, bytes(10)), 0.0)


def test_peer_gone_reaches_the_client_and_is_rate_limited() -> None:
    config = ServerSessionConfig(peer_gone_rate=1.0, peer_gone_burst=2.0)
    server, client = login(config=config)
    answered = [server.peer_gone(BOB.node_id.raw, 1.0) for _ in range(5)]
    assert answered == [True, True, False, False, False]
    assert receive(client, server.data_to_send(), 1.0) == [
        PeerGone(BOB.node_id),
        PeerGone(BOB.node_id),
    ]
    assert server.peer_gone(BOB.node_id.raw, 2.5)  # refilled


def test_close_frame_tells_the_client_why() -> None:
    server, client = login()
    server.close("replaced")
    assert receive(client, server.data_to_send(), 1.0) == [ServerClosed("replaced")]
    assert client.state is ClientState.CLOSED


def test_handshake_timeout() -> None:
    server = server_session(ServerSessionConfig(handshake_timeout=5.0))
    assert server.get_timer() == 5.0
    server.handle_timer(4.9)
    with pytest.raises(HandshakeTimeout):
        server.handle_timer(5.0)
    client = RelayClientSession(ALICE, RELAY.node_id, 0.0)
    with pytest.raises(HandshakeTimeout):
        client.handle_timer(client.get_timer() or 0.0)


def test_server_pings_and_drops_a_client_that_does_not_answer() -> None:
    config = ServerSessionConfig(ping_interval=15.0, ping_timeout=10.0)
    server, client = login(config=config)
    assert server.get_timer() == 15.0
    server.handle_timer(15.0)
    # An answering client keeps the session.
    receive(client, server.data_to_send(), 15.0)
    assert receive(server, client.data_to_send(), 15.5) == []
    assert server.get_timer() == 30.5
    server.handle_timer(30.5)
    server.data_to_send()  # this ping is lost
    assert server.get_timer() == 40.5
    with pytest.raises(PingTimeout):
        server.handle_timer(40.5)


def test_client_pings_the_relay() -> None:
    server, client = login()
    timer = client.get_timer()
    assert timer is not None
    client.handle_timer(timer)
    receive(server, client.data_to_send(), timer)
    receive(client, server.data_to_send(), timer)
    assert client.get_timer() == timer + client.config.ping_interval
    client.handle_timer(client.get_timer() or 0.0)
    with pytest.raises(PingTimeout):
        client.handle_timer(client.get_timer() or 0.0)


def test_rate_limit_drops_then_disconnects_sustained_abuse() -> None:
    config = ServerSessionConfig(rate_limit=10_000, rate_burst=5_000, abuse_limit=20_000)
    server, client = login(config=config)
    for _ in range(4):
        client.send_packet(BOB.node_id, bytes(1000))
    events = receive(server, client.data_to_send(), 0.0)
    assert [type(e) for e in events] == [PacketForward] * 4  # within the burst
    for _ in range(2):
        client.send_packet(BOB.node_id, bytes(1000))
    events = receive(server, client.data_to_send(), 0.0)
    assert events == [PacketDropped("rate_limit", 1037)] * 2  # 1037-byte frames, 852 left
    # One second later the bucket has refilled: a well-behaved burst passes again.
    client.send_packet(BOB.node_id, bytes(1000))
    assert [type(e) for e in receive(server, client.data_to_send(), 1.0)] == [PacketForward]
    for _ in range(100):
        client.send_packet(BOB.node_id, bytes(1000))
    with pytest.raises(RateLimitAbuse):
        receive(server, client.data_to_send(), 1.0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_random_bytes_only_ever_raise_the_protocol_error(chunks: list[bytes]) -> None:
    fresh_server = server_session()
    fresh_client = RelayClientSession(ALICE, RELAY.node_id, 0.0)
    server, client = login()
    for session in (fresh_server, fresh_client, server, client):
        try:
            for chunk in chunks:
                receive(session, chunk, 1.0)
        except RelayProtocolError:
            pass
        session.data_to_send()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(FrameType)), st.binary(max_size=120)), max_size=6))
def test_well_framed_random_payloads_only_ever_raise_the_protocol_error(
    items: list[tuple[FrameType, bytes]],
) -> None:
    data = b"".join(encode_frame(t, p) for t, p in items)
    for session in (*login(), server_session(), RelayClientSession(ALICE, RELAY.node_id, 0.0)):
        with contextlib.suppress(RelayProtocolError):
            receive(session, data, 1.0)


def test_events_come_out_one_at_a_time_in_order() -> None:
    server, alice = login(ALICE)
    alice.send_packet(BOB.node_id, b"one")
    alice.send_packet(BOB.node_id, b"two")
    server.receive_data(alice.data_to_send(), 1.0)
    first, second = server.next_event(), server.next_event()
    assert isinstance(first, PacketForward)
    assert isinstance(second, PacketForward)
    assert (first.frame[-3:], second.frame[-3:]) == (b"one", b"two")
    assert server.next_event() is None


def test_events_before_a_fault_in_the_same_data_are_not_handed_out() -> None:
    server, alice = login(ALICE)
    alice.send_packet(BOB.node_id, b"ok")
    with pytest.raises(UnknownFrameType):
        server.receive_data(alice.data_to_send() + b"\xff\x00\x00\x00\x00", 1.0)
    assert server.next_event() is None
