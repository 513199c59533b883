"""A fleet in the NAT lab: harness/fleetlab.py's processes placed in harness/natlab.py's namespaces.

    world = await NatWorld.create(lab, root, builder, systems)  # binary cache served in the wan
    async with world.fleet(coordinator=home_host, coordinator_public=False,
                           fleetctl=lab.wan) as fleet:
        agent = fleet.add_agent("kiosk", host=lab.host("a", behind=router))

The relay (TLS, STUN on 3478, metrics) and the signed binary cache (HTTP) live in the wan
namespace; the coordinator, agents and fleetctl wherever the test puts them. Used by
tests/integration/test_nat_chain.py (issue 4 scenarios 7 and 8) and bench/nat.py.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.fleetlab import Agent, FleetctlResult, FleetLab, Host
from harness.natlab import RELAY_ARGS, Lab, NatKind, Router, relay_metrics, serve_directory_in
from harness.nixlab import Builder, FakeSystem, fill_cache

PUSH_TIMEOUT = 30.0


@dataclass
class NatWorld:
    lab: Lab
    cache_url: str  # http://10.99.0.1:PORT, reachable from every namespace of the lab
    trusted_key: str
    root: Path
    print_logs: bool = True  # the daemons' log tails when a fleet stops (pytest shows them)

    @classmethod
    async def create(
        cls, lab: Lab, root: Path, builder: Builder, systems: list[FakeSystem]
    ) -> NatWorld:
        """Fill a binary cache with `systems` and serve it in the wan namespace."""
        directory = root / "binary-cache"
        await fill_cache(builder, directory, *systems)
        url, _ = await serve_directory_in(lab.wan, directory)  # lab.close() stops it
        return cls(lab, url, builder.key.public_key, root)

    @contextlib.asynccontextmanager
    async def fleet(
        self, *, coordinator: Host, coordinator_public: bool, fleetctl: Host
    ) -> AsyncIterator[FleetLab]:
        """Relay in the wan, coordinator and fleetctl where asked; stopped even on failure."""
        fleet = FleetLab(
            self.root / "fleet",
            substituter=self.cache_url,
            trusted_key=self.trusted_key,
            relay_host=self.lab.wan,
            relay_args=RELAY_ARGS,
            coordinator_host=coordinator,
            coordinator_public=coordinator_public,
            fleetctl_host=fleetctl,
        )
        try:
            await fleet.start()
            yield fleet
        finally:
            tails = await fleet.close()
            if self.print_logs:
                print(tails)

    async def relayed_bytes(self) -> float:
        return (await relay_metrics(self.lab.wan))["fleet_relay_bytes_forwarded_total"]


async def settled_paths(
    fleet: FleetLab, expected: dict[str, str], timeout: float
) -> dict[str, Any]:
    """`status --watch` until every device's coordinator connection is on its expected path;
    the rows by name (LabError with the last rows if that never happens)."""

    def settled(rows: dict[str, dict[str, Any]]) -> bool:
        return all(rows.get(name, {}).get("path") == path for name, path in expected.items())

    return await fleet.wait_status(settled, timeout=timeout)


@dataclass
class Site:
    """An agent alone behind its own NAT router, and the path its coordinator link should take."""

    agent: Agent
    router: Router
    expected_path: str


THREE_KINDS = {
    "kiosk-easy": NatKind.EASY,
    "kiosk-symmetric": NatKind.SYMMETRIC,
    "kiosk-udp-blocked": NatKind.UDP_BLOCKED,
}


def expected_path(kind: NatKind, *, coordinator_behind_nat: bool) -> str:
    """Direct when a UDP flow can be set up: a public coordinator answers any NAT mapping
    (even a symmetric one: the agent's packets open the way); a coordinator behind an
    endpoint-independent NAT needs a punched hole, which a symmetric NAT's new port per
    destination defeats. UDP blocked: always the relay's TCP."""
    if kind is NatKind.UDP_BLOCKED:
        return "relay"
    if kind is NatKind.SYMMETRIC and coordinator_behind_nat:
        return "relay"
    return "direct"


@contextlib.asynccontextmanager
async def three_kinds(
    world: NatWorld, *, coordinator_behind_nat: bool
) -> AsyncIterator[tuple[FleetLab, list[Site]]]:
    """Scenario 8's fleet: three running, registered agents behind an endpoint-independent,
    a symmetric and a UDP-blocking NAT; the coordinator public on the wan (dialled at its
    address) or at home behind an endpoint-independent NAT (found by node id via the relay);
    fleetctl in the wan."""
    lab = world.lab
    if coordinator_behind_nat:
        coordinator = lab.host("coordinator", behind=lab.router("home", NatKind.EASY))
    else:
        coordinator = lab.host("coordinator")
    async with world.fleet(
        coordinator=coordinator, coordinator_public=not coordinator_behind_nat, fleetctl=lab.wan
    ) as fleet:
        sites = []
        for name, kind in THREE_KINDS.items():
            short = name.removeprefix("kiosk-")
            router = lab.router(short, kind)
            agent = fleet.add_agent(name, host=lab.host(f"at-{short}", behind=router))
            path = expected_path(kind, coordinator_behind_nat=coordinator_behind_nat)
            sites.append(Site(agent, router, path))
        await fleet.launch(*(site.agent for site in sites))
        yield fleet, sites


async def push_wait(fleet: FleetLab, store_path: str) -> tuple[FleetctlResult, float]:
    """`fleetctl push PATH --to tag:lab --wait`; its result and wall-clock seconds (fleetctl's
    own start included: what an admin waits from Enter to the last `applied`)."""
    start = time.monotonic()
    result = await fleet.fleetctl(
        "push", store_path, "--to", "tag:lab", "--wait", "--timeout", str(PUSH_TIMEOUT),
        timeout=PUSH_TIMEOUT + 30,
    )  # fmt: skip
    return result, time.monotonic() - start
