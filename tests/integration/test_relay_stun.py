"""STUN on a real `fleet relay` process: endpoints learn their address from their own socket.

Clients: the mesh's own, aioice's (RFC 5389) and pystun3's (classic RFC 3489), all over real
UDP sockets to a relay started through the CLI.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stun as pystun3  # pystun3, a classic RFC 3489 client
from aioice import ice as aioice_ice
from aioice import stun as aiostun

from fleet import stun
from fleet.identity import Identity
from fleet.mesh import Endpoint, MeshConfig
from fleet.relay.client import relay_client_factory
from harness.cli import run_fleet
from harness.relay_process import RelayProcess, private_loopback, start_relay


@pytest.fixture
def default_relay(tmp_path: Path) -> Iterator[RelayProcess]:
    """`fleet relay` with no STUN flag at all (`--stun` only tells start_relay not to add
    --no-stun): STUN is on, at the listen host, UDP 3478."""
    process = start_relay(tmp_path, "--stun", listen=f"{private_loopback()}:0")
    try:
        yield process
    finally:
        process.stop()


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
        Identity.generate(),
        bind=("127.0.0.1", 0),
        relay_urls=[str(relay.url)],
        config=config,
        relay_factory=relay_client_factory,
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


def test_stun_is_on_by_default_at_the_listen_host_port_3478(default_relay: RelayProcess) -> None:
    assert default_relay.stun_address == (default_relay.url.host, 3478)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        sock.sendto(stun.binding_request(b"d" * 12), default_relay.stun_address)
        data, _ = sock.recvfrom(2048)
        assert stun.decode(data) == stun.BindingResponse(b"d" * 12, sock.getsockname())


def test_no_stun_and_a_stun_port_nobody_can_have(tmp_path: Path) -> None:
    relay = start_relay(tmp_path, "--no-stun", metrics=False)
    try:
        [listening] = [e for e in relay.logs() if e.get("event") == "relay_listening"]
        assert listening["stun"] is None
    finally:
        assert relay.stop() == 0
    host = private_loopback()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((host, 3478))
        result = run_fleet("relay", "--listen", f"{host}:0", "--key", str(tmp_path / "relay.key"))
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()  # one clear line, nothing else
    assert f"cannot answer STUN on UDP {host}:3478" in line
    assert "--stun-listen" in line
    assert "--no-stun" in line
    assert "Traceback" not in result.stderr


def test_stun_settings_from_toml_and_flags(tmp_path: Path) -> None:
    key = tmp_path / "relay.key"
    assert run_fleet("keygen", str(key)).returncode == 0
    config = tmp_path / "relay.toml"
    config.write_text(f'listen = "127.0.0.1:0"\nkey = "{key}"\nstun = false\n')
    relay = start_relay(tmp_path, "--config", str(config), "--stun-listen", "127.0.0.1:0")
    try:  # the flag wins over the file
        assert relay.stun_address is not None
    finally:
        relay.stop()
    config.write_text(f'key = "{key}"\nstun = false\nstun-listen = "127.0.0.1:0"\n')
    both = run_fleet("relay", "--listen", "127.0.0.1:0", "--config", str(config))
    assert both.returncode == 78  # EX_CONFIG: a wrong setting (docs/operations.md)
    assert "contradict each other" in both.stderr
    config.write_text(f'key = "{key}"\nstun = "no"\n')
    typo = run_fleet("relay", "--listen", "127.0.0.1:0", "--config", str(config))
    assert typo.returncode == 78
    assert "expected true or false" in typo.stderr


class RecordingSocket:
    """A real UDP socket that keeps what pystun3 received, to look at what it does not tell."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received: list[bytes] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        return self.sock.sendto(data, addr)

    def recvfrom(self, size: int) -> tuple[bytes, Any]:
        data, addr = self.sock.recvfrom(size)
        self.received.append(data)
        return data, addr


def test_pystun3_classic_requests(default_relay: RelayProcess) -> None:
    pystun3._initialize()
    host, port = default_relay.stun_address or ("", 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.3)
        mine = sock.getsockname()
        result = pystun3.stun_test(sock, host, port, *mine)
        assert result["Resp"] is True
        assert (result["ExternalIP"], result["ExternalPort"]) == mine
        # Test II of RFC 3489's NAT-type detection asks to answer from another address and
        # port: we cannot, and say so (420). pystun3 resends at once on an error, so the relay
        # answers one transaction only a few times; then pystun3 times out: "no response".
        recording = RecordingSocket(sock)
        change = "".join([pystun3.ChangeRequest, "0004", "00000006"])
        result = pystun3.stun_test(recording, host, port, *mine, change)
        assert result["Resp"] is False
        assert len(recording.received) == 3
        for data in recording.received:
            assert data[:2] == b"\x01\x11"  # Binding Error Response
            assert data[20:24] == b"\x00\x09\x00\x15"  # ERROR-CODE, 4 + "Unknown Attribute"
            assert data[26:28] == bytes([4, 20])  # class 4, number 20
            assert data[48:56] == b"\x00\x0a\x00\x04\x00\x03\x00\x03"  # UNKNOWN-ATTRIBUTES
    metrics = asyncio.run(default_relay.metrics())
    assert metrics["fleet_relay_stun_requests_total"] == 1
    assert metrics["fleet_relay_stun_errors_total"] == 3
    assert metrics["fleet_relay_stun_rejected_total"] >= 1  # the repeats beyond 3


class _NoIce:
    """aioice's StunProtocol hands requests and data to an ICE connection; we have none."""

    def request_received(self, *args: object) -> None:
        raise AssertionError("the relay sent a request")

    def data_received(self, *args: object) -> None:
        raise AssertionError("the relay sent something that is not STUN")

    def protocol_lost(self, *args: object) -> None:
        pass


async def test_aioice_client(default_relay: RelayProcess) -> None:
    assert default_relay.stun_address is not None
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: aioice_ice.StunProtocol(_NoIce()),  # type: ignore[arg-type]
        local_addr=("127.0.0.1", 0),
    )
    try:
        mine = transport.get_extra_info("sockname")[:2]
        request = aiostun.Message(aiostun.Method.BINDING, aiostun.Class.REQUEST)
        async with asyncio.timeout(10):
            response, _ = await protocol.request(request, default_relay.stun_address)
        assert response.attributes["XOR-MAPPED-ADDRESS"] == mine
        ice_check = aiostun.Message(
            aiostun.Method.BINDING, aiostun.Class.REQUEST, attributes={"PRIORITY": 1}
        )
        with pytest.raises(aiostun.TransactionFailed) as failed:
            async with asyncio.timeout(10):
                await protocol.request(ice_check, default_relay.stun_address)
        assert failed.value.response.error_code == 420
    finally:
        transport.close()
    metrics = await default_relay.metrics()
    assert metrics["fleet_relay_stun_errors_total"] == 1
