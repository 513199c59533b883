"""Admission on real loopback sockets: connections through a QUIC Retry (direct and relayed),
and half-open server connections from a flood capped and dropped after the handshake
timeout."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from fleet.identity import Identity
from fleet.mesh import Endpoint, MeshConfig, disco
from tests.mesh_fakes import FakeRelayHub

ALPN = "fleet/test/1"
LOOPBACK = ("127.0.0.1", 0)
RELAY = "fleet-relay://fake"


async def echo_once(server: Endpoint) -> None:
    conn = await server.accept(ALPN, timeout=10)
    reader, writer = await conn.accept_bi(timeout=10)
    writer.write(await reader.read())
    writer.write_eof()


async def round_trip(client: Endpoint, server: Endpoint, **connect: object) -> str | None:
    async with asyncio.TaskGroup() as tg:
        tg.create_task(echo_once(server))
        conn = await client.connect(server.node_id, ALPN, timeout=10, **connect)  # type: ignore[arg-type]
        reader, writer = await conn.open_bi()
        writer.write(b"hello through a retry")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b"hello through a retry"
    return conn.path


async def test_connect_direct_when_every_connection_must_answer_a_retry() -> None:
    always = MeshConfig(retry_threshold=0)
    async with (
        Endpoint(Identity.generate(), bind=LOOPBACK, alpns=[ALPN]) as client,
        Endpoint(Identity.generate(), bind=LOOPBACK, alpns=[ALPN], config=always) as server,
    ):
        path = await round_trip(client, server, addrs=[server.bound_address])
        assert path == "direct"
        stats = server.admission_stats()
        assert stats["retries_sent"] >= 1, stats
        assert stats["half_open"] == 0, stats


async def test_connect_over_the_relay_through_a_retry() -> None:
    hub, always = FakeRelayHub(), MeshConfig(retry_threshold=0)

    def make(config: MeshConfig | None = None) -> Endpoint:
        return Endpoint(
            Identity.generate(),
            bind=LOOPBACK,
            alpns=[ALPN],
            relay_urls=[RELAY],
            config=config,
            relay_factory=hub.factory,
        )

    client, server = make(), make(always)
    async with client, server:
        client.socket.blackhole.add(server.bound_address)
        server.socket.blackhole.add(client.bound_address)
        assert await round_trip(client, server, relay_url=RELAY) == "relay"
        assert server.admission_stats()["retries_sent"] >= 1


def flood_initials(target: Endpoint, count: int) -> None:
    """One signed Ping from a fresh key, then `count` Initials with new connection ids."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 0))
        addr = target.bound_address
        ping = disco.Ping(os.urandom(12))
        sock.sendto(disco.encode(Identity.generate(), target.node_id, ping, time.time()), addr)
        time.sleep(0.05)
        config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE)
        for _ in range(count):
            quic = QuicConnection(configuration=config)
            quic.connect(addr, 0.0)
            for data, _ in quic.datagrams_to_send(0.0):
                sock.sendto(data, addr)
    finally:
        sock.close()


async def test_flood_of_initials_is_capped_and_forgotten_after_the_handshake_timeout() -> None:
    config = MeshConfig(handshake_timeout=1.0, retry_threshold=None, retry_threshold_per_node=None)
    async with Endpoint(Identity.generate(), bind=LOOPBACK, alpns=[ALPN], config=config) as ep:
        await asyncio.to_thread(flood_initials, ep, 200)
        await asyncio.sleep(0.3)
        stats = ep.admission_stats()
        assert stats["half_open"] == config.max_half_open_per_node, stats
        assert stats["refused_node"] >= 150, stats
        await asyncio.sleep(config.handshake_timeout + 0.5)
        stats = ep.admission_stats()
        assert stats["half_open"] == 0, stats
        assert stats["handshakes_timed_out"] >= 8, stats
        # A real peer still gets in.
        async with Endpoint(Identity.generate(), bind=LOOPBACK, alpns=[ALPN]) as client:
            assert await round_trip(client, ep, addrs=[ep.bound_address]) == "direct"
