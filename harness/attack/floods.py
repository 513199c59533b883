"""Floods at the relay and the coordinator, timing a real admin request during each.

A flood is an async function that sends until told to stop (and never past its own count
cap), at loopback addresses of the lab only. `measure` times a real probe process quietly and
then while the flood runs: `fleetctl status` for the coordinator, `fleet ping` through the
relay for the relay. The figures are the latency ratio (during / quiet, medians), the RSS of
the relay and the coordinator before, during and after (from /proc), and what the flood sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import statistics
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.identity import Identity, NodeId
from fleet.mesh import Endpoint, disco
from fleet.netaddr import parse_host_port
from fleet.protocol import alpn
from fleet.protocol.admin import make_admin_request
from fleet.protocol.messages import ErrorReply, StatusRequest
from fleet.protocol.stream import recv_message, send_message
from fleet.relay import RelayClient, RelayUrl
from fleet.relay.tls import client_context
from fleet.stun import binding_request, new_transaction_id
from harness.cli import fleet_argv
from harness.fleetlab import FleetLab, LabError, Local
from harness.relay_process import private_loopback, scrape_metrics

PROBES = 3  # quiet probe runs (once per lab and probe); the median counts
DURING = 2  # probe runs at least during each flood
WARM_UP = 0.5  # seconds of flood before the first probe
SETTLE = 1.5  # seconds after a flood before memory is read again
MAX_DATAGRAMS = 200_000  # per flood: a cap whatever the duration
PROBE_TIMEOUT = 30.0


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class FloodLab:
    """A relay (TLS, STUN, metrics) and a coordinator, and what floods and probes need."""

    def __init__(self, root: Path, show: Callable[[str], object] = print) -> None:
        self.show = show  # gets the daemons' log tails at the end (pytest shows them on failure)
        # The relay on an address of its own, so its STUN port is the default 3478 there,
        # where `fleet ping` looks for it.
        self.fleet = FleetLab(
            root,
            substituter="http://127.0.0.1:9",
            trusted_key="unused:AAAA",
            relay_host=Local(private_loopback()),
            relay_args=("--metrics-listen", "127.0.0.1:0", "--stun"),
        )
        self.quiet: dict[str, float] = {}  # probe -> median seconds without a flood

    async def __aenter__(self) -> FloodLab:
        await self.fleet.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        self.show(await self.fleet.close())

    @property
    def relay_url(self) -> RelayUrl:
        return RelayUrl.parse(self.fleet.relay_url)

    @property
    def stun_address(self) -> tuple[str, int]:
        return parse_host_port(str(self.fleet.relay.ready["stun"]))

    @property
    def coordinator_address(self) -> tuple[str, int]:
        return self.fleet.coordinator.address

    def pids(self) -> dict[str, int]:
        daemons = {"relay": self.fleet.relay, "coordinator": self.fleet.coordinator}
        return {name: d.proc.pid for name, d in daemons.items() if d.proc is not None and d.alive}

    def memory(self) -> dict[str, float]:
        return {name: round(rss_mb(pid), 1) for name, pid in self.pids().items()}

    async def relay_metrics(self) -> dict[str, float]:
        return await scrape_metrics(parse_host_port(str(self.fleet.relay.ready["metrics"])))

    # probes: real processes, what an admin runs

    async def fleetctl_status(self) -> None:
        result = await self.fleet.fleetctl("status", "--json", timeout=PROBE_TIMEOUT)
        if result.code != 0:
            raise LabError(f"probe failed: {result}")

    async def relay_ping(self) -> None:
        """`fleet ping` from IPv6 loopback to the IPv4 coordinator: no direct path, relay only."""
        argv = fleet_argv(
            "ping", str(self.fleet.coordinator_id), "--relay", self.fleet.relay_url,
            "--count", "2", "--interval", "0.1", "--timeout", "10", "--bind", "[::1]:0",
        )  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.fleet.env,
        )
        out, err = await asyncio.wait_for(proc.communicate(), PROBE_TIMEOUT)
        if proc.returncode != 0 or b"via relay" not in out:
            raise LabError(f"relay ping failed ({proc.returncode}): {out!r} {err!r}")


# ------------------------------------------------------------------ floods

Stop = asyncio.Event


async def _blast(
    address: tuple[str, int], stop: Stop, make: Callable[[int], bytes], rate: int
) -> int:
    """UDP datagrams `make(i)` to `address` at about `rate` per second until `stop`."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sent = 0
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        batch = max(1, rate // 100)
        while not stop.is_set() and sent < MAX_DATAGRAMS:
            for _ in range(batch):
                with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                    sock.sendto(make(sent), address)
                sent += 1
            await asyncio.sleep(0.01)
    return sent


async def flood_stun(lab: FloodLab, stop: Stop) -> int:
    """Binding requests and garbage at the relay's STUN port."""

    def make(i: int) -> bytes:
        return binding_request(new_transaction_id()) if i % 2 else os.urandom(20 + i % 500)

    return await _blast(lab.stun_address, stop, make, rate=5000)


async def flood_mesh_udp(lab: FloodLab, stop: Stop) -> int:
    """Garbage, QUIC-looking long headers and forged disco packets at the coordinator's port."""

    def make(i: int) -> bytes:
        kind = i % 3
        if kind == 0:
            return os.urandom(1 + i % 1200)
        if kind == 1:  # a long-header packet that is no valid QUIC Initial
            return b"\xc0\x00\x00\x00\x01\x08" + os.urandom(1194)
        return disco.MAGIC + os.urandom(200)  # disco magic, a signature that cannot verify

    return await _blast(lab.coordinator_address, stop, make, rate=5000)


SIGNERS = 1_000  # fresh keys that sign genuine disco pings


async def flood_signed_disco(lab: FloodLab, stop: Stop) -> int:
    """Genuinely signed disco pings from a thousand keys nobody knows, at the mesh port: each
    verifies, so the coordinator does real work per packet (a peer table that grew with the
    keys would show in memory)."""
    coordinator = lab.fleet.coordinator_id
    signers = [Identity.generate() for _ in range(SIGNERS)]

    def make(i: int) -> bytes:
        return disco.encode(signers[i % SIGNERS], coordinator, disco.Ping.new(), time.time())

    return await _blast(lab.coordinator_address, stop, make, rate=1500)


async def flood_relay_connections(lab: FloodLab, stop: Stop) -> int:
    """TLS connections that send garbage instead of a login, 50 at a time."""
    url = lab.relay_url
    context: ssl.SSLContext = client_context()
    opened = 0

    async def one() -> None:
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(url.host, url.port, ssl=context), 10
            )
            writer.write(b"\xde\xad\xbe\xef" * 100)
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(reader.read(65536), 5)
            writer.close()

    while not stop.is_set() and opened < MAX_DATAGRAMS:
        async with asyncio.TaskGroup() as group:
            for _ in range(50):
                group.create_task(one())
        opened += 50
    return opened


