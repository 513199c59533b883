"""Per-peer path selection (sans-IO, time passed in): which address QUIC packets go to.

Modelled on Tailscale's magicsock endpoint / Iroh 0.35. A peer has candidate direct UDP
addresses (given at connect, learned from Pings it sent us, or from its CallMeMaybe) and maybe
a relay. A candidate is *confirmed* when it answered our Ping with a Pong, and stays trusted for
`trust_window` after the last Pong. While a connection is active we ping the path in use every
`heartbeat_interval`, so a dead direct path stops being trusted within the window and traffic
moves to the relay; other candidates are re-probed every `probe_interval`, so traffic returns
to a direct path once it answers again.

Idle is nearly free: on a confirmed direct path nobody heartbeats while the connections to
the peer have nothing unacknowledged in flight (QUIC keepalives keep the NAT binding and
prove liveness; the path is *held* without Pongs). Once data has been unacknowledged for
`unacked_grace` (a transfer, a keepalive that got no ACK, a loss), heartbeats and probes
resume, and the path must answer one within `ping_timeout`: a path that died while idle is
left `unacked_grace + ping_timeout` (2 s) after the first unanswered packet, one that dies
during a transfer (heartbeats running) within the trust window, as before (`set_unacked`).

Sending rule (see `send_targets`):
- a confirmed candidate exists: send only there (the lowest RTT one, with hysteresis);
- otherwise: the relay if there is one, plus every candidate that has not failed a ping yet
  (Iroh sends on both until a direct path is confirmed). Without a relay, QUIC goes to the
  unfailed candidates alongside the first Ping (saves one round trip on the handshake), or to
  all candidates if every one has failed, since there is nothing better to try.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from fleet.identity import NodeId
from fleet.mesh.disco import Addr, Ping

MAX_CANDIDATES = 16
MAX_OUTSTANDING_PINGS = 64
PING_BACK_GAP = 0.1  # at most one immediate ping-back per candidate this often
_NEVER = float("inf")


@dataclass(frozen=True, slots=True)
class PathTiming:
    heartbeat_interval: float = 1.0  # ping the direct path in use this often
    trust_window: float = 3.0  # a Pong keeps a direct path trusted this long
    probe_interval: float = 2.0  # re-ping other candidates this often
    ping_timeout: float = 1.5  # an unanswered ping this old marks its candidate failed
    # While no candidate is confirmed, an unanswered one is re-pinged this often for the
    # first `search_window` seconds: a lost Ping must not cost a whole probe interval, since
    # the peer accepts our QUIC packets only from an address a Ping tied to us (at 40 % loss
    # that wait dominated connect times).
    search_interval: float = 0.25
    search_window: float = 4.0
    # Data unacknowledged this long on the path in use: heartbeats resume (and the path must
    # answer one within `trust_window` of that moment). Longer than a round trip on any
    # path we use, shorter than a QUIC probe timeout's wait.
    unacked_grace: float = 0.5


@dataclass(frozen=True, slots=True)
class Path:
    """The path traffic to a peer takes: a direct UDP address, or the relay."""

    kind: Literal["direct", "relay"]
    addr: Addr | None = None

    def __str__(self) -> str:
        if self.addr is None:
            return self.kind
        return f"{self.kind} {self.addr[0]}:{self.addr[1]}"


@dataclass(frozen=True, slots=True)
class PathChanged:
    node: NodeId
    old: Path | None
    new: Path | None
    reason: str


@dataclass(frozen=True, slots=True)
class SendPing:
    """Action: send this Ping to this address."""

    addr: Addr
    ping: Ping


@dataclass(slots=True)
class _Candidate:
    addr: Addr
    source: str
    last_seen: float
    last_pong: float | None = None
    rtt: float | None = None
    last_ping: float | None = None
    first_unanswered: float | None = None  # oldest ping sent since the last pong


@dataclass(slots=True)
class _SentPing:
    addr: Addr
    sent: float


@dataclass
class PeerPaths:
    """Path state for one peer. Every method that takes `now` may emit PathChanged events."""

    node: NodeId
    timing: PathTiming = field(default_factory=PathTiming)
    has_relay: bool = False
    active: bool = False
    # Since when data to the peer has been in flight unacknowledged; None: nothing is. Until
    # the owner reports it (set_unacked), "always": heartbeats run as during a transfer.
    unacked_since: float | None = float("-inf")
    _candidates: dict[Addr, _Candidate] = field(default_factory=dict)
    _pings: dict[bytes, _SentPing] = field(default_factory=dict)
    _path: Path | None = None
    _doubt_since: float | None = None
    _events: deque[PathChanged] = field(default_factory=deque)

    # -- inputs -----------------------------------------------------------------------------

    def add_candidate(self, addr: Addr, now: float, source: str) -> None:
        cand = self._candidates.get(addr)
        if cand is None:
            if len(self._candidates) >= MAX_CANDIDATES:
                self._evict()
            self._candidates[addr] = _Candidate(addr, source, now)
        else:
            cand.last_seen = now
        self._update(now, f"candidate from {source}")

    def ping_received(self, addr: Addr, now: float) -> None:
        """The peer pinged us from `addr` (authenticated): a candidate worth confirming.

        A peer that pings from a new address has usually moved (a restarted process on a
        new port, a NAT rebinding). The direct path in use must then answer a ping again
        before it is trusted: otherwise replies go to a dead address for the rest of its
        trust window (3 s for every fleetctl run after the first).

        If that address is not confirmed yet, ping it back at once instead of at the next
        probe: the peer's Ping just opened its NAT towards us, so our Ping now gets through
        (simultaneous hole punching needs both sides to send).
        """
        known = self._candidates.get(addr)
        current = self._path
        if (
            current is not None
            and current.kind == "direct"
            and current.addr != addr
            and not (known is not None and self._confirmed(known, now))
        ):
            in_use = self._candidates.get(current.addr) if current.addr else None
            if in_use is not None and in_use.last_pong is not None:
                in_use.last_pong = None
                in_use.last_ping = None  # probe it at the next poll
        self.add_candidate(addr, now, "ping")
        cand = self._candidates.get(addr)
        if (
            cand is not None
            and not self._confirmed(cand, now)
            and (cand.last_ping is None or now - cand.last_ping >= PING_BACK_GAP)
        ):
            cand.last_ping = None  # due now (see poll / next_deadline)

    def pong_received(self, tx_id: bytes, addr: Addr, now: float) -> bool:
        """A Pong from the peer; True if it answers one of our Pings sent to `addr`."""
        sent = self._pings.get(tx_id)
        if sent is None or sent.addr != addr:
            return False
        del self._pings[tx_id]
        cand = self._candidates.get(addr)
        if cand is None:
            return False
        cand.last_pong = cand.last_seen = now
        rtt = max(now - sent.sent, 0.0)
        cand.rtt = rtt if cand.rtt is None else 0.7 * cand.rtt + 0.3 * rtt
        cand.first_unanswered = None
        self._doubt_since = None
        self._update(now, "pong")
        return True

    def set_relay(self, has_relay: bool, now: float) -> None:
        self.has_relay = has_relay
        self._update(now, "relay " + ("available" if has_relay else "gone"))

    def set_active(self, active: bool, now: float) -> None:
        """Heartbeats and probes run only while a connection to the peer is active."""
        self.active = active
        self._update(now, "activity")

    def doubt(self, now: float) -> bool:
        """The peer's traffic arrived over the relay while we use a direct path: it may have
        given that path up (a one-way cut: a receiver's ACKs never wait for anything), so
        the path must answer a heartbeat again to stay in use. True if that is news."""
        current = self._path
        if self._doubt_since is None and current is not None and current.kind == "direct":
            self._doubt_since = now
            self._update(now, "traffic over the relay")
            return True
        return False

    def set_unacked(self, since: float | None, now: float) -> None:
        """Since when data to the peer has been in flight unacknowledged (None: nothing is).
        The path in use is heartbeated only while that has lasted `unacked_grace`."""
        self.unacked_since = since
        self._update(now, "unacknowledged data" if since is not None else "acknowledged")

    # -- outputs ----------------------------------------------------------------------------

    def poll(self, now: float) -> list[SendPing]:
        """Pings due now (heartbeat on the path in use, probes elsewhere)."""
        self._expire_pings(now)
        out: list[SendPing] = []
        if self.active:
            current = self._best_confirmed(now)
            quiet = current is not None and not self._suspect(now)
            for cand in self._candidates.values():
                if quiet and cand.last_ping is not None:
                    continue  # idle on a good direct path: no disco at all
                interval = self._interval(cand, current, now)
                if cand.last_ping is None or now >= cand.last_ping + interval:
                    out.append(self._ping(cand, now))
        self._update(now, "timer")
        return out

    def send_targets(self, now: float) -> tuple[list[Addr], bool]:
        """Where QUIC packets go now: (direct addresses, also via relay?)."""
        best = self._best_confirmed(now)
        if best is not None:
            return [best.addr], False
        unfailed = [c.addr for c in self._candidates.values() if not self._failed(c, now)]
        if self.has_relay:
            return unfailed, True
        return unfailed or list(self._candidates), False

    def _interval(self, cand: _Candidate, best: _Candidate | None, now: float | None) -> float:
        """How long after its last Ping a candidate is pinged again."""
        timing = self.timing
        if best is not None:
            return timing.heartbeat_interval if cand is best else timing.probe_interval
        searching = cand.first_unanswered is not None and (
            now is None or now < cand.first_unanswered + timing.search_window
        )
        return timing.search_interval if searching else timing.probe_interval

    def next_deadline(self, now: float | None = None) -> float | None:
        """When `poll` should next run: `now` (0.0 without it) if a ping is due, else the next
        moment something changes (None: nothing will until an input)."""
        deadlines: list[float] = []
        if self.active:
            best = self._best_confirmed(now)
            quiet = best is not None and not self._suspect(now)
            for cand in self._candidates.values():
                if cand.last_ping is None:
                    return 0.0 if now is None else now
                if not quiet:
                    deadlines.append(cand.last_ping + self._interval(cand, best, now))
                if cand.first_unanswered is not None:
                    deadlines.append(cand.first_unanswered + self.timing.ping_timeout)
            doubted = self._doubted_since()
            if quiet and doubted is not None:
                deadlines.append(doubted)
        for cand in self._candidates.values():
            if cand.last_pong is not None:
                deadlines.append(self._trusted_until(cand))
        # Past moments (a trust window that ran out, a ping that timed out) were handled by
        # the poll that saw them: only the future counts, or the timer would spin.
        future = [d for d in deadlines if (now is None or d > now) and d != _NEVER]
        return min(future) if future else None

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def candidates(self) -> list[Addr]:
        return list(self._candidates)

    def next_event(self) -> PathChanged | None:
        return self._events.popleft() if self._events else None

    # -- internals --------------------------------------------------------------------------

    def _ping(self, cand: _Candidate, now: float) -> SendPing:
        ping = Ping.new()
        if len(self._pings) >= MAX_OUTSTANDING_PINGS:
            oldest = min(self._pings, key=lambda tx: self._pings[tx].sent)
            del self._pings[oldest]
        self._pings[ping.tx_id] = _SentPing(cand.addr, now)
        cand.last_ping = now
        if cand.first_unanswered is None:
            cand.first_unanswered = now
        return SendPing(cand.addr, ping)

    def _expire_pings(self, now: float) -> None:
        horizon = now - 4 * max(self.timing.trust_window, self.timing.ping_timeout)
        for tx in [tx for tx, p in self._pings.items() if p.sent < horizon]:
            del self._pings[tx]

    def _failed(self, cand: _Candidate, now: float) -> bool:
        return (
            cand.first_unanswered is not None
            and now >= cand.first_unanswered + self.timing.ping_timeout
        )

    def _doubted_since(self) -> float | None:
        """Since when the path in use must prove itself again (None: it is held)."""
        times = [t for t in (self._doubt_since,) if t is not None]
        if self.unacked_since is not None:
            times.append(self.unacked_since + self.timing.unacked_grace)
        return min(times) if times else None

    def _suspect(self, now: float | None) -> bool:
        """Data has been unacknowledged long enough (or the peer's traffic came over the
        relay) that the path in use must prove itself."""
        since = self._doubted_since()
        return since is not None and (now is None or now >= since)

    def _trusted_until(self, cand: _Candidate) -> float:
        assert cand.last_pong is not None
        until = cand.last_pong + self.timing.trust_window
        current = self._path
        if current is not None and current.kind == "direct" and current.addr == cand.addr:
            since = self._doubted_since()
            if since is None:
                return _NEVER  # held: nothing unacknowledged, nothing to doubt
            # Doubted since then: its heartbeat must be answered within a ping timeout
            # (with a relay, traffic moves there ~2 s after a cut).
            until = max(until, since + self.timing.ping_timeout)
        return until

    def _confirmed(self, cand: _Candidate, now: float | None) -> bool:
        if cand.last_pong is None:
            return False
        return now is None or now < self._trusted_until(cand)

    def _best_confirmed(self, now: float | None) -> _Candidate | None:
        confirmed = [c for c in self._candidates.values() if self._confirmed(c, now)]
        if not confirmed:
            return None
        best = min(confirmed, key=lambda c: c.rtt or 0.0)
        current = self._path
        if current is not None and current.kind == "direct" and current.addr != best.addr:
            # Hysteresis: stay on the current direct path unless the new one is clearly faster.
            cur = self._candidates.get(current.addr) if current.addr else None
            if (
                cur is not None
                and cur in confirmed
                and (cur.rtt or 0.0) <= (best.rtt or 0.0) * 1.5 + 0.002
            ):
                return cur
        return best

    def _evict(self) -> None:
        victim = min(self._candidates.values(), key=lambda c: (c.last_pong or 0.0, c.last_seen))
        del self._candidates[victim.addr]

    def _update(self, now: float, reason: str) -> None:
        best = self._best_confirmed(now)
        new: Path | None
        if best is not None:
            new = Path("direct", best.addr)
        elif self.has_relay:
            new = Path("relay")
        else:
            targets, _ = self.send_targets(now)
            new = Path("direct", targets[0]) if targets else None
        if new != self._path:
            self._events.append(PathChanged(self.node, self._path, new, reason))
            self._path = new
