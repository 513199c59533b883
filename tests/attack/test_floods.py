"""Attack: floods at the relay and the coordinator from outsiders (harness/attack/floods.py).

Expected: the daemons stay up, a real admin request during the flood takes less than
MAX_RATIO times as long as in quiet (generous: CI catches a collapse, not noise), what the
relay dropped shows in its /metrics, and memory after the flood is back near where it was.
The ratio and memory figures go to the output as one JSON line per flood. The long version:
`python -m bench.attack floods --seconds 60`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from harness.attack.floods import FLOODS, Flood, FloodLab, measure

SECONDS = 3.0
MAX_RATIO = 10.0
MEMORY_KEPT_MB = 100.0
# One lab for every flood (a real one takes seconds to start), on one event loop.
pytestmark = pytest.mark.asyncio(
    loop_scope="module"
)  # growth still held a moment after the flood: a leak, not a spike


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FloodLab]:
    async with FloodLab(tmp_path_factory.mktemp("floods")) as flood_lab:
        yield flood_lab


# What each flood must leave in the relay's counters (0: nothing the relay sees).
COUNTED = {
    "relay-tls-garbage": 'fleet_relay_disconnects_total{reason="unknown_frame"}',
    "relay-half-open": "fleet_relay_connections_accepted_total",
    "relay-unknown-peers": 'fleet_relay_packets_dropped_total{reason="no_destination"}',
    "relay-stun": "fleet_relay_stun_rejected_total",
}


@pytest.mark.parametrize("flood", FLOODS, ids=lambda f: f.name)
async def test_an_admin_request_during_a_flood_is_answered_in_time(
    lab: FloodLab, flood: Flood
) -> None:
    report = await measure(lab, flood, seconds=SECONDS)
    print(json.dumps({"attack": "flood", **report.figures()}))
    assert set(lab.pids()) == {"relay", "coordinator"}, "a daemon died under the flood"
    assert report.sent > 0
    assert report.ratio < MAX_RATIO, report.figures()
    if flood.name in COUNTED:
        assert report.metrics.get(COUNTED[flood.name], 0) > 0, report.metrics
    for daemon, before in report.memory_mb["before"].items():
        assert report.memory_mb["after"][daemon] < before + MEMORY_KEPT_MB, report.figures()