async def flood_relay_half_open(lab: FloodLab, stop: Stop) -> int:
    """TCP connections to the relay that never say anything, held open (up to 500)."""
    url = lab.relay_url
    held: list[asyncio.StreamWriter] = []
    try:
        while not stop.is_set() and len(held) < 500:
            with contextlib.suppress(OSError, TimeoutError):
                _, writer = await asyncio.wait_for(asyncio.open_connection(url.host, url.port), 5)
                held.append(writer)
            await asyncio.sleep(0.005)
        await stop.wait()
    finally:
        for writer in held:
            writer.close()
    return len(held)


async def flood_relay_unknown_peers(lab: FloodLab, stop: Stop) -> int:
    """A logged-in client sending packets to node ids nobody has."""
    flooder = RelayClient(lab.relay_url, Identity.generate(), lambda _s, _d: None)
    sent = 0
    async with asyncio.TaskGroup() as group:
        task = group.create_task(flooder.run())
        await flooder.wait_connected(10)
        while not stop.is_set() and sent < MAX_DATAGRAMS and flooder.connected:
            for _ in range(20):
                flooder.send(NodeId(os.urandom(32)), os.urandom(200))
                sent += 1
            await asyncio.sleep(0.01)
        task.cancel()
    return sent


async def flood_admin_uncertified(lab: FloodLab, stop: Stop) -> int:
    """Signed admin requests from a key with no certificate, one stream each."""
    stranger = Identity.generate()
    coordinator = lab.fleet.coordinator_id
    sent = 0
    async with Endpoint(stranger, bind=("127.0.0.1", 0)) as endpoint:
        conn = await endpoint.connect(
            coordinator, alpn.ADMIN, addrs=[lab.coordinator_address], timeout=10
        )
        try:
            while not stop.is_set() and sent < 2_000:
                reader, writer = await conn.open_bi()
                request = make_admin_request(stranger, coordinator, StatusRequest(watch=False))
                await send_message(writer, request, timeout=10)
                writer.write_eof()  # else each stream holds one of the 128 the server allows
                reply = await recv_message(reader, timeout=10)
                if not isinstance(reply, ErrorReply):
                    raise LabError(f"an uncertified key was answered {reply!r}")
                sent += 1
        finally:
            await conn.close()
    return sent


