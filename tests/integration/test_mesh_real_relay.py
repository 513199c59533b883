"""Mesh endpoints through a real `fleet relay` process (started from the CLI)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.identity import Identity
from fleet.mesh import ConnectError, Endpoint
from fleet.relay.client import relay_client_factory
from harness.relay_process import RelayProcess, start_relay

ALPN = "fleet/test/1"
LOOPBACK = ("127.0.0.1", 0)


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    process = start_relay(tmp_path)
    try:
        yield process
    finally:
        process.stop()


def _forwarded(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("fleet_relay_packets_forwarded"))


def _endpoint(relay_url: str) -> Endpoint:
    return Endpoint(
        Identity.generate(),
        bind=LOOPBACK,
        alpns=[ALPN],
        relay_urls=[relay_url],
        relay_factory=relay_client_factory,
    )


async def test_connection_through_the_real_relay(relay: RelayProcess) -> None:
    url = str(relay.url)
    async with (
        _endpoint(url) as ea,
        _endpoint(url) as eb,
    ):
        ea.socket.blackhole.add(eb.bound_address)  # no direct path: only the relay works
        eb.socket.blackhole.add(ea.bound_address)
        forwarded_before = _forwarded(await relay.metrics())
        async with asyncio.TaskGroup() as tg:
            server = tg.create_task(eb.accept(ALPN, timeout=15))
            conn = await ea.connect(eb.node_id, ALPN, relay_url=relay.url, timeout=15)
        server_conn = server.result()
        assert conn.remote_id == eb.node_id
        assert server_conn.remote_id == ea.node_id
        assert conn.path == "relay"

        async def echo() -> None:
            reader, writer = await server_conn.accept_bi(timeout=10)
            writer.write(hashlib.sha256(await reader.read()).digest())
            writer.write_eof()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(echo())
            reader, writer = await conn.open_bi()
            payload = b"closure-bytes" * 100_000
            writer.write(payload)
            await writer.drain()
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 15) == hashlib.sha256(payload).digest()
        assert _forwarded(await relay.metrics()) - forwarded_before > 1000
        assert ea.socket.stats.sent_to.get(eb.bound_address, 0) == 0


async def test_direct_path_dies_and_the_real_relay_takes_over(relay: RelayProcess) -> None:
    url = str(relay.url)
    async with (
        _endpoint(url) as ea,
        _endpoint(url) as eb,
    ):
        async with asyncio.TaskGroup() as tg:
            server = tg.create_task(eb.accept(ALPN, timeout=15))
            conn = await ea.connect(eb.node_id, ALPN, addrs=[eb.bound_address], timeout=15)
        await conn.wait_path("direct", timeout=5)
        server_conn = server.result()
        ea.socket.blackhole.add(eb.bound_address)
        eb.socket.blackhole.add(ea.bound_address)
        forwarded_before = _forwarded(await relay.metrics())
        # An idle connection learns that its path died when it next sends (data, or its
        # next keepalive): nothing is lost meanwhile, and no disco runs while idle.
        writer = await conn.open_uni()
        writer.write(b"r" * 300_000)
        writer.write_eof()
        await conn.wait_path("relay", timeout=8)
        reader = await server_conn.accept_uni(timeout=10)
        assert await asyncio.wait_for(reader.read(), 15) == b"r" * 300_000
        assert _forwarded(await relay.metrics()) - forwarded_before > 200


async def test_unreachable_relay_fails_connect_clearly() -> None:
    dead = "fleet-relay://" + str(Identity.generate().node_id) + "@127.0.0.1:9"
    async with Endpoint(
        Identity.generate(), bind=LOOPBACK, alpns=[ALPN], relay_factory=relay_client_factory
    ) as ea:
        with pytest.raises(ConnectError, match="not reachable"):
            await ea.connect(Identity.generate().node_id, ALPN, relay_url=dead, timeout=1.5)
