"""`fleet ping` as a real process against an Endpoint serving the ping ALPN."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from fleet.identity import Identity
from fleet.mesh import Endpoint
from fleet.mesh.ping import PING_ALPN, PingClient, serve_ping
from fleet.relay.client import relay_client_factory
from harness.cli import cli_env, fleet_argv
from harness.relay_process import RelayProcess, private_loopback, start_relay


@pytest.fixture
async def pinged(tmp_path: Path) -> AsyncIterator[Endpoint]:
    async with (
        Endpoint(Identity.generate(), bind=("127.0.0.1", 0), alpns=[PING_ALPN]) as ep,
        asyncio.TaskGroup() as tg,
    ):
        server = tg.create_task(serve_ping(ep))
        yield ep
        server.cancel()


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    process = start_relay(tmp_path, "--no-stun")
    try:
        yield process
    finally:
        process.stop()


async def _fleet_ping(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *fleet_argv("ping", "--bind", "127.0.0.1:0", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_fleet_ping_direct(pinged: Endpoint) -> None:
    host, port = pinged.bound_address
    code, out, err = await _fleet_ping(
        f"{pinged.node_id}@{host}:{port}", "--count", "3", "--interval", "0.05"
    )
    assert code == 0, err
    lines = out.splitlines()
    pings = [line for line in lines if line.startswith("ping ")]
    assert len(pings) == 3
    assert all(f"ms via direct {host}:{port}" in line for line in pings), out
    assert "3 sent, 3 received, 0 lost" in out
    assert f"direct path {host}:{port} after" in lines[-1]


async def test_fleet_ping_json_through_a_relay(pinged: Endpoint, relay: RelayProcess) -> None:
    # The pinged node is reachable only through the relay (no address in TARGET); both are
    # on loopback, so CallMeMaybe lets them go direct after the first pings.
    async with (
        Endpoint(
            Identity.generate(),
            bind=("127.0.0.1", 0),
            alpns=[PING_ALPN],
            relay_urls=[str(relay.url)],
            relay_factory=relay_client_factory,
        ) as target,
        asyncio.TaskGroup() as tg,
    ):
        server = tg.create_task(serve_ping(target))
        target_addr = f"127.0.0.1:{target.bound_address[1]}"
        code, out, err = await _fleet_ping(
            str(target.node_id),
            "--relay",
            str(relay.url),
            "--count",
            "4",
            "--interval",
            "0.3",
            "--json",
        )
        server.cancel()
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert records[0]["event"] == "connected"
    assert records[0]["path"] in ("relay", f"direct {target_addr}")
    pings = [r for r in records if r["event"] == "ping"]
    assert [p["seq"] for p in pings] == [1, 2, 3, 4]
    assert all(p["rtt_ms"] > 0 for p in pings)
    summary = records[-1]
    assert summary["event"] == "summary"
    assert summary["received"] == 4
    assert summary["direct_after_s"] is not None
    assert pings[-1]["path"] == "direct"
    assert pings[-1]["addr"] == summary["direct_addr"] == target_addr
    # The relay runs with --no-stun: ping asked it for our public address and says it got none.
    [asked] = summary["stun"]
    assert asked["server"] == "127.0.0.1:3478"
    assert asked["mapped"] is None
    assert asked["waited_s"] >= 2
    [warning] = summary["warnings"]
    assert warning.startswith("no STUN answer from relay 127.0.0.1:3478 in ")
    assert "hole punching is off" in warning
    assert "--no-stun" in warning


async def test_fleet_ping_says_what_stun_answered(pinged: Endpoint, tmp_path: Path) -> None:
    """A relay with STUN on by default (at its own loopback address, UDP 3478): ping prints
    the public address it learnt; through a relay without STUN it warns, in text too."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with_stun = start_relay(tmp_path / "a", "--stun", listen=f"{private_loopback()}:0")
    without = start_relay(tmp_path / "b", "--no-stun", listen=f"{private_loopback()}:0")
    try:
        for relay in (with_stun, without):
            async with (
                Endpoint(
                    Identity.generate(),
                    bind=("127.0.0.1", 0),
                    alpns=[PING_ALPN],
                    relay_urls=[str(relay.url)],
                    relay_factory=relay_client_factory,
                ) as target,
                asyncio.TaskGroup() as tg,
            ):
                server = tg.create_task(serve_ping(target))
                code, out, err = await _fleet_ping(
                    str(target.node_id), "--relay", str(relay.url), "--count", "1"
                )
                server.cancel()
            assert code == 0, err
            stun_at = f"{relay.url.host}:3478"
            if relay is with_stun:
                assert f"(STUN answer from relay {stun_at})" in out, out
                assert "public address 127.0.0.1:" in out
                assert "warning" not in out
            else:
                [warning] = [line for line in out.splitlines() if line.startswith("warning:")]
                assert warning.startswith(f"warning: no STUN answer from relay {stun_at} in ")
                assert "traffic stays on the relay" in warning
    finally:
        with_stun.stop()
        without.stop()


async def test_fleet_ping_fails_cleanly_when_nobody_answers() -> None:
    nobody = Identity.generate().node_id
    code, _, err = await _fleet_ping(f"{nobody}@127.0.0.1:9", "--count", "1", "--timeout", "1")
    assert code == 1
    assert f"cannot reach {nobody.short()}" in err


async def test_ping_client_in_process(pinged: Endpoint) -> None:
    async with Endpoint(Identity.generate(), bind=("127.0.0.1", 0)) as ep:
        conn = await ep.connect(pinged.node_id, PING_ALPN, addrs=[pinged.bound_address])
        client = PingClient(conn)
        rtts = [await client.ping(5) for _ in range(5)]
        assert all(0 < r < 1 for r in rtts)
        await client.close()
