"""bench.fanout's own arithmetic: percentiles, "never" counts and who counts as back."""

from __future__ import annotations

import json
import math

from bench.fanout import Fleet, latency_summary, log_time, percentile


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_latency_summary_counts_late_and_missing_agents_as_never() -> None:
    # 10 agents: 7 verified in time, 1 too late (31 s > 30 s), 2 never reported at all.
    latencies = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 31.0]
    summary = latency_summary(latencies, total=10, within=30.0)
    assert summary["never"] == 3
    assert summary["max"] == 0.7
    assert summary["p50"] == 0.4
    assert summary["p99"] == 0.7


def test_latency_summary_with_nobody_verified() -> None:
    summary = latency_summary([], total=5, within=30.0)
    assert summary["never"] == 5
    assert math.isnan(summary["p50"])


def test_log_time_reads_structlog_iso_timestamps() -> None:
    assert log_time({"timestamp": "2026-12-01T22:39:56.578256Z"}) == 1796164796.578256
    assert log_time({"timestamp": "yesterday"}) is None
    assert log_time({}) is None


def _line(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_an_agent_is_back_only_when_welcomed_after_the_moment() -> None:
    fleet = Fleet(3)
    for i, t in enumerate((10.0, 11.0, 12.0)):
        fleet.on_line(_line(ev="welcomed", i=i, n=1, t=t))
    assert fleet.welcomed_since(10.0) == 3
    killed = 20.0
    assert fleet.welcomed_since(killed) == 0
    fleet.on_line(_line(ev="welcomed", i=1, n=2, t=25.0))
    assert fleet.welcomed_since(killed) == 1
    assert fleet.welcomes == [1, 2, 1]


def test_only_the_first_verification_of_a_sequence_counts() -> None:
    fleet = Fleet(2)
    fleet.on_line(_line(ev="verified", i=0, seq=4, t=1.5))
    fleet.on_line(_line(ev="verified", i=0, seq=4, t=9.0))
    fleet.on_line(b"not json")
    fleet.on_line(_line(ev="ready", agents=2))
    assert fleet.verified == {4: {0: 1.5}}
    assert fleet.ready == 1
