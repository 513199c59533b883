"""Disco: signed path-discovery packets that travel beside QUIC on the same UDP socket.

Like Tailscale/Iroh disco, but signed with the node key (Tag.DISCO) instead of NaCl-boxed:
the content (addresses, transaction ids) is not secret, only its origin matters. Every packet
names its receiver inside the signed bytes, so a Ping for one node cannot be replayed to
another, and carries a timestamp so an old capture cannot be replayed later.

Layout (big-endian): MAGIC | version u8 | type u8 | sender id 32 | receiver id 32 |
timestamp ms u64 | body | Ed25519 signature 64. MAGIC starts with 0x00: a QUIC v1 packet
always has the 0x40 fixed bit set in its first byte, so the two can never be confused.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass

from fleet.identity import BadSignature, Identity, NodeId
from fleet.wire.tags import Tag, sign, verify

MAGIC = b"\x00fleet-disco"
VERSION = 1
TX_ID_LEN = 12
SIGNATURE_LEN = 64
MAX_ADDRESSES = 16
DEFAULT_MAX_AGE = 120.0  # seconds of clock difference tolerated between two nodes

_HEADER = struct.Struct(">BB32s32sQ")
_PREFIX_LEN = len(MAGIC) + _HEADER.size

Addr = tuple[str, int]


class DiscoError(ValueError):
    """A datagram that is not an acceptable disco packet (the message says why)."""


class MalformedDisco(DiscoError):
    """Bytes that do not decode as a disco packet."""


class ForgedDisco(DiscoError):
    """A disco packet whose signature does not verify under its claimed sender."""


class StaleDisco(DiscoError):
    """A disco packet whose timestamp is too far from our clock (replay or bad clock)."""


class MisaddressedDisco(DiscoError):
    """A genuine disco packet signed for another receiver (`packet` says by whom, for whom)."""

    def __init__(self, message: str, packet: DiscoPacket) -> None:
        super().__init__(message)
        self.packet = packet


@dataclass(frozen=True, slots=True)
class Ping:
    tx_id: bytes

    @staticmethod
    def new() -> Ping:
        return Ping(os.urandom(TX_ID_LEN))


@dataclass(frozen=True, slots=True)
class Pong:
    tx_id: bytes
    observed: Addr  # the source address the Ping came from, as the ponger saw it


@dataclass(frozen=True, slots=True)
class CallMeMaybe:
    addresses: tuple[Addr, ...]


Message = Ping | Pong | CallMeMaybe

_TYPE_PING, _TYPE_PONG, _TYPE_CALL_ME_MAYBE = 1, 2, 3


@dataclass(frozen=True, slots=True)
class DiscoPacket:
    """A decoded, verified disco packet."""

    sender: NodeId
    receiver: NodeId
    timestamp: float
    message: Message


def is_disco(data: bytes) -> bool:
    return data.startswith(MAGIC)


def _encode_addr(addr: Addr) -> bytes:
    host, port = addr
    ip = ipaddress.ip_address(host)
    return bytes([ip.version]) + ip.packed + struct.pack(">H", port)


def _decode_addr(data: bytes, pos: int) -> tuple[Addr, int]:
    if pos >= len(data):
        raise MalformedDisco("address truncated")
    version = data[pos]
    size = {4: 4, 6: 16}.get(version)
    if size is None:
        raise MalformedDisco(f"unknown address family {version}")
    end = pos + 1 + size + 2
    if end > len(data):
        raise MalformedDisco("address truncated")
    ip = ipaddress.ip_address(data[pos + 1 : pos + 1 + size])
    (port,) = struct.unpack_from(">H", data, pos + 1 + size)
    return (str(ip), port), end


def _encode_body(message: Message) -> tuple[int, bytes]:
    if isinstance(message, Ping):
        if len(message.tx_id) != TX_ID_LEN:
            raise ValueError("tx id must be 12 bytes")
        return _TYPE_PING, message.tx_id
    if isinstance(message, Pong):
        if len(message.tx_id) != TX_ID_LEN:
            raise ValueError("tx id must be 12 bytes")
        return _TYPE_PONG, message.tx_id + _encode_addr(message.observed)
    if len(message.addresses) > MAX_ADDRESSES:
        raise ValueError(f"at most {MAX_ADDRESSES} addresses")
    return _TYPE_CALL_ME_MAYBE, bytes([len(message.addresses)]) + b"".join(
        _encode_addr(a) for a in message.addresses
    )


def _decode_body(kind: int, body: bytes) -> Message:
    if kind == _TYPE_PING:
        if len(body) != TX_ID_LEN:
            raise MalformedDisco("ping body has the wrong length")
        return Ping(body)
    if kind == _TYPE_PONG:
        if len(body) < TX_ID_LEN:
            raise MalformedDisco("pong body truncated")
        observed, end = _decode_addr(body, TX_ID_LEN)
        if end != len(body):
            raise MalformedDisco("trailing bytes after pong")
        return Pong(body[:TX_ID_LEN], observed)
    if kind == _TYPE_CALL_ME_MAYBE:
        if not body:
            raise MalformedDisco("call-me-maybe body truncated")
        count, pos = body[0], 1
        if count > MAX_ADDRESSES:
            raise MalformedDisco("too many addresses")
        addresses = []
        for _ in range(count):
            addr, pos = _decode_addr(body, pos)
            addresses.append(addr)
        if pos != len(body):
            raise MalformedDisco("trailing bytes after call-me-maybe")
        return CallMeMaybe(tuple(addresses))
    raise MalformedDisco(f"unknown disco message type {kind}")


def encode(identity: Identity, receiver: NodeId, message: Message, now: float) -> bytes:
    """Sign `message` from `identity` to `receiver`; `now` is Unix time in seconds."""
    kind, body = _encode_body(message)
    unsigned = (
        MAGIC
        + _HEADER.pack(VERSION, kind, identity.node_id.raw, receiver.raw, int(now * 1000))
        + body
    )
    return unsigned + sign(identity, Tag.DISCO, unsigned)


def decode(data: bytes, me: NodeId, now: float, *, max_age: float = DEFAULT_MAX_AGE) -> DiscoPacket:
    """Parse and verify a disco packet addressed to `me`; raise a DiscoError subclass if not."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedDisco("not bytes")
    data = bytes(data)
    if not data.startswith(MAGIC):
        raise MalformedDisco("no disco magic")
    if len(data) < _PREFIX_LEN + SIGNATURE_LEN:
        raise MalformedDisco("disco packet truncated")
    version, kind, sender_raw, receiver_raw, ts_ms = _HEADER.unpack_from(data, len(MAGIC))
    if version != VERSION:
        raise MalformedDisco(f"unknown disco version {version}")
    unsigned, signature = data[:-SIGNATURE_LEN], data[-SIGNATURE_LEN:]
    message = _decode_body(kind, unsigned[_PREFIX_LEN:])
    sender, receiver = NodeId(sender_raw), NodeId(receiver_raw)
    try:
        verify(sender, Tag.DISCO, unsigned, signature)
    except BadSignature as exc:
        raise ForgedDisco(f"bad disco signature claiming {sender.short()}") from exc
    timestamp = ts_ms / 1000
    if abs(now - timestamp) > max_age:
        raise StaleDisco(f"disco timestamp {now - timestamp:+.0f}s from our clock")
    packet = DiscoPacket(sender, receiver, timestamp, message)
    if receiver != me:
        raise MisaddressedDisco(f"disco packet for {receiver.short()}, not for us", packet)
    return packet
