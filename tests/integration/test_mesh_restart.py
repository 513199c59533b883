"""A real `fleet coordinator` killed with SIGKILL and restarted on the same port: its peers'
connections end within a second or two (a stateless reset from the new process, whose
tokens derive from the node key), not at the 30 s QUIC idle timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleet.identity import Identity, NodeId, write_new_key
from fleet.mesh import ConnectionLost, Endpoint, MeshConfig
from fleet.mesh.ping import PING_ALPN, PingClient
from harness.cli import cli_env
from harness.fleetlab import Daemon

IDLE_TIMEOUT = 30.0  # MeshConfig's default: what the peers waited for before
KEEPALIVE = 2.0  # the idle client's QUIC keepalive: it learns at its next one


@pytest.fixture
async def coordinator(tmp_path: Path) -> AsyncIterator[Daemon]:
    admin = Identity.generate()
    key = tmp_path / "coordinator.key"
    write_new_key(key)
    args = ["coordinator", "--key", str(key), "--state-dir", str(tmp_path / "state")]
    args += ["--trust-root", str(admin.node_id)]
    daemon = Daemon("coordinator", args, cli_env(), "coordinator_listening", "address", tmp_path)
    daemon.start()
    try:
        await daemon.wait_ready()
        yield daemon
    finally:
        await daemon.stop()


async def _ping_until_lost(client: PingClient) -> None:
    """An active peer (like an agent reporting): a ping every 0.2 s until the connection ends."""
    while True:
        try:
            await client.ping(timeout=0.5)
        except TimeoutError:
            pass  # the coordinator is down: keep trying, as the agent's session would
        except ConnectionLost:
            return
        await asyncio.sleep(0.2)


async def test_peers_learn_of_a_coordinator_restart_at_once(coordinator: Daemon) -> None:
    coord_id = NodeId.parse(coordinator.ready["node"])
    addrs = [coordinator.address]
    idle_config = MeshConfig(keepalive_interval=KEEPALIVE, idle_timeout=IDLE_TIMEOUT)
    async with (
        Endpoint(Identity.generate(), bind=("127.0.0.1", 0)) as active_ep,
        Endpoint(Identity.generate(), bind=("127.0.0.1", 0), config=idle_config) as idle_ep,
    ):
        active = await active_ep.connect(coord_id, PING_ALPN, addrs=addrs, timeout=10)
        idle = await idle_ep.connect(coord_id, PING_ALPN, addrs=addrs, timeout=10)
        pinger = PingClient(active)
        assert await pinger.ping(timeout=5) < 5
        async with asyncio.TaskGroup() as tasks:
            pinging = tasks.create_task(_ping_until_lost(pinger))
            coordinator.kill9()
            await asyncio.sleep(0.5)  # down for a moment: packets go nowhere
            assert active.closed is None
            assert idle.closed is None
            coordinator.start()  # same key, same port, no memory of the connections
            await coordinator.wait_ready()
            restarted = time.monotonic()
            await active.wait_closed(timeout=3.0)
            active_took = time.monotonic() - restarted
            await idle.wait_closed(timeout=KEEPALIVE + 3.0)
            idle_took = time.monotonic() - restarted
            await asyncio.wait_for(pinging, 5)
        for conn in (active, idle):
            assert conn.closed is not None
            assert "stateless reset" in conn.closed.reason
        print(
            f"connection ended {active_took:.2f}s (active), {idle_took:.2f}s (idle) after restart"
        )
        assert active_took < 3.0
        assert idle_took < KEEPALIVE + 3.0  # far below the idle timeout
        assert active_ep.resets_received == 1
        assert idle_ep.resets_received == 1

        # The restarted coordinator serves new connections at once.
        again = await active_ep.connect(coord_id, PING_ALPN, addrs=addrs, timeout=10)
        assert await PingClient(again).ping(timeout=5) < 5
