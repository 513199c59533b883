"""Admission of agents' Hellos: a bounded number worked on at once, a queue in front, and a
"busy, retry after" answer instead of a replacement storm. Sans-IO, time passed in.

Why: when thousands of agents dial at once, each Hello costs a transaction; answered in
arrival order with no bound, admins' requests wait behind them and late Welcomes make agents
time out and redial, and each redial used to replace (and restart) the session in progress.
So:
- at most `concurrency` Hellos are worked on at once; the others wait in FIFO order. Admin
  requests never wait here, and while one is being handled no more than `while_admins`
  Hellos run: every Hello holds the one database lock for a few steps, and an admin request
  needs it several times, so this is what puts admins ahead of a herd of agents;
- while a device's Hello waits or is being welcomed, another connection of the same device
  is answered Busy (retry after about the time the first one needs) and the first is kept:
  a redial never tears down the session that is about to be welcomed;
- a newcomer whose estimated wait (queue length times the measured cost of one Hello,
  divided by `concurrency`) exceeds `max_wait` is answered Busy at once, with that estimate
  as its retry-after, so no agent sits in a queue past its Welcome timeout;
- and before that: while the estimated wait exceeds half of `max_wait` the gate is
  `saturated`, and the coordinator's mesh endpoint starts no new connection from agents
  (back-pressure, fleet.mesh.admission): a handshake is not spent on a connection that would
  be answered Busy, so connections accepted per agent stay near one.
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass

from fleet.identity import NodeId
from fleet.log import GrowthReport


@dataclass(frozen=True, slots=True)
class HelloLimits:
    concurrency: int = 4  # Hellos worked on at once
    while_admins: int = 1  # ... while an admin request is being handled
    max_wait: float = 15.0  # longest estimated queue wait before newcomers are turned away
    min_retry_after: float = 1.0
    max_retry_after: float = 120.0
    first_cost: float = 0.005  # seconds per Hello assumed until one has been measured


@dataclass(eq=False, slots=True)
class Ticket:
    """One Hello's place: waiting, then started, until finish()."""

    node: NodeId
    arrived: float
    started: float | None = None


@dataclass(frozen=True, slots=True)
class TurnedAway:
    """Answer Busy: dial again after `retry_after` seconds."""

    retry_after: float
    reason: str


class HelloGate:
    """Which Hellos run now, which wait, which are told to come back later."""

    def __init__(self, limits: HelloLimits | None = None) -> None:
        self.limits = limits or HelloLimits()
        self._active: dict[NodeId, Ticket] = {}  # waiting or running, by device
        self._waiting: deque[Ticket] = deque()
        self._running = 0
        self._admins = 0  # admin requests being handled now
        self._cost = self.limits.first_cost  # moving average of one Hello's duration
        self.counts = {"admitted": 0, "queued": 0, "busy_same_device": 0, "busy_queue": 0}
        self.longest_queue = 0
        self._report = GrowthReport()

    # -- decisions --------------------------------------------------------------------------

    def arrive(self, node: NodeId, now: float) -> Ticket | TurnedAway:
        """A Hello from `node`: a ticket (started at once if `ticket.started` is set), or an
        answer to send instead of a Welcome."""
        current = self._active.get(node)
        if current is not None:
            self.counts["busy_same_device"] += 1
            return TurnedAway(
                self._retry_after(self._wait_of(current)),
                "another connection of this device is being welcomed",
            )
        if self._running >= self._concurrency:
            wait = self._wait_at(len(self._waiting) + 1)
            if wait > self.limits.max_wait:
                self.counts["busy_queue"] += 1
                return TurnedAway(self._retry_after(wait), "too many agents connecting")
        ticket = Ticket(node, now)
        self._active[node] = ticket
        self.counts["admitted"] += 1
        if self._running < self._concurrency:
            self._start(ticket, now)
        else:
            self.counts["queued"] += 1
            self._waiting.append(ticket)
            self.longest_queue = max(self.longest_queue, len(self._waiting))
        return ticket

    def finish(self, ticket: Ticket, now: float) -> list[Ticket]:
        """The Hello was answered, failed, or its connection went away while it waited (call
        once per ticket); returns the tickets that start now."""
        if self._active.get(ticket.node) is ticket:
            del self._active[ticket.node]
        if ticket.started is None:
            with contextlib.suppress(ValueError):  # defensive: a waiting ticket is queued
                self._waiting.remove(ticket)
            return []
        self._running -= 1
        self._cost = 0.8 * self._cost + 0.2 * max(0.0, now - ticket.started)
        return self._start_waiting(now)

    def admin_started(self) -> None:
        """An admin request is being handled: fewer Hellos start until it is done."""
        self._admins += 1

    def admin_finished(self, now: float) -> list[Ticket]:
        """Its answer is ready; returns the Hellos that start now (call once per request)."""
        self._admins -= 1
        return self._start_waiting(now)

    @property
    def _concurrency(self) -> int:
        return self.limits.while_admins if self._admins else self.limits.concurrency

    def _start_waiting(self, now: float) -> list[Ticket]:
        started = []
        while self._waiting and self._running < self._concurrency:
            nxt = self._waiting.popleft()
            self._start(nxt, now)
            started.append(nxt)
        return started

    def _start(self, ticket: Ticket, now: float) -> None:
        ticket.started = now
        self._running += 1

    # -- estimates --------------------------------------------------------------------------

    def _wait_at(self, position: int) -> float:
        """Estimated seconds until the Hello at queue `position` (1-based) is answered."""
        return (position / self.limits.concurrency + 1) * self._cost

    def _wait_of(self, ticket: Ticket) -> float:
        if ticket.started is not None:
            return self._cost
        try:
            return self._wait_at(self._waiting.index(ticket) + 1)
        except ValueError:
            return self._cost

    def _retry_after(self, wait: float) -> float:
        limits = self.limits
        return round(min(limits.max_retry_after, max(limits.min_retry_after, wait)), 3)

    # -- reporting --------------------------------------------------------------------------

    @property
    def saturated(self) -> bool:
        """Whether a newcomer would wait more than half of max_wait (then refuse new work)."""
        return (
            self._running >= self.limits.concurrency
            and self._wait_at(len(self._waiting) + 1) > self.limits.max_wait / 2
        )

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return self._running

    def stats(self) -> dict[str, float]:
        """Totals since start, and the queue now, for the coordinator's admission log line."""
        return {
            **{f"hellos_{kind}": n for kind, n in self.counts.items()},
            "hellos_waiting": len(self._waiting),
            "hellos_running": self._running,
            "hellos_longest_queue": self.longest_queue,
            "hello_cost_ms": round(self._cost * 1000, 2),
        }

    def report_due(self, now: float) -> bool:
        """Whether a log line with the totals is due: Busy answers grew (rate-limited)."""
        busy = self.counts["busy_same_device"] + self.counts["busy_queue"]
        return self._report.due(busy, now)
