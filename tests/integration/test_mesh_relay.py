"""Relay paths with an in-memory relay: relay-only connections, upgrade, blackhole fallback."""

from __future__ import annotations

import asyncio
import hashlib
import time

from fleet.identity import Identity
from fleet.mesh import Connection, Endpoint, MeshConfig, Path, PathChanged
from tests.mesh_fakes import FakeRelayHub

ALPN = "fleet/test/1"
LOOPBACK = ("127.0.0.1", 0)
RELAY = "fleet-relay://fake"


def _pair(hub: FakeRelayHub, config: MeshConfig | None = None) -> tuple[Endpoint, Endpoint]:
    def make() -> Endpoint:
        return Endpoint(
            Identity.generate(),
            bind=LOOPBACK,
            alpns=[ALPN],
            relay_urls=[RELAY],
            config=config,
            relay_factory=hub.factory,
        )

    return make(), make()


async def _sink(conn: Connection) -> tuple[int, bytes]:
    """Read one stream to its end; return (length, sha256) and send the digest back."""
    reader, writer = await conn.accept_bi(timeout=20)
    digest = hashlib.sha256()
    total = 0
    while chunk := await reader.read(1 << 16):
        digest.update(chunk)
        total += len(chunk)
    writer.write(digest.digest())
    writer.write_eof()
    return total, digest.digest()


async def test_relay_only_connection_carries_streams() -> None:
    hub = FakeRelayHub()
    ea, eb = _pair(hub)
    async with ea, eb:
        # No direct path between them: each side's socket drops the other's address.
        ea.socket.blackhole.add(eb.bound_address)
        eb.socket.blackhole.add(ea.bound_address)
        async with asyncio.TaskGroup() as tg:
            server = tg.create_task(eb.accept(ALPN, timeout=10))
            conn = await ea.connect(eb.node_id, ALPN, relay_url=RELAY, timeout=10)
        server_conn = server.result()
        assert conn.remote_id == eb.node_id
        assert server_conn.remote_id == ea.node_id
        assert conn.path == "relay"
        async with asyncio.TaskGroup() as tg:
            sink = tg.create_task(_sink(server_conn))
            reader, writer = await conn.open_bi()
            payload = bytes(range(256)) * 2000
            writer.write(payload)
            writer.write_eof()
            reply = await asyncio.wait_for(reader.read(), 10)
        assert sink.result() == (len(payload), hashlib.sha256(payload).digest())
        assert reply == hashlib.sha256(payload).digest()
        assert hub.forwarded_by_src[ea.node_id] > 100
        assert ea.socket.stats.sent_to.get(eb.bound_address, 0) == 0
        assert conn.path == "relay"


async def test_relay_connection_upgrades_to_direct() -> None:
    """Connect by node id only: CallMeMaybe over the relay lets both sides find the direct path."""
    hub = FakeRelayHub()
    ea, eb = _pair(hub)
    async with ea, eb:
        seen: list[PathChanged] = []
        ea.add_path_listener(seen.append)
        async with asyncio.TaskGroup() as tg:
            server = tg.create_task(eb.accept(ALPN, timeout=10))
            conn = await ea.connect(eb.node_id, ALPN, relay_url=RELAY, timeout=10)
        await conn.wait_path("direct", timeout=5)
        assert [(c.node, c.new) for c in seen] == [
            (eb.node_id, Path("relay")),
            (eb.node_id, Path("direct", eb.bound_address)),
        ]
        assert ea.path_to(eb.node_id) == Path("direct", eb.bound_address)
        assert conn.path_detail is not None
        assert conn.path_detail.addr == eb.bound_address
        before = hub.forwarded
        writer = await conn.open_uni()
        writer.write(b"d" * 200_000)
        writer.write_eof()
        reader = await server.result().accept_uni(timeout=10)
        assert len(await asyncio.wait_for(reader.read(), 10)) == 200_000
        assert hub.forwarded - before < 10  # the data went direct


