"""The update chain through the NAT lab (root, real Nix): issue 4 scenarios 7 and 8.

The end-to-end harness (harness/fleetlab.py) with every process placed in a namespace of
harness/natlab.py (harness/natfleet.py): a real `fleet relay` (TLS, STUN, metrics) and the signed
binary cache (HTTP) in the wan namespace; coordinator, agents and fleetctl behind NAT routers.
Each test asserts what an admin sees (`fleetctl push --wait`, `status --json`), what each device
did (its system profile, its switch log), and the path each coordinator connection really
took: `path` in the status, cross-checked with the NAT routers' counters and the relay's
forwarded bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from harness.fleetlab import Agent, FleetLab
from harness.natfleet import NatWorld, push_wait, settled_paths, three_kinds
from harness.natlab import Lab, NatKind, Router
from harness.nixlab import Builder
from tests.conftest import Systems

pytestmark = [pytest.mark.root, pytest.mark.nix]

PATH_TIMEOUT = 10.0  # a hole is punched within ~2 s of connecting; generous on 2 shared cores


@pytest.fixture
async def world(
    tmp_path: Path, nix_builder: Builder, nix_systems: Systems
) -> AsyncIterator[NatWorld]:
    lab = Lab.create()
    try:
        yield await NatWorld.create(lab, tmp_path, nix_builder, [nix_systems.v1, nix_systems.v2])
    finally:
        lab.close()  # kills every process in the lab, even when the test failed


async def push_applied(fleet: FleetLab, store_path: str, *agents: Agent) -> float:
    """Push to the lab's tag and wait: exit 0, every agent applied it and runs it; seconds."""
    push, seconds = await push_wait(fleet, store_path)
    assert push.code == 0, push
    for agent in agents:
        assert f"{agent.name}: applied" in push.out, push
        assert await agent.profile() == store_path
        assert agent.switches()[-1] == f"switch {store_path}"
    rows = await fleet.status()
    for agent in agents:
        row = rows[agent.name]
        assert (row["state"], row["online"]) == ("applied", True), row
        assert row["current"]["store_path"] == store_path, row
    return seconds


async def paths_settle(fleet: FleetLab, expected: dict[str, str]) -> dict[str, dict[str, Any]]:
    return await settled_paths(fleet, expected, PATH_TIMEOUT)


def direct_udp(router: Router) -> tuple[int, int]:
    """(out, in) bytes of UDP the router forwarded between its LAN and a peer not the relay."""
    counters = router.counters()
    return counters["udp-direct-out"], counters["udp-direct-in"]


def both_grew(before: tuple[int, int], after: tuple[int, int]) -> bool:
    return after[0] > before[0] and after[1] > before[1]


async def test_7_coordinator_at_home_behind_nat_delivers_a_push(
    world: NatWorld, nix_systems: Systems
) -> None:
    lab = world.lab
    home = lab.router("home", NatKind.EASY)  # forwards no port: nobody can dial in
    easy, symmetric = lab.router("site1", NatKind.EASY), lab.router("site2", NatKind.SYMMETRIC)
    admin = lab.host("admin", behind=lab.router("office", NatKind.EASY))
    async with world.fleet(
        coordinator=lab.host("coordinator", behind=home), coordinator_public=False, fleetctl=admin
    ) as fleet:
        a = fleet.add_agent("kiosk-easy", host=lab.host("a", behind=easy))
        b = fleet.add_agent("kiosk-symmetric", host=lab.host("b", behind=symmetric))
        await fleet.launch(a, b)  # fleetctl devices add, by node id through the relay

        seconds = await push_applied(fleet, nix_systems.v1.path, a, b)
        print(f"scenario 7: push -> applied in {seconds:.2f} s")
        # Hole punched between two endpoint-independent NATs; none through a symmetric one.
        await paths_settle(fleet, {"kiosk-easy": "direct", "kiosk-symmetric": "relay"})

        relay_before = await world.relayed_bytes()
        easy_before, home_before = direct_udp(easy), direct_udp(home)
        await push_applied(fleet, nix_systems.v2.path, a, b)
        easy_after, home_after = direct_udp(easy), direct_udp(home)
        # kiosk-easy's push crossed both NATs as direct UDP, both ways...
        assert both_grew(easy_before, easy_after), (easy_before, easy_after)
        assert both_grew(home_before, home_after), (home_before, home_after)
        # ...while no direct UDP ever came in to the symmetric site: its push was relayed.
        assert direct_udp(symmetric)[1] == 0, symmetric.counters()
        assert await world.relayed_bytes() - relay_before > 500


@pytest.mark.parametrize("coordinator_behind_nat", [False, True], ids=["public", "at-home"])
async def test_8_update_chain_with_three_nat_kinds(
    world: NatWorld, nix_systems: Systems, coordinator_behind_nat: bool
) -> None:
    async with three_kinds(world, coordinator_behind_nat=coordinator_behind_nat) as (fleet, sites):
        agents = [site.agent for site in sites]
        expected = {site.agent.name: site.expected_path for site in sites}
        relay_before = await world.relayed_bytes()
        before = [direct_udp(site.router) for site in sites]

        seconds = await push_applied(fleet, nix_systems.v1.path, *agents)
        rows = await paths_settle(fleet, expected)
        print(f"scenario 8 ({coordinator_behind_nat=}): push -> applied in {seconds:.2f} s")

        relayed = await world.relayed_bytes() - relay_before
        assert relayed > 500, relayed  # the relayed devices' announcements and reports
        for site, was in zip(sites, before, strict=True):
            now = direct_udp(site.router)
            if site.expected_path == "direct":  # the push went through this NAT as UDP
                assert both_grew(was, now), site.router.counters()
            else:  # never a direct UDP packet back in through this NAT
                assert now[1] == 0, (site.agent.name, site.router.counters())
            assert rows[site.agent.name]["path"] == site.expected_path
