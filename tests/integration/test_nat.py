"""NAT traversal in a real NAT lab (namespaces + iptables; root): issue 4 scenarios 1-6.

Every test builds its own topology (unique namespace prefix) around a real `fleet relay`
(TLS, STUN, metrics) in the wan namespace, runs real mesh programs (harness/natlab_node.py, or
the real `fleet ping`) behind the NATs, and asserts the path the bytes really took: the relay's
forwarded-bytes counter and the NAT routers' iptables counters, not only that data arrived.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.natlab import (
    WAN_IP,
    Lab,
    LabProcess,
    LabRelay,
    Namespace,
    NatKind,
    Router,
    start_node,
    start_relay,
)

pytestmark = pytest.mark.root

MB = 1_000_000


@dataclass
class World:
    lab: Lab
    relay: LabRelay
    tmp: Path


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    lab = Lab.create()
    try:
        relay = await start_relay(lab, tmp_path)
        yield World(lab, relay, tmp_path)
    finally:
        lab.close()  # kills every process in the lab, even when the test failed


async def _serve(world: World, ns: Namespace) -> tuple[LabProcess, str]:
    server = await start_node(ns, world.tmp, "serve", "--relay", world.relay.url)
    ready = await server.wait_for("ready", 30)
    return server, str(ready["node"])


async def _transfer(world: World, ns: Namespace, peer: str, *args: str) -> LabProcess:
    return await start_node(
        ns,
        world.tmp,
        "transfer",
        "--relay",
        world.relay.url,
        "--peer",
        peer,
        *args,
        stdin="--rate" in args,
    )


async def _pair(
    world: World, a: Namespace, b: Namespace, size: int = 2 * MB
) -> tuple[dict[str, object], float]:
    """Transfer `size` bytes a -> b after up to 2 s for a direct path; (done event, relay bytes)."""
    _, node = await _serve(world, b)
    before = await world.relay.forwarded_bytes()
    client = await _transfer(world, a, node, "--size", str(size), "--settle", "2")
    done = await client.wait_for("done", 40)
    assert done["ok"], done
    first_byte = await client.wait_for("first_byte", 1)
    assert float(first_byte["t"]) < 1.0, first_byte  # connections start at once, over the relay
    return done, await world.relay.forwarded_bytes() - before


def _assert_direct(done: dict[str, object], relayed: float, *routers: Router) -> None:
    assert done["path"] == "direct", done
    assert done["direct_at"] is not None, done
    assert float(str(done["direct_at"])) <= 2.0, done
    assert relayed < 0.1 * MB, relayed  # only handshake/disco went through the relay
    for router in routers:  # the bulk crossed each NAT as direct UDP
        counters = router.counters()
        assert counters["udp-direct-out"] + counters["udp-direct-in"] > 1.5 * MB, counters


def _assert_relayed(done: dict[str, object], relayed: float, *routers: Router) -> None:
    assert done["path"] == "relay", done
    assert done["direct_at"] is None, done
    assert relayed > 2 * MB, relayed
    for router in routers:  # no direct UDP came in through the NATs
        assert router.counters()["udp-direct-in"] < 10_000, router.counters()


async def test_1_endpoint_independent_nats_go_direct_within_2s(world: World) -> None:
    r1 = world.lab.router("r1", NatKind.EASY)
    r2 = world.lab.router("r2", NatKind.EASY)
    a, b = world.lab.host("a", behind=r1), world.lab.host("b", behind=r2)
    done, relayed = await _pair(world, a, b)
    _assert_direct(done, relayed, r1, r2)


async def test_1_fleet_ping_shows_the_direct_path(world: World) -> None:
    r1 = world.lab.router("r1", NatKind.EASY)
    r2 = world.lab.router("r2", NatKind.EASY)
    a, b = world.lab.host("a", behind=r1), world.lab.host("b", behind=r2)
    _, node = await _serve(world, b)
    proc = await a.spawn(
        a.python(
            "-m",
            "fleet",
            "ping",
            node,
            "--relay",
            world.relay.url,
            "--count",
            "5",
            "--interval",
            "0.2",
        ),
        stderr_path=world.tmp / "ping.log",
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode()
    assert proc.returncode == 0, text + (world.tmp / "ping.log").read_text()
    assert "5 sent, 5 received, 0 lost" in text
    r2_wan = r2.ip
    lines = text.splitlines()
    [direct] = [line for line in lines if line.startswith("direct path ")]
    assert direct.startswith(f"direct path {r2_wan}:"), text  # b's public (NAT) address
    assert float(direct.rsplit(" after ", 1)[1].removesuffix(" s")) <= 2.0, text
    pings = [line for line in lines if line.startswith("ping ")]
    assert f"via direct {r2_wan}:" in pings[-1], text  # the last ping went direct
    # The relay answers STUN by default, at its host, UDP 3478: a's NAT mapping came back.
    assert lines[-1].startswith(f"public address {r1.ip}:"), text
    assert lines[-1].endswith(f"(STUN answer from relay {WAN_IP}:3478)"), text


async def test_2_one_symmetric_nat_works_through_the_relay(world: World) -> None:
    r1 = world.lab.router("r1", NatKind.SYMMETRIC)
    r2 = world.lab.router("r2", NatKind.EASY)
    a, b = world.lab.host("a", behind=r1), world.lab.host("b", behind=r2)
    done, relayed = await _pair(world, a, b)
    _assert_relayed(done, relayed, r1, r2)


async def test_3_both_symmetric_work_through_the_relay(world: World) -> None:
    r1 = world.lab.router("r1", NatKind.SYMMETRIC)
    r2 = world.lab.router("r2", NatKind.SYMMETRIC)
    a, b = world.lab.host("a", behind=r1), world.lab.host("b", behind=r2)
    done, relayed = await _pair(world, a, b)
    _assert_relayed(done, relayed, r1, r2)


async def test_4_nat_behind_carrier_grade_nat_goes_direct(world: World) -> None:
    cgn = world.lab.router("cgn", NatKind.EASY, lan="100.64")
    home = world.lab.router("home", NatKind.EASY, upstream=cgn)
    other = world.lab.router("other", NatKind.EASY)
    a, b = world.lab.host("a", behind=home), world.lab.host("b", behind=other)
    done, relayed = await _pair(world, a, b)
    _assert_direct(done, relayed, cgn, home, other)


async def test_5_udp_dropped_at_the_nat_works_over_relay_tcp(world: World) -> None:
    r1 = world.lab.router("r1", NatKind.UDP_BLOCKED)
    r2 = world.lab.router("r2", NatKind.EASY)
    a, b = world.lab.host("a", behind=r1), world.lab.host("b", behind=r2)
    done, relayed = await _pair(world, a, b)
    _assert_relayed(done, relayed, r1, r2)
    assert r1.counters()["tcp"] > 2 * MB  # the bytes left a's site as TCP to the relay
    assert r2.counters()["udp-direct-out"] < 10_000  # b's punch attempts, nothing more


async def test_6_direct_path_cut_mid_transfer_falls_back_and_returns(world: World) -> None:
    r1 = world.lab.router("r1", NatKind.EASY)
    r2 = world.lab.router("r2", NatKind.EASY)
    a, b = world.lab.host("a", behind=r1), world.lab.host("b", behind=r2)
    _, node = await _serve(world, b)
    client = await _transfer(world, a, node, "--rate", "400000")
    await client.wait_for("path", 10, path="direct")
    await client.wait_for("progress", 5)

    relay_before_cut = await world.relay.forwarded_bytes()
    r1.block_udp()
    cut = time.monotonic()
    client.events.clear()
    await client.wait_for("path", 8, path="relay")
    fallback = time.monotonic() - cut
    assert fallback < 5.0, fallback
    # The transfer goes on over the relay: wait for the relay to carry a good share of it.
    async with asyncio.timeout(10):
        while await world.relay.forwarded_bytes() - relay_before_cut < 400_000:
            await asyncio.sleep(0.2)

    r1.unblock_udp()
    restored = time.monotonic()
    await client.wait_for("path", 8, path="direct")
    back = time.monotonic() - restored
    print(f"direct path cut: relay after {fallback:.2f} s; direct again {back:.2f} s after restore")
    assert back < 5.0, back
    relay_after = await world.relay.forwarded_bytes()
    udp_after = r1.counters()["udp-direct-out"]
    # The next 200 kB of the transfer (half a second at 400 kB/s) must go direct, counted on
    # the NAT, with the relay carrying next to nothing meanwhile. Waiting on the counter itself
    # (bounded) rather than on two progress events, which can arrive back to back.
    async with asyncio.timeout(5):
        while r1.counters()["udp-direct-out"] - udp_after <= 200_000:
            await asyncio.sleep(0.1)
    assert await world.relay.forwarded_bytes() - relay_after < 50_000
    client.send("stop")
    done = await client.wait_for("done", 20)
    assert done["ok"], done
    assert done["path"] == "direct"
