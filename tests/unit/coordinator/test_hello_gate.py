"""The Hello gate: bounded work, FIFO waiting, Busy for a device's second connection and for
a queue too long to wait in, with retry-afters that follow the measured cost."""

from __future__ import annotations

import pytest

from fleet.coordinator.hello_gate import HelloGate, HelloLimits, Ticket, TurnedAway
from fleet.identity import Identity, NodeId


def nodes(n: int) -> list[NodeId]:
    return [Identity.generate().node_id for _ in range(n)]


def ticket(result: Ticket | TurnedAway) -> Ticket:
    assert isinstance(result, Ticket), result
    return result


def test_at_most_concurrency_run_and_the_rest_start_in_arrival_order() -> None:
    gate = HelloGate(HelloLimits(concurrency=2, max_wait=1e9))
    a, b, c, d = (ticket(gate.arrive(n, 0.0)) for n in nodes(4))
    assert [t.started for t in (a, b, c, d)] == [0.0, 0.0, None, None]
    assert (gate.running, gate.waiting) == (2, 2)
    assert gate.finish(b, 1.0) == [c]
    assert c.started == 1.0
    assert gate.finish(a, 1.5) == [d]
    assert gate.finish(c, 2.0) == []
    assert gate.finish(d, 2.0) == []
    assert (gate.running, gate.waiting) == (0, 0)


def test_a_second_connection_of_a_device_being_welcomed_is_turned_away_not_swapped() -> None:
    gate = HelloGate(HelloLimits(concurrency=1, max_wait=1e9))
    first, waiting = nodes(2)
    held = ticket(gate.arrive(first, 0.0))
    queued = ticket(gate.arrive(waiting, 0.0))
    for node in (first, waiting):  # running, and waiting in the queue
        again = gate.arrive(node, 0.5)
        assert isinstance(again, TurnedAway), again
        assert "being welcomed" in again.reason
        assert again.retry_after >= gate.limits.min_retry_after
    assert gate.counts["busy_same_device"] == 2
    assert gate.finish(held, 1.0) == [queued]  # the first ones kept their places
    gate.finish(queued, 1.1)
    assert isinstance(gate.arrive(first, 2.0), Ticket)  # once answered, a redial is welcome


def test_newcomers_are_told_to_come_back_when_the_estimated_wait_is_too_long() -> None:
    gate = HelloGate(HelloLimits(concurrency=1, max_wait=5.0, first_cost=1.0))
    admitted = [gate.arrive(n, 0.0) for n in nodes(10)]
    tickets = [t for t in admitted if isinstance(t, Ticket)]
    away = [t for t in admitted if isinstance(t, TurnedAway)]
    # One running and as many waiting as fit in 5 s at 1 s each; the rest get a retry-after
    # that covers the queue in front of them.
    assert len(tickets) == 5
    assert len(away) == 5
    assert all(t.retry_after > 5.0 and "too many" in t.reason for t in away)
    assert gate.counts["busy_queue"] == 5
    assert gate.stats()["hellos_longest_queue"] == 4


def test_the_retry_after_follows_the_measured_cost_of_a_hello() -> None:
    gate = HelloGate(HelloLimits(concurrency=1, max_wait=2.0, first_cost=0.001))
    now = 0.0
    for node in nodes(20):  # each Hello takes 0.5 s: the moving average converges to it
        t = ticket(gate.arrive(node, now))
        now += 0.5
        gate.finish(t, now)
    assert gate.stats()["hello_cost_ms"] == pytest.approx(500, rel=0.05)
    first = ticket(gate.arrive(nodes(1)[0], now))
    queued = [gate.arrive(n, now) for n in nodes(4)]
    # Waits of 1.0, 1.5, 2.0 s fit in max_wait; the fourth (2.5 s) does not.
    assert [isinstance(q, Ticket) for q in queued] == [True, True, True, False]
    late = queued[-1]
    assert isinstance(late, TurnedAway)
    assert 2.0 < late.retry_after < 4.0  # about the queue ahead of it at 0.5 s each
    gate.finish(first, now + 0.5)


def test_a_waiting_hello_whose_connection_went_away_leaves_the_queue() -> None:
    gate = HelloGate(HelloLimits(concurrency=1, max_wait=1e9))
    a, b, c = nodes(3)
    held, gone, kept = (ticket(gate.arrive(n, 0.0)) for n in (a, b, c))
    assert gate.finish(gone, 0.2) == []  # never started: nothing starts in its place
    assert gate.waiting == 1
    assert gate.running == 1
    assert isinstance(gate.arrive(b, 0.3), Ticket)  # the device may dial again
    assert gate.finish(held, 1.0) == [kept]


def test_turned_away_answers_are_reported_rate_limited() -> None:
    gate = HelloGate(HelloLimits(concurrency=1, max_wait=1e9))
    node = nodes(1)[0]
    gate.arrive(node, 0.0)
    assert not gate.report_due(0.0)  # nothing turned away yet
    gate.arrive(node, 0.1)
    assert gate.report_due(0.1)  # the first one at once
    gate.arrive(node, 0.2)
    assert not gate.report_due(5.0)
    assert gate.report_due(10.2)
    assert not gate.report_due(30.0)  # nothing new


def test_saturated_before_newcomers_are_turned_away() -> None:
    """Back-pressure starts at half of max_wait, so the mesh stops starting handshakes before
    the gate has to answer Busy to connections it already paid for."""
    gate = HelloGate(HelloLimits(concurrency=1, max_wait=4.0, first_cost=1.0))
    seen = []
    held = ticket(gate.arrive(nodes(1)[0], 0.0))
    seen.append(gate.saturated)  # a newcomer would wait 2 s: half of max_wait, not more
    ticket(gate.arrive(nodes(1)[0], 0.0))
    seen.append(gate.saturated)  # 3 s
    assert isinstance(gate.arrive(nodes(1)[0], 0.0), Ticket)  # but still admitted (<= 4 s)
    gate.finish(held, 1.0)
    seen.append(gate.saturated)  # one running, one waiting: 3 s again
    assert seen == [False, True, True]


def test_while_an_admin_request_is_handled_fewer_hellos_start() -> None:
    gate = HelloGate(HelloLimits(concurrency=3, while_admins=1, max_wait=1e9))
    first = ticket(gate.arrive(nodes(1)[0], 0.0))
    gate.admin_started()
    later = [ticket(gate.arrive(n, 0.0)) for n in nodes(3)]
    assert [t.started for t in later] == [None, None, None]  # one runs already: enough
    assert gate.finish(first, 0.1) == [later[0]]  # still one at a time
    assert gate.admin_finished(0.2) == later[1:]  # the admin is answered: full speed again
    assert gate.running == 3