async def test_blackholed_direct_path_falls_back_to_relay_and_returns() -> None:
    """Mid-transfer, the direct path dies: the connection moves to the relay without losing a
    byte, and comes back to direct when the path works again (default timing)."""
    hub = FakeRelayHub()
    ea, eb = _pair(hub)
    async with ea, eb:
        async with asyncio.TaskGroup() as tg:
            server = tg.create_task(eb.accept(ALPN, timeout=10))
            conn = await ea.connect(
                eb.node_id, ALPN, addrs=[eb.bound_address], relay_url=RELAY, timeout=10
            )
        await conn.wait_path("direct", timeout=5)
        server_conn = server.result()
        stop = asyncio.Event()
        sent = hashlib.sha256()
        total = 0

        async def paced_writer() -> bytes:
            nonlocal total
            reader, writer = await conn.open_bi()
            i = 0
            while not stop.is_set():
                chunk = i.to_bytes(4, "big") * 8192  # 32 KiB, different every time
                sent.update(chunk)
                total += len(chunk)
                writer.write(chunk)
                await writer.drain()
                i += 1
                await asyncio.sleep(0.02)
            writer.write_eof()
            return await asyncio.wait_for(reader.read(), 15)

        async with asyncio.TaskGroup() as tg:
            sink = tg.create_task(_sink(server_conn))
            writer_task = tg.create_task(paced_writer())
            await asyncio.sleep(0.5)

            # Blackhole the direct path both ways.
            ea.socket.blackhole.add(eb.bound_address)
            eb.socket.blackhole.add(ea.bound_address)
            cut = time.monotonic()
            relay_before = hub.forwarded_by_src.get(ea.node_id, 0)
            await conn.wait_path("relay", timeout=8)
            fallback = time.monotonic() - cut
            # The transfer really goes through the relay (after the blackhole, QUIC's loss
            # recovery may take a moment to resume; on a loaded machine more than a second).
            async with asyncio.timeout(8):
                while hub.forwarded_by_src.get(ea.node_id, 0) - relay_before <= 10:
                    await asyncio.sleep(0.05)

            # Restore the direct path.
            ea.socket.blackhole.clear()
            eb.socket.blackhole.clear()
            restored = time.monotonic()
            await conn.wait_path("direct", timeout=8)
            recovery = time.monotonic() - restored
            direct_before = ea.socket.stats.sent_to.get(eb.bound_address, 0)
            relay_before = hub.forwarded_by_src.get(ea.node_id, 0)
            await asyncio.sleep(0.5)
            stop.set()
        assert ea.socket.stats.sent_to.get(eb.bound_address, 0) - direct_before > 10
        assert hub.forwarded_by_src.get(ea.node_id, 0) - relay_before < 5
        assert fallback < 5.0, f"fallback took {fallback:.1f}s"
        assert recovery < 5.0, f"return to direct took {recovery:.1f}s"
        print(f"fallback to relay {fallback:.2f}s, back to direct {recovery:.2f}s")
        assert sink.result() == (total, sent.digest())
        assert writer_task.result() == sent.digest()
        assert conn.closed is None
        kinds = [c.new.kind if c.new else None for c in conn.path_history]
        assert kinds[-2:] == ["relay", "direct"]


async def test_an_idle_direct_connection_sends_no_disco_and_still_notices_a_cut() -> None:
    """Idle: QUIC keepalives only (no signed disco, which was a Ping each way every second);
    a path that dies while idle is left soon after the next keepalive finds it dead."""
    hub = FakeRelayHub()
    ea, eb = _pair(hub, MeshConfig(keepalive_interval=1.0))
    async with ea, eb:
        await ea.wait_relays(5)
        await eb.wait_relays(5)
        conn = await ea.connect(eb.node_id, ALPN, addrs=[eb.bound_address], timeout=10)
        server = await eb.accept(ALPN, timeout=10)
        await conn.wait_path("direct", timeout=5)
        await server.wait_path("direct", timeout=5)
        await asyncio.sleep(1.5)  # the handshake's probes settle
        disco_before = ea.disco_sent, eb.disco_sent
        quic_before = ea.socket.stats.sent, eb.socket.stats.sent
        await asyncio.sleep(4.0)
        assert (ea.disco_sent, eb.disco_sent) == disco_before
        sent = ea.socket.stats.sent - quic_before[0], eb.socket.stats.sent - quic_before[1]
        assert all(2 <= n <= 20 for n in sent), sent  # keepalive PINGs and their ACKs only
        assert conn.path == "direct"

        ea.socket.blackhole.add(eb.bound_address)
        eb.socket.blackhole.add(ea.bound_address)
        cut = time.monotonic()
        await conn.wait_path("relay", timeout=10)
        await server.wait_path("relay", timeout=10)
        took = time.monotonic() - cut
        # the next keepalive (<= 1 s), unacked_grace (0.5 s), a ping timeout (1.5 s)
        assert took < 5.0, f"fallback from an idle path took {took:.1f}s"
        _, writer = await conn.open_bi()
        writer.write(b"still here")
        writer.write_eof()
        incoming, answer = await server.accept_bi(timeout=5)
        assert await asyncio.wait_for(incoming.read(), 5) == b"still here"
        answer.write_eof()
        assert conn.closed is None
