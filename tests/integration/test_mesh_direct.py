"""Two endpoints on loopback UDP: direct connections, streams, pinning failures."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from fleet.identity import Identity
from fleet.mesh import ConnectError, Connection, ConnectionLost, Endpoint, MeshConfig, MeshError

ALPN = "fleet/test/1"
LOOPBACK = ("127.0.0.1", 0)


async def _echo_streams(conn: Connection, count: int) -> None:
    """Serve `count` bidirectional streams: reply with the SHA-256 of what was received."""

    async def one() -> None:
        reader, writer = await conn.accept_bi(timeout=10)
        data = await reader.read()
        writer.write(hashlib.sha256(data).digest() + len(data).to_bytes(8, "big"))
        writer.write_eof()

    async with asyncio.TaskGroup() as tg:
        for _ in range(count):
            tg.create_task(one())


async def test_fifty_concurrent_streams_direct() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    async with (
        Endpoint(alice, bind=LOOPBACK, alpns=[ALPN]) as ea,
        Endpoint(bob, bind=LOOPBACK, alpns=[ALPN]) as eb,
    ):

        async def server() -> Connection:
            conn = await eb.accept(ALPN, timeout=10)
            await _echo_streams(conn, 50)
            return conn

        async def client_stream(conn: Connection, i: int) -> None:
            reader, writer = await conn.open_bi()
            payload = bytes([i]) * (1000 * (i + 1)) + i.to_bytes(4, "big")
            writer.write(payload)
            await writer.drain()
            writer.write_eof()
            reply = await asyncio.wait_for(reader.read(), 10)
            assert reply == hashlib.sha256(payload).digest() + len(payload).to_bytes(8, "big")

        async with asyncio.TaskGroup() as tg:
            server_task = tg.create_task(server())
            conn = await ea.connect(bob.node_id, ALPN, addrs=[eb.bound_address], timeout=10)
            assert conn.remote_id == bob.node_id
            assert conn.alpn == ALPN
            assert conn.path == "direct"
            async with asyncio.TaskGroup() as streams:
                for i in range(50):
                    streams.create_task(client_stream(conn, i))
        server_conn = server_task.result()
        assert server_conn.remote_id == alice.node_id
        assert server_conn.path == "direct"
        assert ea.relay_packets_sent == 0
        await conn.close()
        await server_conn.wait_closed(timeout=5)


async def test_unidirectional_stream_and_close() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    async with (
        Endpoint(alice, bind=LOOPBACK, alpns=[ALPN]) as ea,
        Endpoint(bob, bind=LOOPBACK, alpns=[ALPN]) as eb,
    ):
        conn = await ea.connect(bob.node_id, ALPN, addrs=[eb.bound_address], timeout=10)
        writer = await conn.open_uni()
        writer.write(b"status: applied")
        writer.write_eof()
        server_conn = await eb.accept(timeout=10)
        reader = await server_conn.accept_uni(timeout=10)
        assert await asyncio.wait_for(reader.read(), 10) == b"status: applied"
        await server_conn.close(reason="done")
        await conn.wait_closed(timeout=5)
        assert conn.closed is not None
        assert conn.closed.reason == "done"


async def test_wrong_expected_node_id_fails_clearly() -> None:
    alice, bob, carol = Identity.generate(), Identity.generate(), Identity.generate()
    async with (
        Endpoint(alice, bind=LOOPBACK, alpns=[ALPN]) as ea,
        Endpoint(bob, bind=LOOPBACK, alpns=[ALPN]) as eb,
    ):
        # Bob answers at this address, but we asked for Carol. Bob ignores QUIC for Carol and
        # answers our Ping with a Pong signed as Bob: the error names who is really there.
        # (A TLS-level mismatch is covered in tests/unit/mesh/test_tls_hooks.py.)
        with pytest.raises(
            ConnectError, match=f"answered as node {bob.node_id}, not {carol.node_id}"
        ):
            await ea.connect(carol.node_id, ALPN, addrs=[eb.bound_address], timeout=2)


async def test_connect_without_any_path_fails_at_once() -> None:
    async with Endpoint(Identity.generate(), bind=LOOPBACK, alpns=[ALPN]) as ea:
        with pytest.raises(ConnectError, match="no address and no relay"):
            await ea.connect(Identity.generate().node_id, ALPN, timeout=1)


async def test_an_endpoint_without_a_relay_client_refuses_relays() -> None:
    # The mesh does not import a relay client: without an injected factory there is no relay.
    with pytest.raises(ValueError, match="no relay_factory"):
        Endpoint(Identity.generate(), relay_urls=["fleet-relay+insecure://x@127.0.0.1:1"])
    async with Endpoint(Identity.generate(), bind=LOOPBACK, alpns=[ALPN]) as ea:
        with pytest.raises(ConnectError, match="has no relay client"):
            await ea.connect(
                Identity.generate().node_id,
                ALPN,
                relay_url="fleet-relay+insecure://x@127.0.0.1:1",
                timeout=1,
            )


async def test_unknown_alpn_is_refused() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    async with (
        Endpoint(alice, bind=LOOPBACK, alpns=[ALPN]) as ea,
        Endpoint(bob, bind=LOOPBACK, alpns=[ALPN], config=MeshConfig()) as eb,
    ):
        with pytest.raises(ConnectError, match="handshake"):
            await ea.connect(bob.node_id, "other/1", addrs=[eb.bound_address], timeout=5)


async def test_closing_an_endpoint_wakes_everything_waiting_on_it() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    async with Endpoint(alice, bind=LOOPBACK, alpns=[ALPN]) as ea:
        eb = Endpoint(bob, bind=LOOPBACK, alpns=[ALPN])
        async with eb:
            conn = await ea.connect(bob.node_id, ALPN, addrs=[eb.bound_address], timeout=10)
            server_conn = await eb.accept(ALPN, timeout=10)
            waiting_accept = asyncio.create_task(eb.accept(ALPN, timeout=10))
            waiting_stream = asyncio.create_task(server_conn.accept_bi(timeout=10))
            await asyncio.sleep(0)
        with pytest.raises(MeshError, match="closed"):
            await waiting_accept
        with pytest.raises(ConnectionLost):
            await waiting_stream
        with pytest.raises(MeshError, match="not running"):
            await eb.accept(ALPN, timeout=1)
        # The peer learns of it too (CONNECTION_CLOSE was sent).
        await conn.wait_closed(timeout=5)
        assert conn.closed is not None


async def test_keepalives_hold_an_idle_connection_open_past_the_idle_timeout() -> None:
    kept = MeshConfig(keepalive_interval=0.3, idle_timeout=1.0, tick=0.05)
    silent = MeshConfig(keepalive_interval=3600, idle_timeout=1.0, tick=0.05)
    for config, survives in ((kept, True), (silent, False)):
        alice, bob = Identity.generate(), Identity.generate()
        async with (
            Endpoint(alice, bind=LOOPBACK, alpns=[ALPN], config=config) as ea,
            Endpoint(bob, bind=LOOPBACK, alpns=[ALPN], config=config) as eb,
        ):
            conn = await ea.connect(bob.node_id, ALPN, addrs=[eb.bound_address], timeout=10)
            if survives:
                await asyncio.sleep(2.5)  # 2.5 idle timeouts with no application data
                assert conn.closed is None
                writer = await conn.open_uni()
                writer.write(b"ok")
                writer.write_eof()
                server = await eb.accept(ALPN, timeout=5)
                reader = await server.accept_uni(timeout=5)
                assert await asyncio.wait_for(reader.read(), 5) == b"ok"
            else:
                await conn.wait_closed(timeout=5)  # idle timeout, nobody pinged
                assert conn.closed is not None


async def test_two_processes_with_one_key_both_talk_to_the_same_server() -> None:
    # An admin's `fleetctl status --watch` and `fleetctl push` at once: two endpoints (two
    # UDP ports) with the same node id. Each connection must get its own replies, whichever
    # address the server's path to that node id names.
    admin, server_id = Identity.generate(), Identity.generate()
    async with (
        Endpoint(server_id, bind=LOOPBACK, alpns=[ALPN]) as server,
        Endpoint(admin, bind=LOOPBACK) as first,
        Endpoint(admin, bind=LOOPBACK) as second,
    ):

        async def serve(count: int) -> None:
            async with asyncio.TaskGroup() as tg:
                for _ in range(count):
                    conn = await server.accept(ALPN, timeout=10)
                    tg.create_task(_echo_streams(conn, 2))

        async def exchange(conn: Connection, payload: bytes) -> None:
            reader, writer = await conn.open_bi()
            writer.write(payload)
            writer.write_eof()
            reply = await asyncio.wait_for(reader.read(), 10)
            assert reply[:32] == hashlib.sha256(payload).digest()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(serve(2))
            one = await first.connect(server_id.node_id, ALPN, addrs=[server.bound_address])
            await exchange(one, b"watch")
            two = await second.connect(server_id.node_id, ALPN, addrs=[server.bound_address])
            await exchange(two, b"push")
            await exchange(one, b"still watching")  # the first one was not cut off
            await exchange(two, b"done")


async def test_connections_made_through_a_retry_are_idle_too() -> None:
    """After a QUIC Retry, aioquic's congestion controller keeps a few bytes "in flight" for
    good; that must not read as data waiting for an ACK (which would heartbeat forever)."""
    server_config = MeshConfig(retry_threshold=0)  # every connection answers a Retry first
    async with Endpoint(
        Identity.generate(), bind=LOOPBACK, alpns=[ALPN], config=server_config
    ) as eb:
        clients = [Endpoint(Identity.generate(), bind=LOOPBACK) for _ in range(3)]
        for client in clients:
            await client.__aenter__()
        try:
            for client in clients:
                conn = await client.connect(eb.node_id, ALPN, addrs=[eb.bound_address], timeout=10)
                await conn.wait_path("direct", timeout=5)
            assert eb.admission_stats()["retries_sent"] >= 3
            await asyncio.sleep(1.5)  # the handshakes' probes settle
            before = [ep.disco_sent for ep in (eb, *clients)]
            await asyncio.sleep(3.0)
            assert [ep.disco_sent for ep in (eb, *clients)] == before
        finally:
            for client in clients:
                await client.__aexit__(None, None, None)
