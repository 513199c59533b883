"""Heavy UDP loss on the link (docs/attacks.md): a lab fleet whose admin and agents each sit in
a namespace that drops a share of UDP at random, and what connecting and `status` then take.
Root: network namespaces and iptables."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

from harness.fleetlab import Agent, FleetLab, read_log_events
from harness.natlab import RELAY_ARGS, WAN_IP, Lab, Namespace

FLEETCTL_TIMEOUT = 20.0  # what FleetLab gives fleetctl (--timeout 20)
LOSSES = (0.0, 0.2, 0.4)
STATUS_RUNS = 4
UNUSED_NIX_KEY = "test-cache-1:M9OTGewryMB7PWd9OzaP+n/8A2qzNDuYjVKwozsThQI="  # nothing is pushed


def set_loss(ns: Namespace, probability: float) -> None:
    """Drop that share of UDP packets in and out of the namespace, and refuse TCP to the
    relay: the lossy direct link is the only way (the relay would hide the loss)."""
    for chain in ("INPUT", "OUTPUT"):
        ns.run("iptables", "-w", "-F", chain)
    ns.run("iptables", "-w", "-A", "OUTPUT", "-p", "tcp", "-d", WAN_IP, "-j", "REJECT")
    for chain in ("INPUT", "OUTPUT"):
        if probability > 0:
            ns.run(
                "iptables", "-w", "-A", chain, "-p", "udp", "-m", "statistic",
                "--mode", "random", "--probability", str(probability), "-j", "DROP",
            )  # fmt: skip


def _stamp(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


async def connect_seconds(agent: Agent, timeout: float) -> float:
    """From the agent's start-up log line to its first `agent_connected`, this run."""
    path = agent.daemon.log_path
    assert path is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = read_log_events(path)
        started = [e for e in events if e.get("event") == "agent_started"]
        connected = [e for e in events if e.get("event") == "agent_connected"]
        if started and connected:
            return _stamp(connected[0]) - _stamp(started[0])
        await asyncio.sleep(0.1)
    tail = agent.daemon.tail()
    raise AssertionError(f"{agent.name} not connected within {timeout:.0f} s:\n{tail}")


async def measure(
    fleet: FleetLab, hosts: list[Namespace], loss: float, runs: int = STATUS_RUNS
) -> dict[str, object]:
    for ns in hosts:
        set_loss(ns, loss)
    agents = list(fleet.agents.values())
    for agent in agents:
        await agent.daemon.stop()
    await fleet.start_agents(*agents)
    connects = await asyncio.gather(*(connect_seconds(a, FLEETCTL_TIMEOUT) for a in agents))
    statuses = []
    for _ in range(runs):
        start = time.monotonic()
        rows = await fleet.status()  # raises unless exit 0
        statuses.append(time.monotonic() - start)
        assert all(rows[a.name]["online"] for a in agents), rows
    figures: dict[str, object] = {
        "loss": loss,
        "agent_connect_s": [round(s, 2) for s in connects],
        "status_s": [round(s, 2) for s in statuses],
        "status_median_s": round(statistics.median(statuses), 2),
    }
    print(json.dumps(figures))
    return figures


@contextlib.asynccontextmanager
async def lossy_fleet(tmp_path: Path) -> AsyncIterator[tuple[FleetLab, list[Namespace]]]:
    """Relay on the wan, coordinator on the wan, fleetctl and three registered agents each
    in its own namespace (no loss yet)."""
    lab = Lab.create()
    try:
        admin = lab.host("admin")
        fleet = FleetLab(
            tmp_path,
            substituter="http://127.0.0.1:1",
            trusted_key=UNUSED_NIX_KEY,
            relay_host=lab.wan,
            relay_args=RELAY_ARGS,
            coordinator_host=lab.host("coordinator"),
            fleetctl_host=admin,
        )
        hosts = [admin]
        try:
            await fleet.start()
            for name in ("a1", "a2", "a3"):
                host = lab.host(name)
                fleet.add_agent(name, host=host)
                hosts.append(host)
            await fleet.register(*fleet.agents.values())
            yield fleet, hosts
        finally:
            print(await fleet.close())
    finally:
        lab.close()
