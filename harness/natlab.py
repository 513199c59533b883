"""A NAT lab from network namespaces, veth pairs and iptables (root; notes/nat-lab-here.md).

    lab = Lab.create()                       # unique namespace prefix; a "wan" namespace
    home = lab.router("home", NatKind.EASY)  # NAT on the wan, LAN 192.168.N.0/24
    cgn = lab.router("cgn", NatKind.EASY, lan="100.64")  # carrier-grade NAT ...
    inner = lab.router("inner", NatKind.EASY, upstream=cgn)  # ... with a home NAT behind it
    a = lab.host("a", behind=home)           # a host on home's LAN, default route via home
    proc = await lab.wan.spawn([...])        # `ip netns exec NS ...`
    lab.close()                              # kill every process in the lab, delete namespaces

The root namespace is never connected to the lab: every address lives only inside namespaces
the lab created, so nothing can leak onto the machine's real network. The "internet" is
10.99.0.0/24 on a bridge in the wan namespace (10.99.0.1, where the relay listens).

Each router: MASQUERADE out of wan0 (`--random-fully` for a symmetric NAT), FORWARD policy
DROP with lan->wan allowed and wan->lan only for established flows, INPUT from the wan only
for established flows (without that, a peer's early punch packet creates a conntrack entry on
the router itself and MASQUERADE then remaps our port). A counting chain (`fleetlab`) sees
every forwarded packet first, so tests can read how many bytes went direct vs to the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.identity import write_new_key
from harness.cli import cli_env

WAN_PREFIX = "10.99.0"
WAN_IP = f"{WAN_PREFIX}.1"  # the wan namespace itself: relay (and coordinator) live here
_COUNTER = itertools.count()


class LabError(RuntimeError):
    """A lab command failed (the message has the command and its stderr)."""


class NatKind(enum.Enum):
    EASY = "easy"  # endpoint-independent mapping (plain MASQUERADE keeps the port)
    SYMMETRIC = "symmetric"  # a new random port per destination (MASQUERADE --random-fully)
    UDP_BLOCKED = "udp-blocked"  # forwards no UDP at all (TCP only)


def _run(argv: Sequence[str], timeout: float = 10.0) -> str:
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(argv)}: timed out") from exc
    if result.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr.strip()}")
    return result.stdout


@dataclass
class Namespace:
    lab: Lab
    name: str  # the real namespace name (with the lab's prefix)
    ip: str  # its address on its upstream network
    _ports: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, timeout: float = 10.0) -> str:
        return _run(self.argv(*argv), timeout)

    async def spawn(
        self, argv: Sequence[str], *, stdin: bool = False, stderr_path: Path | None = None
    ) -> asyncio.subprocess.Process:
        """Start a process inside this namespace (stdout piped, stderr to a file or dropped)."""
        stderr_file = stderr_path.open("wb") if stderr_path is not None else None
        try:
            return await asyncio.create_subprocess_exec(
                *self.argv(*argv),
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr_file if stderr_file is not None else asyncio.subprocess.DEVNULL,
                env=cli_env(),
            )
        finally:
            if stderr_file is not None:
                stderr_file.close()

    def python(self, *argv: str) -> list[str]:
        return [sys.executable, *argv]


@dataclass
class Router(Namespace):
    kind: NatKind = NatKind.EASY
    lan_prefix: str = ""  # e.g. "192.168.3": LAN is .0/24, the router is .1
    _hosts: itertools.count[int] = field(default_factory=lambda: itertools.count(2))

    def counters(self) -> dict[str, int]:
        """Bytes seen by the counting rules: udp-direct-out/in (not to/from the relay host),
        udp-relay (STUN), tcp (relay connections)."""
        out = self.run("iptables", "-L", "fleetlab", "-v", "-x", "-n")
        counts: dict[str, int] = {}
        for line in out.splitlines():
            if "/* " in line:
                fields = line.split()
                name = line.split("/* ", 1)[1].split(" */", 1)[0]
                counts[name] = int(fields[1])
        return counts

    def block_udp(self) -> None:
        """Cut every forwarded UDP packet (the counting chain still sees them)."""
        self.run("iptables", "-I", "FORWARD", "2", "-p", "udp", "-j", "DROP")

    def unblock_udp(self) -> None:
        self.run("iptables", "-D", "FORWARD", "-p", "udp", "-j", "DROP")


@dataclass
class Lab:
    prefix: str
    wan: Namespace = field(init=False)
    namespaces: list[Namespace] = field(default_factory=list)
    _wan_hosts: itertools.count[int] = field(default_factory=lambda: itertools.count(10))
    _lans: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def create(cls, prefix: str | None = None) -> Lab:
        """A lab with its wan namespace (bridge at 10.99.0.1/24). Close it with `close()`."""
        if prefix is None:
            prefix = f"fl{os.getpid() % 100000}x{next(_COUNTER)}-"
        lab = cls(prefix)
        try:
            lab.wan = lab._namespace("wan", WAN_IP)
            lab._ip(lab.wan, "link", "add", "br0", "type", "bridge")
            lab._ip(lab.wan, "addr", "add", f"{WAN_IP}/24", "dev", "br0")
            lab._ip(lab.wan, "link", "set", "br0", "up")
        except BaseException:
            lab.close()
            raise
        return lab

    # -- building -------------------------------------------------------------------------

    def router(
        self,
        name: str,
        kind: NatKind,
        *,
        upstream: Router | None = None,
        lan: str = "192.168",
    ) -> Router:
        """A NAT router on the wan (or on `upstream`'s LAN, for NAT behind NAT)."""
        n = next(self._lans)
        lan_prefix = f"{lan}.{n}"
        ip = self._next_ip(upstream)
        ns = self._namespace(name, ip, kind=kind, lan_prefix=lan_prefix)
        assert isinstance(ns, Router)
        self._attach(ns, "wan0", ip, upstream)
        self._ip(ns, "link", "add", "lan0", "type", "bridge")
        self._ip(ns, "addr", "add", f"{lan_prefix}.1/24", "dev", "lan0")
        self._ip(ns, "link", "set", "lan0", "up")
        ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        masquerade = ["-j", "MASQUERADE"] + (
            ["--random-fully"] if kind is NatKind.SYMMETRIC else []
        )
        rules = [
            ["-t", "nat", "-A", "POSTROUTING", "-o", "wan0", *masquerade],
            ["-N", "fleetlab"],
            ["-P", "FORWARD", "DROP"],
            ["-A", "FORWARD", "-j", "fleetlab"],
            ["-A", "FORWARD", "-i", "lan0", "-o", "wan0", "-j", "ACCEPT"],
            [
                "-A",
                "FORWARD",
                "-i",
                "wan0",
                "-o",
                "lan0",
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
            [
                "-A",
                "INPUT",
                "-i",
                "wan0",
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
            ["-A", "INPUT", "-i", "wan0", "-j", "DROP"],
        ]
        counting = [
            ("udp-direct-out", ["-o", "wan0", "-p", "udp", "!", "-d", WAN_IP]),
            ("udp-direct-in", ["-i", "wan0", "-p", "udp", "!", "-s", WAN_IP]),
            ("udp-relay", ["-p", "udp", "-d", WAN_IP]),
            ("tcp", ["-p", "tcp"]),
        ]
        for comment, match in counting:
            rules.append(["-A", "fleetlab", *match, "-m", "comment", "--comment", comment])
        if kind is NatKind.UDP_BLOCKED:
            rules.append(["-I", "FORWARD", "2", "-p", "udp", "-j", "DROP"])
        for rule in rules:
            ns.run("iptables", "-w", *rule)
        return ns

    def host(self, name: str, *, behind: Router | None = None) -> Namespace:
        """A host on `behind`'s LAN (or directly on the wan when None)."""
        ip = self._next_ip(behind)
        ns = self._namespace(name, ip)
        self._attach(ns, "eth0", ip, behind)
        return ns

    def close(self) -> None:
        """Kill every process in the lab's namespaces, then delete them (never raises)."""
        for ns in reversed(self.namespaces):
            with contextlib.suppress(LabError):
                for pid in _run(["ip", "netns", "pids", ns.name]).split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
        for ns in reversed(self.namespaces):
            with contextlib.suppress(LabError):
                _run(["ip", "netns", "del", ns.name])
        self.namespaces.clear()

    # -- internals ----------------------------------------------------------------------------

    def _namespace(self, name: str, ip: str, **router: object) -> Namespace:
        full = f"{self.prefix}{name}"
        _run(["ip", "netns", "add", full])
        ns: Namespace = Router(self, full, ip, **router) if router else Namespace(self, full, ip)  # type: ignore[arg-type]
        self.namespaces.append(ns)
        self._ip(ns, "link", "set", "lo", "up")
        return ns

    def _next_ip(self, parent: Router | None) -> str:
        if parent is None:
            return f"{WAN_PREFIX}.{next(self._wan_hosts)}"
        return f"{parent.lan_prefix}.{next(parent._hosts)}"

    def _attach(self, child: Namespace, dev: str, ip: str, parent: Router | None) -> None:
        """A veth from `child` (as `dev`, with `ip`) to the parent's bridge; default route."""
        parent_ns = parent if parent is not None else self.wan
        bridge = "lan0" if parent is not None else "br0"
        gateway = f"{parent.lan_prefix}.1" if parent is not None else WAN_IP
        port = f"p{next(parent_ns._ports)}"
        self._ip(
            child, "link", "add", dev, "type", "veth", "peer", "name", port, "netns", parent_ns.name
        )
        self._ip(parent_ns, "link", "set", port, "master", bridge, "up")
        self._ip(child, "addr", "add", f"{ip}/24", "dev", dev)
        self._ip(child, "link", "set", dev, "up")
        if parent is not None:
            self._ip(child, "route", "add", "default", "via", gateway)

    def _ip(self, ns: Namespace, *argv: str) -> None:
        _run(["ip", "-n", ns.name, *argv])


# -- processes in the lab ----------------------------------------------------------------------

RELAY_PORT = 7842
STUN_PORT = 3478
METRICS = "127.0.0.1:9100"  # inside the wan namespace only


@dataclass
class LabProcess:
    """A process in a namespace that prints one JSON event per line on stdout."""

    name: str
    proc: asyncio.subprocess.Process
    events: list[dict[str, Any]] = field(default_factory=list)

    async def wait_for(self, event: str, timeout: float, **match: Any) -> dict[str, Any]:
        """The first event named `event` (with these field values), read so far or next."""

        def matches(e: dict[str, Any]) -> bool:
            return e.get("event") == event and all(e.get(k) == v for k, v in match.items())

        for seen in self.events:
            if matches(seen):
                return seen
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await self.proc.stdout.readline()
                    if not line:
                        raise LabError(
                            f"{self.name} exited ({self.proc.returncode}) before {event}"
                        )
                    with contextlib.suppress(ValueError):
                        record = json.loads(line)
                        self.events.append(record)
                        if matches(record):
                            return dict(record)
        except TimeoutError:
            raise LabError(
                f"{self.name}: no {event} {match} within {timeout}s; saw {self.events}"
            ) from None

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@dataclass
class LabRelay:
    url: str
    process: asyncio.subprocess.Process
    log_path: Path
    wan: Namespace

    async def metrics(self) -> dict[str, float]:
        return await relay_metrics(self.wan)

    async def forwarded_bytes(self) -> float:
        return (await self.metrics())["fleet_relay_bytes_forwarded_total"]


RELAY_ARGS = ("--stun", "--metrics-listen", METRICS)
"""What a relay in the wan namespace needs besides its key: STUN where every endpoint asks,
the relay URL's host and UDP 3478 (STUN_PORT), which is where `fleet relay` answers by default
(`--stun` only says so to the harnesses that add --no-stun otherwise), and metrics."""


async def relay_metrics(wan: Namespace) -> dict[str, float]:
    """The relay's metrics, scraped from inside the wan namespace (the root namespace has no
    route to it)."""
    out = await asyncio.to_thread(
        wan.run, *wan.python("-m", "harness.natlab_node", "metrics", METRICS)
    )
    values: dict[str, float] = json.loads(out)
    return values


async def serve_directory_in(
    ns: Namespace, directory: Path, timeout: float = 20.0
) -> tuple[str, asyncio.subprocess.Process]:
    """A static HTTP server (python -m http.server) for `directory` on the namespace's address,
    e.g. a binary cache the agents behind the NATs fetch from; (base URL, process). The lab's
    close() kills it with everything else in the namespace."""
    proc = await ns.spawn(
        ns.python("-m", "http.server", "0", "--bind", ns.ip, "--directory", str(directory))
    )
    assert proc.stdout is not None
    try:
        # "Serving HTTP on IP port PORT (http://IP:PORT/) ...", printed once it is bound
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    except TimeoutError:
        raise LabError(f"http.server in {ns.name} did not start within {timeout}s") from None
    words = line.decode().split()
    if "port" not in words:
        raise LabError(f"http.server in {ns.name}: unexpected output {line!r}")
    port = int(words[words.index("port") + 1])
    return f"http://{ns.ip}:{port}", proc


async def start_relay(lab: Lab, tmp: Path, timeout: float = 20.0) -> LabRelay:
    """A real `fleet relay` (TLS, STUN, metrics) in the wan namespace at 10.99.0.1."""
    key = tmp / f"{lab.prefix}relay.key"
    write_new_key(key)
    log_path = tmp / f"{lab.prefix}relay.log"
    proc = await lab.wan.spawn(
        lab.wan.python(
            "-m",
            "fleet",
            "relay",
            "--key",
            str(key),
            "--listen",
            f"{WAN_IP}:{RELAY_PORT}",
            *RELAY_ARGS,
        ),
        stderr_path=log_path,
    )
    deadline = time.monotonic() + timeout
    while True:
        for line in log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "relay_listening":
                    return LabRelay(event["url"], proc, log_path, lab.wan)
        if proc.returncode is not None or time.monotonic() > deadline:
            raise LabError(f"relay did not start: {log_path.read_text()}")
        await asyncio.sleep(0.05)


async def start_node(
    ns: Namespace, tmp: Path, command: str, *args: str, stdin: bool = False
) -> LabProcess:
    log_path = tmp / f"{ns.name}-{command}.log"
    proc = await ns.spawn(
        ns.python("-m", "harness.natlab_node", command, *args), stdin=stdin, stderr_path=log_path
    )
    return LabProcess(ns.name, proc)
