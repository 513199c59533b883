"""Learning our reflexive (public) address with STUN, on the mesh's own UDP socket (sans-IO).

A NAT maps each (local address, port) to a public one; asking from the socket that carries
QUIC and disco is the only way to learn the mapping peers will see. `ReflexiveProbe` sends
Binding requests to a few servers (the relays' STUN ports, configured extras), retransmits
them, accepts only responses to its own transactions *from the server it asked*, and reports
when the set of reflexive addresses changes, so the endpoint can tell its peers (CallMeMaybe),
and when a server does not answer at all (without an answer, nodes behind NAT cannot punch
holes; a relay started with --no-stun or a firewall on UDP 3478 is the usual reason).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from fleet.mesh.disco import Addr
from fleet.stun import BindingResponse, StunError, binding_request, decode, new_transaction_id

MAX_SERVERS = 8


@dataclass(frozen=True, slots=True)
class StunTiming:
    interval: float = 20.0  # a fresh Binding round per server this often (NAT mappings change)
    retransmit: float = 0.5  # first retransmission; doubles (RFC 5389 7.2.1)
    tries: int = 4  # requests per round before the round fails
    stale_after: float = 50.0  # forget a server's answer after this long without a new one


@dataclass(frozen=True, slots=True)
class ReflexiveChanged:
    """Our set of reflexive addresses changed (first learnt, NAT rebinding, or expired)."""

    old: frozenset[Addr]
    new: frozenset[Addr]


@dataclass(frozen=True, slots=True)
class StunUnanswered:
    """A whole round of requests to `server` went unanswered and we have no fresh answer from
    it; reported once until it answers again."""

    server: Addr
    waited: float  # seconds since the first unanswered request


ReflexiveEvent = ReflexiveChanged | StunUnanswered


@dataclass(frozen=True, slots=True)
class StunServerStatus:
    """One server as `ReflexiveProbe.status` reports it (for `fleet ping` and status)."""

    server: Addr
    mapped: Addr | None  # its fresh answer: our address as it saw it
    waited: float | None  # seconds we have been asking without an answer; None: not asking


@dataclass(slots=True)
class _Server:
    addr: Addr
    next_round: float
    tx_id: bytes | None = None
    tries: int = 0
    next_send: float = 0.0
    sent_at: float = 0.0
    mapped: Addr | None = None
    answered_at: float | None = None
    rtt: float | None = None
    unanswered_since: float | None = None  # first request since the last answer
    reported: bool = False  # StunUnanswered sent for this outage


@dataclass
class ReflexiveProbe:
    """Which public address(es) our socket has, as STUN servers see it."""

    timing: StunTiming = field(default_factory=StunTiming)
    _servers: dict[Addr, _Server] = field(default_factory=dict)
    _by_tx: dict[bytes, _Server] = field(default_factory=dict)
    _events: deque[ReflexiveEvent] = field(default_factory=deque)
    _current: frozenset[Addr] = frozenset()
    responses: int = 0
    rejected: int = 0

    def add_server(self, addr: Addr, now: float) -> None:
        if addr not in self._servers and len(self._servers) < MAX_SERVERS:
            self._servers[addr] = _Server(addr, next_round=now)

    def refresh(self, now: float) -> None:
        """Start a new round at every server now (e.g. after the network changed)."""
        for server in self._servers.values():
            if server.tx_id is None:
                server.next_round = now

    @property
    def servers(self) -> list[Addr]:
        return list(self._servers)

    @property
    def addresses(self) -> frozenset[Addr]:
        return self._current

    def poll(self, now: float) -> list[tuple[bytes, Addr]]:
        """Requests (new rounds and retransmissions) to send now."""
        out: list[tuple[bytes, Addr]] = []
        for server in self._servers.values():
            if server.tx_id is None and now >= server.next_round:
                server.tx_id = new_transaction_id()
                self._by_tx[server.tx_id] = server
                server.tries = 0
                server.next_send = now
                server.sent_at = now
                if server.unanswered_since is None:
                    server.unanswered_since = now
            if server.tx_id is not None and now >= server.next_send:
                if server.tries >= self.timing.tries:
                    self._end_round(server, now)
                    self._report_silence(server, now)
                    continue
                out.append((binding_request(server.tx_id), server.addr))
                server.next_send = now + self.timing.retransmit * (2**server.tries)
                server.tries += 1
        self._update(now)
        return out

    def receive(self, data: bytes, addr: Addr, now: float) -> bool:
        """Feed a datagram that looked like STUN; True if it answered one of our requests."""
        try:
            message = decode(data)
        except StunError:
            self.rejected += 1
            return False
        if not isinstance(message, BindingResponse):
            self.rejected += 1
            return False
        server = self._by_tx.get(message.tx_id)
        if server is None or server.addr != addr:
            self.rejected += 1  # not ours, or from someone other than the server we asked
            return False
        self.responses += 1
        server.mapped = message.mapped
        server.answered_at = now
        server.unanswered_since = None
        server.reported = False
        server.rtt = now - server.sent_at
        self._end_round(server, now)
        self._update(now)
        return True

    def next_deadline(self) -> float | None:
        deadlines = []
        for server in self._servers.values():
            deadlines.append(server.next_send if server.tx_id is not None else server.next_round)
            if server.answered_at is not None:
                deadlines.append(server.answered_at + self.timing.stale_after)
        return min(deadlines) if deadlines else None

    def next_event(self) -> ReflexiveEvent | None:
        return self._events.popleft() if self._events else None

    def status(self, now: float) -> list[StunServerStatus]:
        out = []
        for server in self._servers.values():
            fresh = self._fresh(server, now)
            waited = None
            if not fresh and server.unanswered_since is not None:
                waited = now - server.unanswered_since
            out.append(StunServerStatus(server.addr, server.mapped if fresh else None, waited))
        return out

    def _fresh(self, server: _Server, now: float) -> bool:
        return (
            server.mapped is not None
            and server.answered_at is not None
            and now < server.answered_at + self.timing.stale_after
        )

    def _report_silence(self, server: _Server, now: float) -> None:
        if server.reported or self._fresh(server, now) or server.unanswered_since is None:
            return
        server.reported = True
        self._events.append(StunUnanswered(server.addr, now - server.unanswered_since))

    def _end_round(self, server: _Server, now: float) -> None:
        if server.tx_id is not None:
            self._by_tx.pop(server.tx_id, None)
        server.tx_id = None
        server.next_round = now + self.timing.interval

    def _update(self, now: float) -> None:
        fresh = frozenset(
            s.mapped for s in self._servers.values() if s.mapped is not None and self._fresh(s, now)
        )
        if fresh != self._current:
            self._events.append(ReflexiveChanged(self._current, fresh))
            self._current = fresh
