"""Attack: heavy UDP loss on the link (issue 10, item 6). Root: network namespaces.

A real relay (wan namespace), a real coordinator on the wan, three real agents and fleetctl
each in its own namespace whose UDP is dropped at random in both directions (iptables
`-m statistic --mode random --probability P`; tc netem is missing from this kernel). For P
in 0, 0.2 and 0.4 the agents are (re)started and must each log `agent_connected` within
fleetctl's timeout (FleetLab runs fleetctl with `--timeout 20`), and `fleetctl status` from
the lossy admin namespace must succeed and show all three online. Connect times are printed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from harness.attack.packet_loss import FLEETCTL_TIMEOUT, LOSSES, lossy_fleet, measure
from harness.fleetlab import FleetLab
from harness.natlab import Namespace

pytestmark = [pytest.mark.root]


@pytest.fixture
async def lossy(tmp_path: Path) -> AsyncIterator[tuple[FleetLab, list[Namespace]]]:
    async with lossy_fleet(tmp_path) as parts:
        yield parts


async def test_agents_and_fleetctl_connect_within_the_timeout_at_20_and_40_percent_loss(
    lossy: tuple[FleetLab, list[Namespace]],
) -> None:
    fleet, hosts = lossy
    for loss in LOSSES:
        figures = await measure(fleet, hosts, loss)
        connects = figures["agent_connect_s"]
        assert isinstance(connects, list)
        assert max(connects) < FLEETCTL_TIMEOUT, figures
