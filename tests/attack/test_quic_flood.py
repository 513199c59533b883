"""Attack: half-open QUIC connections from one key and one address (issue 10, item 2).

A real `fleet coordinator` (with its relay) and real `fleetctl status` runs. The attacker
(harness/attack/quic_flooder.py, its own process) signs one disco Ping with a fresh key, then
floods the coordinator's UDP socket with full-size QUIC Initials, each with a new connection
id, and never finishes a handshake; a second flood also answers every Retry with its token.
Expected: the coordinator answers with its handshake flight (server state) for at most the
per-source cap at a time, an admin's `fleetctl status` during the flood succeeds in a small
multiple of its normal latency, and the coordinator's memory after the flood is near where
it was before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from harness.attack.quic_flood import (
    CAP,
    COUNT,
    CPU_SHARE,
    LATENCY_RATIO,
    RSS_GROWTH_MB,
    under_flood,
)
from harness.fleetlab import FleetLab


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[FleetLab]:
    lab = FleetLab(tmp_path, substituter="http://127.0.0.1:1", trusted_key="unused")
    try:
        await lab.start()
        yield lab
    finally:
        print(await lab.close())


async def test_initial_flood_keeps_half_open_bounded_and_admins_served(fleet: FleetLab) -> None:
    figures = await under_flood(fleet)
    assert figures["sent"] == COUNT
    # Server state for this source: at most the cap at a time (unprotected: every Initial).
    assert figures["most_alive"] <= CAP, figures
    assert figures["status_during_s"], figures
    assert figures["ratio"] <= LATENCY_RATIO, figures
    assert figures["coordinator_cpu_s"] <= CPU_SHARE * figures["seconds"], figures
    rss_before, _, rss_after = figures["rss_mb"]
    assert rss_after - rss_before <= RSS_GROWTH_MB, figures


async def test_flood_that_answers_retry_is_still_capped(fleet: FleetLab) -> None:
    figures = await under_flood(fleet, "--follow-retry")
    assert figures["retries"] > 0, figures  # under pressure the coordinator asked for tokens
    assert figures["most_alive"] <= CAP, figures
    assert figures["ratio"] <= LATENCY_RATIO, figures
    assert figures["coordinator_cpu_s"] <= CPU_SHARE * figures["seconds"], figures
    rss_before, _, rss_after = figures["rss_mb"]
    assert rss_after - rss_before <= RSS_GROWTH_MB, figures
