"""A real `fleet relay` process (TLS, loopback) forwarding between RelayClients, under abuse."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from fleet.identity import Identity, NodeId
from fleet.relay import RelayClient, RelayUrl
from fleet.relay.protocol import (
    HEADER,
    MAX_FRAME_PAYLOAD,
    ClientState,
    FrameType,
    RelayClientSession,
    ServerClosed,
)
from fleet.relay.tls import client_context
from harness.cli import run_fleet
from harness.relay_process import RelayProcess, start_relay

WAIT = 20.0  # generous bound for any single wait: the machine is shared


class Inbox:
    """Collects what a RelayClient receives; lets a test await a count."""

    def __init__(self) -> None:
        self.packets: list[tuple[NodeId, bytes]] = []
        self.gone: list[NodeId] = []
        self._changed = asyncio.Event()

    def on_packet(self, src: NodeId, data: bytes) -> None:
        self.packets.append((src, data))
        self._changed.set()

    def on_peer_gone(self, node: NodeId) -> None:
        self.gone.append(node)
        self._changed.set()

    def from_(self, src: NodeId) -> list[bytes]:
        return [data for s, data in self.packets if s == src]

    async def wait_for(self, condition: Callable[[], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def running(*clients: RelayClient) -> AsyncIterator[None]:
    """Run clients for the duration of the block, logged in before it starts."""
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(c.run()) for c in clients]
        try:
            for c in clients:
                await c.wait_connected(WAIT)
            yield
        finally:
            for t in tasks:
                t.cancel()


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    process = start_relay(tmp_path)
    yield process
    assert process.stop() == 0
    assert any(e.get("event") == "relay_stopped" for e in process.logs())


def seq(i: int, size: int = 100) -> bytes:
    return struct.pack(">I", i) + bytes(size - 4)


async def send_windowed(client: RelayClient, dst: NodeId, count: int, peer_inbox: Inbox) -> None:
    """Send `count` numbered packets, at most 200 ahead of what the receiver has seen.

    Like QUIC's flow control: the relay drops rather than queues without bound, so a test that
    wants zero loss must not outrun the receiver by more than the relay's buffers.
    """
    i = 0
    while i < count:
        if i - len(peer_inbox.packets) < 200 and client.send(dst, seq(i, 1200)):
            i += 1
        else:
            await asyncio.sleep(0.001)


async def test_packets_flow_both_ways_in_order(relay: RelayProcess) -> None:
    a, b = Identity.generate(), Identity.generate()
    inbox_a, inbox_b = Inbox(), Inbox()
    client_a = RelayClient(relay.url, a, inbox_a.on_packet)
    client_b = RelayClient(relay.url, b, inbox_b.on_packet)
    count = 3000
    async with running(client_a, client_b), asyncio.TaskGroup() as tg:
        tg.create_task(send_windowed(client_a, b.node_id, count, inbox_b))
        tg.create_task(send_windowed(client_b, a.node_id, count, inbox_a))
        await inbox_b.wait_for(lambda: len(inbox_b.packets) >= count)
        await inbox_a.wait_for(lambda: len(inbox_a.packets) >= count)
    assert inbox_b.from_(a.node_id) == [seq(i, 1200) for i in range(count)]
    assert inbox_a.from_(b.node_id) == [seq(i, 1200) for i in range(count)]
    metrics = await relay.metrics()
    assert metrics["fleet_relay_packets_forwarded_total"] == 2 * count
    assert metrics["fleet_relay_bytes_forwarded_total"] == 2 * count * 1200
    assert not any(name.startswith("fleet_relay_packets_dropped_total") for name in metrics)


async def test_absent_peer_is_reported_gone(relay: RelayProcess) -> None:
    me, absent = Identity.generate(), Identity.generate().node_id
    inbox = Inbox()
    client = RelayClient(relay.url, me, inbox.on_packet, inbox.on_peer_gone)
    async with running(client):
        for _ in range(100):
            assert client.send(absent, b"hello?")
        await inbox.wait_for(lambda: absent in inbox.gone)
        await asyncio.sleep(0.2)  # let any (wrongly) unlimited answers arrive
    assert set(inbox.gone) == {absent}
    assert len(inbox.gone) <= 25  # answers are rate-limited, not one per packet
    metrics = await relay.metrics()
    assert metrics['fleet_relay_packets_dropped_total{reason="no_destination"}'] == 100


async def test_second_login_replaces_the_first(relay: RelayProcess) -> None:
    me = Identity.generate()
    client = RelayClient(relay.url, me, lambda s, d: None, backoff_initial=60)
    async with running(client):
        _, writer, _ = await raw_login(relay.url, me)
        async with asyncio.timeout(WAIT):
            while client.connected:
                await asyncio.sleep(0.01)
        assert client.last_error is not None
        assert "replaced" in client.last_error
        writer.close()
    events = [e for e in relay.logs() if e.get("event") == "relay_client_disconnected"]
    assert any(e["reason"] == "replaced" and e["node"] == me.node_id.short() for e in events)


async def test_client_pinned_to_another_relay_id_refuses(relay: RelayProcess) -> None:
    impostor_id = Identity.generate().node_id
    url = RelayUrl(impostor_id, relay.url.host, relay.url.port)
    client = RelayClient(url, Identity.generate(), lambda s, d: None, backoff_initial=60)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(client.run())
        async with asyncio.timeout(WAIT):
            while client.last_error is None:
                await asyncio.sleep(0.01)
        task.cancel()
    assert not client.connected
    assert client.last_error == (
        f"relay certificate key {relay.url.node_id} does not match expected relay id {impostor_id}"
    )
    assert not any(e.get("event") == "relay_client_authenticated" for e in relay.logs())


def test_plaintext_refused_on_non_loopback_address(tmp_path: Path) -> None:
    key = tmp_path / "relay.key"
    assert run_fleet("keygen", str(key)).returncode == 0
    result = run_fleet("relay", "--listen", "0.0.0.0:0", "--key", str(key), "--insecure-no-tls")
    assert result.returncode != 0
    assert "--insecure-no-tls only listens on loopback addresses" in result.stderr


async def test_plaintext_on_loopback_with_explicit_opt_in(tmp_path: Path) -> None:
    relay = start_relay(tmp_path, "--insecure-no-tls", metrics=False)
    try:
        assert relay.url.insecure
        assert str(relay.url).startswith("fleet-relay+insecure://")
        a, b = Identity.generate(), Identity.generate()
        inbox = Inbox()
        client_a = RelayClient(relay.url, a, lambda s, d: None)
        client_b = RelayClient(relay.url, b, inbox.on_packet)
        async with running(client_a, client_b):
            assert client_a.send(b.node_id, b"plain")
            await inbox.wait_for(lambda: inbox.packets == [(a.node_id, b"plain")])
    finally:
        assert relay.stop() == 0


# -- abuse --------------------------------------------------------------------------------


async def raw_connect(
    url: RelayUrl, *, tls: bool = True
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection(url.host, url.port, ssl=client_context() if tls else None),
        timeout=WAIT,
    )


async def raw_login(
    url: RelayUrl, identity: Identity
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, RelayClientSession]:
    reader, writer = await raw_connect(url)
    session = RelayClientSession(identity, url.node_id, 0.0)
    while session.state is not ClientState.CONNECTED:
        data = await asyncio.wait_for(reader.read(65536), timeout=WAIT)
        assert data, "relay closed during login"
        session.receive_data(data, 0.0)
        writer.write(session.data_to_send())
    return reader, writer, session


async def read_to_end(reader: asyncio.StreamReader) -> bytes:
    """Everything until the relay closes the connection (which must happen within WAIT)."""
    chunks = []
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(WAIT):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def close_reason(session: RelayClientSession, data: bytes) -> str:
    session.receive_data(data, 0.0)
    closes = []
    while (event := session.next_event()) is not None:
        if isinstance(event, ServerClosed):
            closes.append(event.reason)
    assert closes, f"no Close frame in {data!r}"
    return closes[-1]


async def abuse_garbage_over_tls(url: RelayUrl) -> None:
    reader, writer = await raw_connect(url)
    writer.write(b"\xde\xad\xbe\xef" * 100)
    data = await read_to_end(reader)
    writer.close()
    session = RelayClientSession(Identity.generate(), url.node_id, 0.0)
    assert close_reason(session, data).startswith("unknown_frame")


async def abuse_garbage_without_tls(url: RelayUrl) -> None:
    reader, writer = await raw_connect(url, tls=False)
    writer.write(b"GET / HTTP/1.1\r\n\r\n")
    await read_to_end(reader)
    writer.close()


async def abuse_oversized_frame(url: RelayUrl) -> None:
    reader, writer, session = await raw_login(url, Identity.generate())
    writer.write(HEADER.pack(FrameType.SEND_PACKET, MAX_FRAME_PAYLOAD + 1) + bytes(1000))
    data = await read_to_end(reader)
    writer.close()
    assert close_reason(session, data).startswith("oversized_frame")


async def abuse_half_open(url: RelayUrl) -> None:
    """Connect and say nothing (TCP only, and TLS without login): cut by the deadline."""
    plain_reader, plain_writer = await raw_connect(url, tls=False)
    tls_reader, tls_writer = await raw_connect(url)
    await read_to_end(plain_reader)
    data = await read_to_end(tls_reader)
    session = RelayClientSession(Identity.generate(), url.node_id, 0.0)
    assert close_reason(session, data).startswith("handshake_timeout")
    plain_writer.close()
    tls_writer.close()


async def abuse_flood(url: RelayUrl, victim: NodeId) -> None:
    flooder = RelayClient(url, Identity.generate(), lambda s, d: None, backoff_initial=60)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(flooder.run())
        await flooder.wait_connected(WAIT)
        junk = bytes(1200)
        async with asyncio.timeout(WAIT):
            while flooder.connected:
                for _ in range(50):
                    flooder.send(victim, junk)
                await asyncio.sleep(0)
        task.cancel()
    assert flooder.last_error is not None
    assert "rate_limit_abuse" in flooder.last_error


async def abuse_max_clients(url: RelayUrl, extra: int) -> None:
    """Open more connections than the relay admits; the surplus is closed at once."""
    conns = [await raw_connect(url, tls=False) for _ in range(extra)]
    for reader, writer in conns:
        await read_to_end(reader)
        writer.close()


async def test_abusers_are_cut_off_and_good_clients_do_not_notice(tmp_path: Path) -> None:
    relay = start_relay(
        tmp_path,
        "--handshake-timeout",
        "1.5",
        "--rate-limit",
        "1000000",
        "--rate-burst",
        "250000",
        "--max-clients",
        "6",
    )
    try:
        a, b = Identity.generate(), Identity.generate()
        inbox_a, inbox_b = Inbox(), Inbox()
        client_a = RelayClient(relay.url, a, inbox_a.on_packet)
        client_b = RelayClient(relay.url, b, inbox_b.on_packet)
        sent = {a.node_id: 0, b.node_id: 0}
        abuse_done = asyncio.Event()

        async def good_traffic(client: RelayClient, me: NodeId, peer: NodeId) -> None:
            # ~300 KB/s, well under the 1 MB/s limit, until the abuse is over.
            while not abuse_done.is_set():
                for _ in range(10):
                    if client.send(peer, seq(sent[me], 300)):
                        sent[me] += 1
                await asyncio.sleep(0.01)

        async def abuse() -> None:
            try:
                await abuse_garbage_over_tls(relay.url)
                await abuse_garbage_without_tls(relay.url)
                await abuse_oversized_frame(relay.url)
                await abuse_half_open(relay.url)
                await abuse_flood(relay.url, b.node_id)
                await abuse_max_clients(relay.url, extra=8)  # 2 good + 4 admitted + 4 refused
            finally:
                abuse_done.set()

        async with running(client_a, client_b), asyncio.TaskGroup() as tg:
            tg.create_task(good_traffic(client_a, a.node_id, b.node_id))
            tg.create_task(good_traffic(client_b, b.node_id, a.node_id))
            tg.create_task(abuse())
            await abuse_done.wait()
            # The relay is still there and still forwarding for the good clients.
            await inbox_b.wait_for(lambda: len(inbox_b.from_(a.node_id)) == sent[a.node_id])
            await inbox_a.wait_for(lambda: len(inbox_a.from_(b.node_id)) == sent[b.node_id])
            metrics = await relay.metrics()
        assert relay.alive()
        assert sent[a.node_id] > 100
        assert sent[b.node_id] > 100
        assert inbox_b.from_(a.node_id) == [seq(i, 300) for i in range(sent[a.node_id])]
        assert inbox_a.from_(b.node_id) == [seq(i, 300) for i in range(sent[b.node_id])]
        assert client_a.last_error is None
        assert client_b.last_error is None

        reasons = {
            "unknown_frame",
            "tls_error",
            "oversized_frame",
            "handshake_timeout",
            "rate_limit_abuse",
            "server_full",
        }
        for reason in reasons:
            assert metrics.get(f'fleet_relay_disconnects_total{{reason="{reason}"}}', 0) >= 1, (
                reason,
                metrics,
            )
        assert metrics['fleet_relay_packets_dropped_total{reason="rate_limit"}'] > 0
        assert metrics["fleet_relay_clients"] == 2
        logged = {
            e["reason"]
            for e in relay.logs()
            if e.get("event") in ("relay_client_disconnected", "relay_connection_refused")
        }
        assert reasons <= logged
    finally:
        assert relay.stop() == 0


def test_settings_come_from_toml_and_flags_win(tmp_path: Path) -> None:
    key = tmp_path / "relay.key"
    assert run_fleet("keygen", str(key)).returncode == 0
    config = tmp_path / "relay.toml"
    config.write_text(f'listen = "0.0.0.0:0"\nkey = "{key}"\ninsecure-no-tls = true\n')
    refused = run_fleet("relay", "--config", str(config))
    assert refused.returncode != 0
    assert "refusing '0.0.0.0'" in refused.stderr
    config.write_text(f'listen = "127.0.0.1:0"\nkey = "{key}"\nmax-clinets = 5\n')
    typo = run_fleet("relay", "--config", str(config))
    assert typo.returncode != 0
    assert "unknown setting 'max-clinets'" in typo.stderr


async def test_flags_override_toml(tmp_path: Path) -> None:
    key = tmp_path / "relay.key"
    assert run_fleet("keygen", str(key)).returncode == 0
    config = tmp_path / "relay.toml"
    config.write_text(f'listen = "0.0.0.0:0"\nkey = "{key}"\nmax-clients = 1\n')
    relay = start_relay(tmp_path, "--config", str(config), "--max-clients", "7", metrics=False)
    try:
        [listening] = [e for e in relay.logs() if e.get("event") == "relay_listening"]
        assert listening["address"].startswith("127.0.0.1:")  # start_relay's --listen won
        assert listening["max_clients"] == 7
    finally:
        assert relay.stop() == 0