@dataclass(frozen=True)
class Flood:
    name: str
    run: Callable[[FloodLab, Stop], Coroutine[Any, Any, int]]
    probe: str  # "status" (fleetctl status) or "relay-ping" (fleet ping through the relay)


FLOODS: tuple[Flood, ...] = (
    Flood("relay-tls-garbage", flood_relay_connections, "relay-ping"),
    Flood("relay-half-open", flood_relay_half_open, "relay-ping"),
    Flood("relay-unknown-peers", flood_relay_unknown_peers, "relay-ping"),
    Flood("relay-stun", flood_stun, "relay-ping"),
    Flood("coordinator-udp", flood_mesh_udp, "status"),
    Flood("coordinator-signed-disco", flood_signed_disco, "status"),
    Flood("coordinator-uncertified-admin", flood_admin_uncertified, "status"),
)


@dataclass
class FloodReport:
    name: str
    sent: int = 0
    quiet_s: float = 0.0
    during_s: float = 0.0
    memory_mb: dict[str, dict[str, float]] = field(default_factory=dict)  # phase -> daemon -> MB
    metrics: dict[str, float] = field(default_factory=dict)  # relay counters that moved

    @property
    def ratio(self) -> float:
        return self.during_s / self.quiet_s if self.quiet_s else float("inf")

    def figures(self) -> dict[str, Any]:
        return {
            "flood": self.name,
            "sent": self.sent,
            "quiet_s": round(self.quiet_s, 3),
            "during_s": round(self.during_s, 3),
            "ratio": round(self.ratio, 2),
            "memory_mb": self.memory_mb,
        }


async def _time(probe: Callable[[], Awaitable[None]]) -> float:
    started = time.monotonic()
    await probe()
    return time.monotonic() - started


async def measure(lab: FloodLab, flood: Flood, *, seconds: float) -> FloodReport:
    """Quiet probes, then the flood for at least `seconds` with probes during it."""
    probe = lab.fleetctl_status if flood.probe == "status" else lab.relay_ping
    report = FloodReport(flood.name)
    if flood.probe not in lab.quiet:  # once per lab: the floods leave nothing running
        await probe()  # warm caches (bytecode, relay login paths) before anything is timed
        lab.quiet[flood.probe] = statistics.median([await _time(probe) for _ in range(PROBES)])
    report.quiet_s = lab.quiet[flood.probe]
    before_metrics = await lab.relay_metrics()
    report.memory_mb["before"] = lab.memory()
    stop = Stop()
    during: list[float] = []
    peaks: dict[str, float] = {}
    async with asyncio.TaskGroup() as group:
        flooding = group.create_task(flood.run(lab, stop))
        try:
            started = time.monotonic()
            await asyncio.sleep(WARM_UP)
            while len(during) < DURING or time.monotonic() - started < seconds:
                during.append(await _time(probe))
                for name, mb in lab.memory().items():
                    peaks[name] = max(peaks.get(name, 0.0), mb)
                if flooding.done():
                    break
        finally:
            stop.set()
    report.sent = flooding.result()
    report.during_s = statistics.median(during)
    report.memory_mb["during"] = peaks
    await asyncio.sleep(SETTLE)
    report.memory_mb["after"] = lab.memory()
    after_metrics = await lab.relay_metrics()
    report.metrics = {
        name: after_metrics[name] - before_metrics.get(name, 0.0)
        for name in after_metrics
        if after_metrics[name] != before_metrics.get(name, 0.0)
    }
    return report
