"""The relay protocol as two sans-IO state machines: bytes and time in, events and bytes out.

Like aioquic's QuicConnection: `receive_data(data, now)` and `handle_timer(now)` feed a session,
`next_event()` hands out what happened one event at a time (None when there is nothing more),
`data_to_send()` the bytes for the peer and `get_timer()` when to call `handle_timer` next.

Frames are `type (1 byte) | length (4 bytes, big-endian) | payload`, binary rather than msgpack
because every forwarded QUIC packet crosses this codec twice. docs/relay.md is the reference;
the constants below are the normative values.

States (an input not listed for a state is a protocol error that ends the session):

    server: AWAITING_AUTH --ClientAuth ok--> AUTHENTICATED --error/close--> CLOSED
    client: AWAITING_HELLO --ServerHello--> AWAITING_AUTH_RESULT --AuthOk--> CONNECTED --> CLOSED

A session that fails raises a `RelayProtocolError` subclass whose `reason` is a short code for
logs and metrics, and first queues a last frame (Close or AuthFailed) so the adapter can flush
`data_to_send()` before closing the transport.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections import deque
from dataclasses import dataclass
from enum import Enum, IntEnum

from fleet.identity import BadSignature, Identity, NodeId
from fleet.relay.ratelimit import LeakyCounter, TokenBucket
from fleet.wire.tags import Tag, sign, verify

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">BI")
HEADER_LEN = HEADER.size
NODE_ID_LEN = 32
CHALLENGE_LEN = 32
SIGNATURE_LEN = 64
PING_LEN = 8
MAX_PACKET_SIZE = 64 * 1024
MAX_FRAME_PAYLOAD = NODE_ID_LEN + MAX_PACKET_SIZE
MAX_REASON_LEN = 256

_HELLO_LEN = 1 + NODE_ID_LEN + CHALLENGE_LEN
_AUTH_LEN = 1 + NODE_ID_LEN + SIGNATURE_LEN


class FrameType(IntEnum):
    SERVER_HELLO = 1  # server -> client: version, relay id, challenge
    CLIENT_AUTH = 2  # client -> server: version, client id, signature
    AUTH_OK = 3  # server -> client: empty
    AUTH_FAILED = 4  # server -> client: UTF-8 reason, then the server closes
    SEND_PACKET = 5  # client -> server: destination id + packet
    RECV_PACKET = 6  # server -> client: authenticated source id + packet
    PEER_GONE = 7  # server -> client: id of a destination that is not connected
    PING = 8  # either way: 8 opaque bytes
    PONG = 9  # either way: the 8 bytes of the ping it answers
    CLOSE = 10  # server -> client: UTF-8 reason, then the server closes


_KNOWN_TYPES = frozenset(int(t) for t in FrameType)
# Plain ints for the hot path: comparing IntEnum members costs a method call each.
_SEND = int(FrameType.SEND_PACKET)
_RECV = int(FrameType.RECV_PACKET)


# -- errors ---------------------------------------------------------------------------------


class RelayProtocolError(Exception):
    """Anything that ends a relay session; `reason` is a short code for logs and metrics."""

    reason = "protocol_error"


class FrameTooLarge(RelayProtocolError):
    reason = "oversized_frame"


class UnknownFrameType(RelayProtocolError):
    reason = "unknown_frame"


class UnexpectedFrame(RelayProtocolError):
    reason = "unexpected_frame"


class MalformedFrame(RelayProtocolError):
    reason = "malformed_frame"


class UnsupportedVersion(RelayProtocolError):
    reason = "unsupported_version"


class AuthenticationFailed(RelayProtocolError):
    """Server side: the client's login signature did not verify."""

    reason = "auth_failed"


class AuthRefused(RelayProtocolError):
    """Client side: the relay answered AuthFailed."""

    reason = "auth_refused"


class RelayIdMismatch(RelayProtocolError):
    """Client side: the relay is not the one the URL names."""

    reason = "relay_id_mismatch"


class HandshakeTimeout(RelayProtocolError):
    reason = "handshake_timeout"


class PingTimeout(RelayProtocolError):
    reason = "ping_timeout"


