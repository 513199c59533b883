"""Which QUIC Initials may create server state: address validation and half-open caps.

Sans-IO, time passed in. Anyone can mint a key, sign one disco Ping and then send Initials
with fresh connection ids; each accepted one costs a TLS handshake (X25519, an Ed25519
signature) and ~100 KB until it ends. So a server connection is *half-open* until its
handshake completes, and this module bounds them: per claimed node id, per source IP (direct
packets; the relay already authenticates the sender's node id) and in total. Under pressure
(more than `retry_threshold` half-open) a new connection must first echo a QUIC Retry token
(RFC 9000 8.1), which costs us no state and proves the client receives at its address.

The same decision enforces the connection limit (established and half-open together), and
both the limit and the total half-open cap keep a reserve that only *priority* nodes may use
(the coordinator marks its admins: fleetctl still gets in while ten thousand agents
connect). And it applies back-pressure: while the owner says it is `busy` (the coordinator:
its queue of Hellos is long), new connections from other nodes are not started at all, so
no handshake is spent on a connection that would only be told to come back later; the
client's Initials are retransmitted, then it backs off and dials again. Every refusal is
counted by kind; `report_due` says when a (rate-limited) log line with the totals is due, so
reaching a limit is never silent.

The token is ours alone (HMAC-SHA256 with a per-endpoint random key) and binds the source (IP
and port, or "relay"), the claimed node, the client's original destination connection id, the
connection id we chose for the Retry, and the time; it is valid for RETRY_TOKEN_LIFETIME.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

from aioquic.quic.packet import encode_quic_retry

from fleet.identity import NodeId
from fleet.log import GrowthReport
from fleet.mesh.disco import Addr

RETRY_TOKEN_LIFETIME = 10.0  # clients echo a Retry token within one round trip
RETRY_CID_LENGTH = 8  # the connection id we pick in a Retry (our host cid length)
_MAC_LENGTH = 16
_LABEL = b"fleet/mesh/retry/1\x00"
_STAMP = struct.Struct("!QB")  # issued at (ms), length of the original destination cid
_K = TypeVar("_K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    max_half_open_per_node: int
    max_half_open_per_ip: int
    max_half_open: int
    retry_threshold: int | None  # None: never ask for a Retry; 0: always
    retry_threshold_per_node: int | None = None  # the same, counting this node's only
    max_connections: int | None = None  # connections (any state) for ordinary nodes
    reserved_connections: int = 0  # beyond max_connections, for priority nodes only
    reserved_half_open: int = 0  # beyond max_half_open, for priority nodes only


class Verdict(enum.Enum):
    ACCEPT = "accept"
    RETRY = "retry"  # answer with `Decision.retry` and keep nothing
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str = ""
    original_cid: bytes = b""  # ACCEPT: the client's first destination cid
    retry_cid: bytes | None = None  # ACCEPT after a Retry: the cid our Retry chose
    retry: bytes = b""  # RETRY: the packet to send back to the source


@dataclass(frozen=True, slots=True)
class HalfOpen:
    """The slot one half-open server connection holds until settle()."""

    node: NodeId
    ip: str | None
    since: float


def _source_bytes(source: Addr | None) -> bytes:
    return b"relay" if source is None else f"{source[0]}:{source[1]}".encode()


class Admission:
    """Counts half-open server connections and decides on each new Initial."""

    def __init__(
        self,
        limits: AdmissionLimits,
        *,
        key: bytes | None = None,
        priority: Callable[[NodeId], bool] | None = None,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.limits = limits
        self._key = key or os.urandom(32)
        self._per_node: dict[NodeId, int] = {}
        self._per_ip: dict[str, int] = {}
        self.half_open = 0
        self.refused = {
            "node": 0,
            "ip": 0,
            "total": 0,
            "token": 0,
            "connections": 0,
            "busy": 0,
        }
        self.retries_sent = 0
        self.priority_admitted = 0  # accepted only thanks to a reserve
        # Which nodes may use the reserves (set by the owner, e.g. the coordinator's admins).
        self.priority: Callable[[NodeId], bool] = priority or _nobody
        # Whether the owner is too busy for new ordinary connections (back-pressure).
        self.busy: Callable[[], bool] = busy or _never
        self._report = GrowthReport()  # at most one log line of refusal totals per 10 s

    # -- decisions --------------------------------------------------------------------------

    def decide(
        self,
        node: NodeId,
        source: Addr | None,
        *,
        version: int,
        destination_cid: bytes,
        source_cid: bytes,
        token: bytes,
        now: float,
        connections: int = 0,
    ) -> Decision:
        """Decide on an Initial with an unknown destination cid from `node` at `source`;
        `connections`: how many the endpoint holds now (any state)."""
        limits = self.limits
        cap = limits.max_connections
        over_total = self.half_open >= limits.max_half_open
        over_limit = cap is not None and connections >= cap
        if over_total or over_limit:
            # Only a priority node may take a reserved slot, and only while one is left.
            priority = self.priority(node)
            if (
                cap is not None
                and over_limit
                and (not priority or connections >= cap + limits.reserved_connections)
            ):
                return self._refuse("connections", "connection limit reached")
            if over_total and (
                not priority or self.half_open >= limits.max_half_open + limits.reserved_half_open
            ):
                return self._refuse("total", "too many half-open connections")
        if self.busy() and not self.priority(node):
            return self._refuse("busy", "too busy for new connections")
        if self._per_node.get(node, 0) >= limits.max_half_open_per_node:
            return self._refuse("node", f"too many half-open connections from {node.short()}")
        ip = source[0] if source is not None else None
        if ip is not None and self._per_ip.get(ip, 0) >= limits.max_half_open_per_ip:
            # An admin may sit behind the same NAT as many devices: the reserve holds here too.
            if not self.priority(node) or (
                self._per_ip[ip] >= limits.max_half_open_per_ip + limits.reserved_half_open
            ):
                return self._refuse("ip", f"too many half-open connections from {ip}")
            over_total = True  # admitted from the reserve
        if token:
            original = self._validate(token, node, source, destination_cid, now)
            if original is None:
                # Not ours, stale, or for another path of the same client: drop silently
                # (an INVALID_TOKEN close would kill a client whose other copy is valid).
                return self._refuse("token", "invalid retry token")
            return self._accept(original, destination_cid, over_total or over_limit)
        if self._under_pressure(node):
            retry_cid = os.urandom(RETRY_CID_LENGTH)
            packet = encode_quic_retry(
                version=version,
                source_cid=retry_cid,
                destination_cid=source_cid,
                original_destination_cid=destination_cid,
                retry_token=self._token(node, source, destination_cid, retry_cid, now),
            )
            self.retries_sent += 1
            return Decision(Verdict.RETRY, retry=packet)
        return self._accept(destination_cid, None, over_total or over_limit)

    def _accept(self, original: bytes, retry_cid: bytes | None, reserved: bool) -> Decision:
        if reserved:
            self.priority_admitted += 1
        return Decision(Verdict.ACCEPT, original_cid=original, retry_cid=retry_cid)

    def _under_pressure(self, node: NodeId) -> bool:
        total, per_node = self.limits.retry_threshold, self.limits.retry_threshold_per_node
        return (total is not None and self.half_open >= total) or (
            per_node is not None and self._per_node.get(node, 0) >= per_node
        )

    def _refuse(self, kind: str, reason: str) -> Decision:
        self.refused[kind] += 1
        return Decision(Verdict.DROP, reason)

    # -- reporting --------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Half-open connections now, and what was refused (by kind), retried or reserved."""
        return {
            "half_open": self.half_open,
            "retries_sent": self.retries_sent,
            "priority_admitted": self.priority_admitted,
            **{f"refused_{kind}": n for kind, n in self.refused.items()},
        }

    def report_due(self, now: float) -> bool:
        """Whether a log line with the totals is due (refusals grew; rate-limited)."""
        return self._report.due(sum(self.refused.values()), now)

    # -- slots ------------------------------------------------------------------------------

    def open(self, node: NodeId, source: Addr | None, now: float) -> HalfOpen:
        ip = source[0] if source is not None else None
        self.half_open += 1
        self._per_node[node] = self._per_node.get(node, 0) + 1
        if ip is not None:
            self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        return HalfOpen(node, ip, now)

    def settle(self, slot: HalfOpen) -> None:
        """The handshake completed or the connection ended: free its slot (call once)."""
        self.half_open -= 1
        _decrement(self._per_node, slot.node)
        if slot.ip is not None:
            _decrement(self._per_ip, slot.ip)

    # -- tokens -----------------------------------------------------------------------------

    def _mac(
        self, stamp: bytes, node: NodeId, source: Addr | None, odcid: bytes, rcid: bytes
    ) -> bytes:
        message = b"".join((_LABEL, stamp, odcid, rcid, node.raw, _source_bytes(source)))
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_MAC_LENGTH]

    def _token(
        self, node: NodeId, source: Addr | None, odcid: bytes, rcid: bytes, now: float
    ) -> bytes:
        stamp = _STAMP.pack(int(now * 1000), len(odcid))
        return stamp + odcid + self._mac(stamp, node, source, odcid, rcid)

    def _validate(
        self, token: bytes, node: NodeId, source: Addr | None, rcid: bytes, now: float
    ) -> bytes | None:
        """The original destination cid the token carries, or None if it is not valid here."""
        if len(token) < _STAMP.size + _MAC_LENGTH:
            return None
        issued_ms, odcid_len = _STAMP.unpack_from(token)
        if len(token) != _STAMP.size + odcid_len + _MAC_LENGTH:
            return None
        stamp, odcid = token[: _STAMP.size], token[_STAMP.size : _STAMP.size + odcid_len]
        expected = self._mac(stamp, node, source, odcid, rcid)
        if not hmac.compare_digest(expected, token[-_MAC_LENGTH:]):
            return None
        if not 0 <= now - issued_ms / 1000 <= RETRY_TOKEN_LIFETIME:
            return None
        return odcid


def _nobody(node: NodeId) -> bool:
    return False


def _never() -> bool:
    return False


def _decrement(counts: dict[_K, int], key: _K) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
