"""STUN on a real `fleet relay` process: endpoints learn their address from their own socket."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet import stun
from fleet.identity import Identity
from fleet.mesh import Endpoint, MeshConfig
from tests.integration.relay_process import RelayProcess, start_relay


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    process = start_relay(tmp_path, "--stun-listen", "127.0.0.1:0")
    try:
        yield process
    finally:
        process.stop()


async def _until(predicate: object, timeout: float) -> None:
    assert callable(predicate)
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_endpoint_learns_its_address_from_the_relay_stun_port(relay: RelayProcess) -> None:
    assert relay.stun_address is not None
    config = MeshConfig(relay_stun_port=relay.stun_address[1])
    async with Endpoint(
        Identity.generate(), bind=("127.0.0.1", 0), relay_urls=[str(relay.url)], config=config
    ) as ep:
        await _until(lambda: ep.reflexive_addresses, 10)
        # Asked from the mesh socket itself, so the answer is that socket's address.
        assert ep.reflexive_addresses == {ep.bound_address}
        assert ep.stun_servers == [relay.stun_address]
    metrics = await relay.metrics()
    assert metrics["fleet_relay_stun_requests_total"] >= 1
    assert metrics["fleet_relay_stun_rejected_total"] == 0


async def test_extra_stun_servers_and_host_names(relay: RelayProcess) -> None:
    assert relay.stun_address is not None
    config = MeshConfig(relay_stun_port=None, stun_servers=(("localhost", relay.stun_address[1]),))
    async with Endpoint(Identity.generate(), bind=("127.0.0.1", 0), config=config) as ep:
        await _until(lambda: ep.reflexive_addresses, 10)
        assert ep.reflexive_addresses == {ep.bound_address}


def test_relay_answers_binding_requests_and_drops_everything_else(relay: RelayProcess) -> None:
    assert relay.stun_address is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        for junk in (b"hello", stun.binding_response(bytes(12), ("1.2.3.4", 5)), bytes(20)):
            sock.sendto(junk, relay.stun_address)
        sock.sendto(stun.binding_request(b"t" * 12), relay.stun_address)
        data, _ = sock.recvfrom(2048)  # only the request is answered
        assert stun.decode(data) == stun.BindingResponse(b"t" * 12, sock.getsockname())
    metrics = asyncio.run(relay.metrics())
    assert metrics["fleet_relay_stun_rejected_total"] == 3
    assert metrics["fleet_relay_stun_requests_total"] == 1