class RateLimitAbuse(RelayProtocolError):
    reason = "rate_limit_abuse"


# -- frame codec ----------------------------------------------------------------------------


def encode_frame(frame_type: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds {MAX_FRAME_PAYLOAD}")
    return HEADER.pack(frame_type, len(payload)) + payload


def auth_payload(relay_id: NodeId, challenge: bytes, client_id: NodeId) -> bytes:
    """What a client signs (with Tag.RELAY_AUTH) to log in: bound to this relay and challenge."""
    return relay_id.raw + challenge + client_id.raw


def _reason_bytes(reason: str) -> bytes:
    return reason.encode("utf-8")[:MAX_REASON_LEN]


def _reason_text(payload: memoryview) -> str:
    if len(payload) > MAX_REASON_LEN:
        raise MalformedFrame(f"reason of {len(payload)} bytes exceeds {MAX_REASON_LEN}")
    return bytes(payload).decode("utf-8", errors="replace")


def _check_header(frame_type: int, length: int) -> None:
    if frame_type not in _KNOWN_TYPES:
        raise UnknownFrameType(f"unknown frame type {frame_type}")
    if length > MAX_FRAME_PAYLOAD:
        raise FrameTooLarge(f"frame of {length} bytes exceeds the limit of {MAX_FRAME_PAYLOAD}")


# -- events ---------------------------------------------------------------------------------


@dataclass(slots=True)
class ClientAuthenticated:
    node_id: NodeId


@dataclass(slots=True)
class PacketForward:
    """Deliver `frame` (a complete RecvPacket frame) to the client logged in as `dst`."""

    dst: bytes
    frame: bytes


@dataclass(slots=True)
class PacketDropped:
    reason: str
    size: int


ServerEvent = ClientAuthenticated | PacketForward | PacketDropped


@dataclass(slots=True)
class Authenticated:
    relay_id: NodeId


@dataclass(slots=True)
class PacketReceived:
    src: NodeId
    data: bytes


@dataclass(slots=True)
class PeerGone:
    node_id: NodeId


@dataclass(slots=True)
class ServerClosed:
    reason: str


ClientEvent = Authenticated | PacketReceived | PeerGone | ServerClosed


# -- server session -------------------------------------------------------------------------


class ServerState(Enum):
    AWAITING_AUTH = "awaiting_auth"
    AUTHENTICATED = "authenticated"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ServerSessionConfig:
    """Per-client limits. rate_limit <= 0 disables rate limiting."""

    handshake_timeout: float = 5.0
    ping_interval: float = 15.0
    ping_timeout: float = 10.0
    rate_limit: float = 32 * 1024 * 1024  # bytes/s of frames from the client
    rate_burst: float = 4 * 1024 * 1024
    # Dropped bytes drain at rate_limit/s; past this level the client is disconnected.
    abuse_limit: float = 8 * 1024 * 1024
    peer_gone_rate: float = 10.0  # PeerGone answers per second
    peer_gone_burst: float = 20.0


class RelayServerSession:
    """One client connection as the relay sees it, from TCP accept to close."""

    def __init__(
        self,
        relay: Identity,
        now: float,
        config: ServerSessionConfig | None = None,
        *,
        challenge: bytes | None = None,
    ) -> None:
        self.config = config or ServerSessionConfig()
        self.state = ServerState.AWAITING_AUTH
        self.client_id: NodeId | None = None
        self._relay_id = relay.node_id
        self._challenge = challenge if challenge is not None else os.urandom(CHALLENGE_LEN)
        if len(self._challenge) != CHALLENGE_LEN:
            raise ValueError(f"a challenge is {CHALLENGE_LEN} bytes")
        self._src_raw = b""
        self._buf = bytearray()
        self._events: deque[ServerEvent] = deque()
        self._out: list[bytes] = []
        self._out_size = 0
        self._handshake_deadline = now + self.config.handshake_timeout
        self._next_ping = 0.0
        self._ping_payload: bytes | None = None
        self._pong_deadline = 0.0
        self._bucket: TokenBucket | None = None
        self._abuse: LeakyCounter | None = None
        self._peer_gone_bucket = TokenBucket(
            self.config.peer_gone_rate, self.config.peer_gone_burst, now
        )
        self.queue_frame(
            encode_frame(
                FrameType.SERVER_HELLO,
                bytes([PROTOCOL_VERSION]) + self._relay_id.raw + self._challenge,
            )
        )

    # output

    def queue_frame(self, frame: bytes) -> None:
        """Add an encoded frame to what goes to this client (the server forwards this way)."""
        self._out.append(frame)
        self._out_size += len(frame)

    @property
    def pending_bytes(self) -> int:
        return self._out_size

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        return data

    # input

    def receive_data(self, data: bytes, now: float) -> None:
        """Parse every complete frame in `data` (plus what was left over before)."""
        if self.state is ServerState.CLOSED:
            return
        try:
            self._receive(data, now)
        except RelayProtocolError as exc:
            self._fail(exc)
            raise

    def next_event(self) -> ServerEvent | None:
        """The oldest event not yet handed out, or None."""
        return self._events.popleft() if self._events else None

    def _receive(self, data: bytes, now: float) -> None:
        if self._buf:
            self._buf += data
            data = bytes(self._buf)
            self._buf.clear()
        view = memoryview(data)
        end_of_data = len(data)
        events = self._events
        append = events.append
        unpack = HEADER.unpack_from
        pack = HEADER.pack
        # Hoisted for the hot loop; refreshed after any control frame (login changes them).
        authenticated = self.state is ServerState.AUTHENTICATED
        bucket = self._bucket
        tokens = bucket.refill(now) if bucket is not None else 0.0
        src = self._src_raw
        off = 0
        while end_of_data - off >= HEADER_LEN:
            frame_type, length = unpack(data, off)
            if length > MAX_FRAME_PAYLOAD or frame_type not in _KNOWN_TYPES:
                _check_header(frame_type, length)
            end = off + HEADER_LEN + length
            if end > end_of_data:
                break
            if bucket is not None:
                if tokens < HEADER_LEN + length:
                    self._over_limit(HEADER_LEN + length, now, events)
                    off = end
                    continue
                tokens -= HEADER_LEN + length
            if frame_type == _SEND and authenticated:
                if length < NODE_ID_LEN:
                    raise MalformedFrame("SendPacket shorter than a node id")
                body = off + HEADER_LEN
                append(
                    PacketForward(
                        data[body : body + NODE_ID_LEN],
                        pack(_RECV, length) + src + view[body + NODE_ID_LEN : end],
                    )
                )
            else:
                if bucket is not None:
                    bucket.tokens = tokens
                self._control(frame_type, view[off + HEADER_LEN : end], now, events)
                authenticated = self.state is ServerState.AUTHENTICATED
                bucket = self._bucket
                tokens = bucket.tokens if bucket is not None else 0.0
                src = self._src_raw
            off = end
        if bucket is not None:
            bucket.tokens = tokens
        if off < end_of_data:
            self._buf += view[off:]

    def _over_limit(self, size: int, now: float, events: deque[ServerEvent]) -> None:
        events.append(PacketDropped("rate_limit", size))
        assert self._abuse is not None
        if self._abuse.add(size, now) > self.config.abuse_limit:
            raise RateLimitAbuse(
                f"sustained sending over the rate limit of {self.config.rate_limit:.0f} bytes/s"
            )

    def _control(
        self, frame_type: int, payload: memoryview, now: float, events: deque[ServerEvent]
    ) -> None:
        if self.state is ServerState.AWAITING_AUTH:
            if frame_type != FrameType.CLIENT_AUTH:
                raise UnexpectedFrame(f"{FrameType(frame_type).name} before authentication")
            events.append(self._authenticate(payload, now))
        elif frame_type == FrameType.PING:
            if len(payload) != PING_LEN:
                raise MalformedFrame(f"Ping of {len(payload)} bytes, expected {PING_LEN}")
            self.queue_frame(encode_frame(FrameType.PONG, bytes(payload)))
        elif frame_type == FrameType.PONG:
            if len(payload) != PING_LEN:
                raise MalformedFrame(f"Pong of {len(payload)} bytes, expected {PING_LEN}")
            if self._ping_payload is not None and hmac.compare_digest(
                bytes(payload), self._ping_payload
            ):
                self._ping_payload = None
                self._next_ping = now + self.config.ping_interval
        else:
            raise UnexpectedFrame(f"{FrameType(frame_type).name} from an authenticated client")

    def _authenticate(self, payload: memoryview, now: float) -> ClientAuthenticated:
        if len(payload) != _AUTH_LEN:
            raise MalformedFrame(f"ClientAuth of {len(payload)} bytes, expected {_AUTH_LEN}")
        if payload[0] != PROTOCOL_VERSION:
            raise UnsupportedVersion(
                f"client speaks relay protocol {payload[0]}, this relay {PROTOCOL_VERSION}"
            )
        client_id = NodeId(bytes(payload[1 : 1 + NODE_ID_LEN]))
        signature = bytes(payload[1 + NODE_ID_LEN :])
        try:
            verify(
                client_id,
                Tag.RELAY_AUTH,
                auth_payload(self._relay_id, self._challenge, client_id),
                signature,
            )
        except BadSignature as exc:
            raise AuthenticationFailed(
                f"login signature of {client_id.short()} does not verify"
            ) from exc
        self.state = ServerState.AUTHENTICATED
        self.client_id = client_id
        self._src_raw = client_id.raw
        self._next_ping = now + self.config.ping_interval
        if self.config.rate_limit > 0:
            self._bucket = TokenBucket(self.config.rate_limit, self.config.rate_burst, now)
            self._abuse = LeakyCounter(self.config.rate_limit, now)
        self.queue_frame(encode_frame(FrameType.AUTH_OK))
        return ClientAuthenticated(client_id)

    def peer_gone(self, dst: bytes, now: float) -> bool:
        """Tell the client `dst` is not connected, unless it has been told too often lately."""
        if self.state is not ServerState.AUTHENTICATED:
            return False
        if not self._peer_gone_bucket.take(1, now):
            return False
        self.queue_frame(encode_frame(FrameType.PEER_GONE, dst))
        return True

    # time

    def get_timer(self) -> float | None:
        if self.state is ServerState.AWAITING_AUTH:
            return self._handshake_deadline
        if self.state is ServerState.AUTHENTICATED:
            return self._pong_deadline if self._ping_payload is not None else self._next_ping
        return None

    def handle_timer(self, now: float) -> None:
        """Send a due ping; raise HandshakeTimeout or PingTimeout when a deadline passed."""
        try:
            if self.state is ServerState.AWAITING_AUTH and now >= self._handshake_deadline:
                raise HandshakeTimeout(
                    f"no login within {self.config.handshake_timeout:g} s of connecting"
                )
            if self.state is ServerState.AUTHENTICATED:
                if self._ping_payload is not None:
                    if now >= self._pong_deadline:
                        raise PingTimeout(
                            f"no pong within {self.config.ping_timeout:g} s of a ping"
                        )
                elif now >= self._next_ping:
                    self._ping_payload = os.urandom(PING_LEN)
                    self._pong_deadline = now + self.config.ping_timeout
                    self.queue_frame(encode_frame(FrameType.PING, self._ping_payload))
        except RelayProtocolError as exc:
            self._fail(exc)
            raise

    # ending

    def close(self, reason: str) -> None:
        """End the session for a reason of the server's (replaced, shutdown): queue Close."""
        if self.state is ServerState.CLOSED:
            return
        self.state = ServerState.CLOSED
        self.queue_frame(encode_frame(FrameType.CLOSE, _reason_bytes(reason)))

    def _fail(self, exc: RelayProtocolError) -> None:
        if self.state is ServerState.CLOSED:
            return
        if isinstance(exc, AuthenticationFailed | UnsupportedVersion):
            self.state = ServerState.CLOSED
            self.queue_frame(encode_frame(FrameType.AUTH_FAILED, _reason_bytes(str(exc))))
        else:
            self.close(f"{exc.reason}: {exc}")
        self._buf.clear()
        self._events.clear()  # what came before the fault in the same data is not acted on


# -- client session -------------------------------------------------------------------------


class ClientState(Enum):
    AWAITING_HELLO = "awaiting_hello"
    AWAITING_AUTH_RESULT = "awaiting_auth_result"
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ClientSessionConfig:
    handshake_timeout: float = 10.0
    ping_interval: float = 15.0
    ping_timeout: float = 10.0


class RelayClientSession:
    """One login to a relay from the client side: verifies who the relay is, then carries data."""

    def __init__(
        self,
        identity: Identity,
        relay_id: NodeId,
        now: float,
        config: ClientSessionConfig | None = None,
    ) -> None:
        self.config = config or ClientSessionConfig()
        self.state = ClientState.AWAITING_HELLO
        self._identity = identity
        self._relay_id = relay_id
        self._buf = bytearray()
        self._events: deque[ClientEvent] = deque()
        self._out: list[bytes] = []
        self._out_size = 0
        self._handshake_deadline = now + self.config.handshake_timeout
        self._next_ping = 0.0
        self._ping_payload: bytes | None = None
        self._pong_deadline = 0.0
        self._ids: dict[bytes, NodeId] = {}

    # output

    @property
    def pending_bytes(self) -> int:
        return self._out_size

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        return data

    def send_packet(self, dst: NodeId, data: bytes) -> None:
        """Queue a packet for `dst`; only valid once CONNECTED."""
        if self.state is not ClientState.CONNECTED:
            raise RuntimeError(f"cannot send in state {self.state.value}")
        if len(data) > MAX_PACKET_SIZE:
            raise ValueError(f"packet of {len(data)} bytes exceeds {MAX_PACKET_SIZE}")
        frame = HEADER.pack(_SEND, NODE_ID_LEN + len(data)) + dst.raw + data
        self._out.append(frame)
        self._out_size += len(frame)

    def _queue(self, frame: bytes) -> None:
        self._out.append(frame)
        self._out_size += len(frame)

    # input

    def receive_data(self, data: bytes, now: float) -> None:
        """Parse every complete frame in `data` (plus what was left over before)."""
        if self.state is ClientState.CLOSED:
            return
        try:
            self._receive(data, now)
        except RelayProtocolError:
            self.state = ClientState.CLOSED
            self._buf.clear()
            self._events.clear()
            raise

    def next_event(self) -> ClientEvent | None:
        """The oldest event not yet handed out, or None."""
        return self._events.popleft() if self._events else None

    def _receive(self, data: bytes, now: float) -> None:
        if self._buf:
            self._buf += data
            data = bytes(self._buf)
            self._buf.clear()
        end_of_data = len(data)
        events = self._events
        unpack = HEADER.unpack_from
        off = 0
        while end_of_data - off >= HEADER_LEN:
            frame_type, length = unpack(data, off)
            if length > MAX_FRAME_PAYLOAD or frame_type not in _KNOWN_TYPES:
                _check_header(frame_type, length)
            end = off + HEADER_LEN + length
            if end > end_of_data:
                break
            body = off + HEADER_LEN
            if frame_type == _RECV and self.state is ClientState.CONNECTED:
                if length < NODE_ID_LEN:
                    raise MalformedFrame("RecvPacket shorter than a node id")
                events.append(
                    PacketReceived(
                        self._node_id(data[body : body + NODE_ID_LEN]),
                        data[body + NODE_ID_LEN : end],
                    )
                )
            else:
                self._control(frame_type, memoryview(data)[body:end], now, events)
                if self.state is ClientState.CLOSED:
                    return
            off = end
        if off < end_of_data:
            self._buf += memoryview(data)[off:]

    def _node_id(self, raw: bytes) -> NodeId:
        node_id = self._ids.get(raw)
        if node_id is None:
            if len(self._ids) >= 4096:
                self._ids.clear()
            node_id = self._ids[raw] = NodeId(raw)
        return node_id

    def _control(
        self, frame_type: int, payload: memoryview, now: float, events: deque[ClientEvent]
    ) -> None:
        state = self.state
        if frame_type == FrameType.CLOSE:
            self.state = ClientState.CLOSED
            events.append(ServerClosed(_reason_text(payload)))
        elif state is ClientState.AWAITING_HELLO:
            if frame_type != FrameType.SERVER_HELLO:
                raise UnexpectedFrame(f"{FrameType(frame_type).name} before ServerHello")
            self._hello(payload)
        elif state is ClientState.AWAITING_AUTH_RESULT:
            if frame_type == FrameType.AUTH_OK:
                if len(payload):
                    raise MalformedFrame("AuthOk carries no payload")
                self.state = ClientState.CONNECTED
                self._next_ping = now + self.config.ping_interval
                events.append(Authenticated(self._relay_id))
            elif frame_type == FrameType.AUTH_FAILED:
                raise AuthRefused(f"relay refused the login: {_reason_text(payload)}")
            else:
                raise UnexpectedFrame(f"{FrameType(frame_type).name} while awaiting AuthOk")
        elif frame_type == FrameType.PEER_GONE:
            if len(payload) != NODE_ID_LEN:
                raise MalformedFrame(f"PeerGone of {len(payload)} bytes")
            events.append(PeerGone(self._node_id(bytes(payload))))
        elif frame_type == FrameType.PING:
            if len(payload) != PING_LEN:
                raise MalformedFrame(f"Ping of {len(payload)} bytes, expected {PING_LEN}")
            self._queue(encode_frame(FrameType.PONG, bytes(payload)))
        elif frame_type == FrameType.PONG:
            if len(payload) != PING_LEN:
                raise MalformedFrame(f"Pong of {len(payload)} bytes, expected {PING_LEN}")
            if self._ping_payload is not None and hmac.compare_digest(
                bytes(payload), self._ping_payload
            ):
                self._ping_payload = None
                self._next_ping = now + self.config.ping_interval
        else:
            raise UnexpectedFrame(f"{FrameType(frame_type).name} on a connected session")

    def _hello(self, payload: memoryview) -> None:
        if len(payload) != _HELLO_LEN:
            raise MalformedFrame(f"ServerHello of {len(payload)} bytes, expected {_HELLO_LEN}")
        if payload[0] != PROTOCOL_VERSION:
            raise UnsupportedVersion(
                f"relay speaks protocol {payload[0]}, this client {PROTOCOL_VERSION}"
            )
        announced = NodeId(bytes(payload[1 : 1 + NODE_ID_LEN]))
        if announced != self._relay_id:
            raise RelayIdMismatch(
                f"relay announced id {announced}, expected relay id {self._relay_id}"
            )
        challenge = bytes(payload[1 + NODE_ID_LEN :])
        me = self._identity.node_id
        signature = sign(
            self._identity, Tag.RELAY_AUTH, auth_payload(self._relay_id, challenge, me)
        )
        self._queue(
            encode_frame(FrameType.CLIENT_AUTH, bytes([PROTOCOL_VERSION]) + me.raw + signature)
        )
        self.state = ClientState.AWAITING_AUTH_RESULT

    # time

    def get_timer(self) -> float | None:
        if self.state in (ClientState.AWAITING_HELLO, ClientState.AWAITING_AUTH_RESULT):
            return self._handshake_deadline
        if self.state is ClientState.CONNECTED:
            return self._pong_deadline if self._ping_payload is not None else self._next_ping
        return None

    def handle_timer(self, now: float) -> None:
        try:
            if (
                self.state in (ClientState.AWAITING_HELLO, ClientState.AWAITING_AUTH_RESULT)
                and now >= self._handshake_deadline
            ):
                raise HandshakeTimeout(
                    f"relay login not complete within {self.config.handshake_timeout:g} s"
                )
            if self.state is ClientState.CONNECTED:
                if self._ping_payload is not None:
                    if now >= self._pong_deadline:
                        raise PingTimeout(
                            f"relay did not answer a ping within {self.config.ping_timeout:g} s"
                        )
                elif now >= self._next_ping:
                    self._ping_payload = os.urandom(PING_LEN)
                    self._pong_deadline = now + self.config.ping_timeout
                    self._queue(encode_frame(FrameType.PING, self._ping_payload))
        except RelayProtocolError:
            self.state = ClientState.CLOSED
            raise
