"""A local fleet of real processes: `fleet relay`, `fleet coordinator`, `fleet agent`s, `fleetctl`.

Used by the end-to-end tests (tests/integration/test_update_chain.py) and by the demo
(tests/demo.py, `scripts/demo`). Every daemon is started through the CLI as users start it,
on 127.0.0.1 with port 0; its bound address is read from its JSON log line (`*_listening`,
`agent_started`), and a restart (after a stop or kill -9) reuses the same port, key and state
directory. Each agent has its own chroot Nix store, profile, hermetic nix.conf and switch log.
`close()` stops everything (SIGTERM, then SIGKILL) and returns the tails of the logs, which
the test fixture prints so a failing test shows what the daemons said.

Where each process runs is a `Host`: by default the machine itself on 127.0.0.1; in the NAT
lab a namespace of harness/natlab.py (its `argv()` prefixes `ip netns exec NS`, its `ip` is
where the daemon listens), so the same fleet runs with every part behind its own NAT.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fleet.identity import NodeId, write_new_key
from fleet.nix import NixEnv, NixStore, current_system
from harness.cli import cli_env, fleet_argv, fleetctl_argv
from harness.nixlab import SWITCH_LOG_VAR, switch_log_lines
from harness.relay_process import without_stun

START_TIMEOUT = 30.0  # generous: two cores shared with other test runs
STOP_TIMEOUT = 15.0
LOOPBACK = "127.0.0.1"
TAG = "lab"


def read_log_events(path: Path) -> list[dict[str, Any]]:
    """The JSON log events a process wrote so far (other lines skipped)."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


class LabError(Exception):
    """A lab process did not start, or misbehaved in a way the lab itself can see."""


class Host(Protocol):
    """Where a process runs: `argv(...)` wraps a command line, `ip` is the address to bind."""

    @property
    def ip(self) -> str: ...

    def argv(self, *argv: str) -> list[str]: ...


@dataclass(frozen=True)
class Local:
    """This machine, on loopback."""

    ip: str = LOOPBACK

    def argv(self, *argv: str) -> list[str]:
        return list(argv)


LOCAL = Local()


@dataclass
class Daemon:
    """One `fleet` daemon; restartable with the same arguments, state and port."""

    name: str
    args: list[str]  # after `fleet`, without --listen
    env: dict[str, str]
    ready_event: str
    address_key: str  # the ready event's field holding the bound HOST:PORT
    log_dir: Path
    listen: str = f"{LOOPBACK}:0"
    host: Host = LOCAL
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    ready: dict[str, Any] = field(default_factory=dict)  # the ready event of the current run
    runs: int = 0

    def start(self) -> None:
        if self.alive:
            raise LabError(f"{self.name} is already running")
        self.runs += 1
        self.ready = {}
        self.log_path = self.log_dir / f"{self.name}-{self.runs}.log"
        argv = self.host.argv(*fleet_argv(*self.args, "--listen", self.listen))
        with self.log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=self.env
            )

    async def wait_ready(self, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """Wait for the ready log event; remember the bound address for restarts."""
        assert self.proc is not None, "not started"
        assert self.log_path is not None
        deadline = time.monotonic() + timeout
        while True:
            for event in read_log_events(self.log_path):
                if event.get("event") == self.ready_event:
                    self.ready = event
                    self.listen = str(event[self.address_key])
                    return event
            if self.proc.poll() is not None:
                raise LabError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise LabError(f"{self.name} not ready within {timeout:.0f}s:\n{self.tail()}")
            await asyncio.sleep(0.05)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill9(self) -> None:
        """SIGKILL: no clean shutdown, no flush; what a crash or power cut leaves."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(STOP_TIMEOUT)

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; the exit code (None if never started)."""
        if self.proc is None:
            return None
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)
        return self.proc.returncode

    def events(self) -> list[dict[str, Any]]:
        """Log events of every run so far."""
        runs = sorted(self.log_dir.glob(f"{self.name}-*.log"))
        return [event for path in runs for event in read_log_events(path)]

    def tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Agent:
    """One device: its key, chroot store and profile, switch log and daemon."""

    name: str
    node_id: NodeId
    store: NixStore
    switch_log: Path
    daemon: Daemon

    def switches(self) -> list[str]:
        """Lines `ACTION STOREPATH` the fake systems' switch-to-configuration wrote."""
        return switch_log_lines(self.switch_log)

    async def profile(self) -> str | None:
        """The store path the system profile points at (None: no generation yet)."""
        generation = await current_system(self.store)
        return generation.path if generation is not None else None


@dataclass(frozen=True)
class FleetctlResult:
    argv: Sequence[str]
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        module = list(self.argv).index("fleet.cli.fleetctl")  # after any `ip netns exec NS`
        args = " ".join(self.argv[module + 1 :])
        return f"fleetctl {args} -> exit {self.code}\nstdout:\n{self.out}\nstderr:\n{self.err}"


class RunningFleetctl:
    """A fleetctl process whose output is read line by line as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process, argv: list[str], echo: bool) -> None:
        self.proc = proc
        self.argv = argv
        self.echo = echo
        self.out: list[str] = []
        self.err: list[str] = []
        self._line_seen = asyncio.Event()
        assert proc.stdout is not None
        assert proc.stderr is not None
        self._readers = [
            asyncio.ensure_future(self._read(proc.stdout, self.out)),
            asyncio.ensure_future(self._read(proc.stderr, self.err)),
        ]

    async def _read(self, stream: asyncio.StreamReader, into: list[str]) -> None:
        while line := await stream.readline():
            text = line.decode(errors="replace")
            into.append(text)
            if self.echo:
                print("    " + text, end="", flush=True)
            self._line_seen.set()

    async def next_line(self, start: int, timeout: float = START_TIMEOUT) -> str:
        """stdout line number `start` (0-based), waiting for it; fails if fleetctl ends first."""
        async with asyncio.timeout(timeout):
            while len(self.out) <= start:
                if all(r.done() for r in self._readers):
                    raise LabError(f"fleetctl ended early:\n{self.result()}")
                self._line_seen.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._line_seen.wait(), 0.5)
        return self.out[start]

    async def wait_for_output(self, text: str, timeout: float = START_TIMEOUT) -> str:
        """The first stdout line containing `text`."""
        async with asyncio.timeout(timeout):
            index = 0
            while text not in (line := await self.next_line(index)):
                index += 1
            return line

    async def finish(self, timeout: float = START_TIMEOUT) -> FleetctlResult:
        try:
            async with asyncio.timeout(timeout):
                await self.proc.wait()
                await asyncio.gather(*self._readers)
        finally:
            await self.kill()
        return self.result()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)

    def result(self) -> FleetctlResult:
        code = self.proc.returncode if self.proc.returncode is not None else -1
        return FleetctlResult(self.argv, code, "".join(self.out), "".join(self.err))


class FleetLab:
    """Relay, coordinator and agents under `root`, with one admin key for fleetctl.

    `substituter` and `trusted_key` are what every agent trusts unless told otherwise
    (add_agent(trusted_key=...)): the agents' own Nix configuration, never the push's.
    `relay_host`, `coordinator_host` and `fleetctl_host` say where those run (agents: in
    add_agent); `relay_args` are extra relay flags (STUN, metrics; without a STUN flag the
    relay runs with --no-stun, so labs can run side by side). `coordinator_public=False`
    is a coordinator nobody can dial (behind a NAT that forwards nothing): agents and fleetctl
    get only its node id and find it through the relay.
    """

    def __init__(
        self,
        root: Path,
        *,
        substituter: str,
        trusted_key: str,
        relay_host: Host = LOCAL,
        relay_args: Sequence[str] = (),
        coordinator_host: Host = LOCAL,
        coordinator_public: bool = True,
        fleetctl_host: Host = LOCAL,
    ) -> None:
        self.root = root
        self.substituter = substituter
        self.trusted_key = trusted_key
        self.coordinator_public = coordinator_public
        self.fleetctl_host = fleetctl_host
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.admin_key = root / "admin.key"
        self.admin_id = write_new_key(self.admin_key).node_id
        # No ~/.config/fleet/fleetctl.toml of the user leaks in: flags only.
        self.env = {
            k: v
            for k, v in cli_env({"XDG_CONFIG_HOME": str(root / "xdg-config")}).items()
            if not k.startswith("FLEET_")  # no FLEET_RELAY etc. of the user's shell
        }
        self.relay = self._daemon(
            "relay",
            "relay_listening",
            "address",
            ["relay", "--key", str(self._key("relay")), *without_stun(relay_args)],
            relay_host,
        )
        self.coordinator_id = write_new_key(root / "coordinator.key").node_id
        self.coordinator = self._daemon(
            "coordinator", "coordinator_listening", "address", [], coordinator_host
        )  # arguments once the relay's URL is known
        self.agents: dict[str, Agent] = {}
        self.fleetctls: list[RunningFleetctl] = []

    def _key(self, name: str) -> Path:
        path = self.root / f"{name}.key"
        if not path.exists():
            write_new_key(path)
        return path

    def _daemon(
        self, name: str, ready: str, address_key: str, args: list[str], host: Host = LOCAL
    ) -> Daemon:
        return Daemon(
            name, args, self.env, ready, address_key, self.logs, listen=f"{host.ip}:0", host=host
        )

    @property
    def relay_url(self) -> str:
        return str(self.relay.ready["url"])

    @property
    def coordinator_addr(self) -> str:
        """NODEID@HOST:PORT, what fleetctl and agents are given (NODEID when not public)."""
        if not self.coordinator_public:
            return str(self.coordinator_id)
        return f"{self.coordinator_id}@{self.coordinator.listen}"

    async def start(self) -> None:
        """The relay (TLS), then the coordinator, which keeps a home connection to it."""
        self.relay.start()
        await self.relay.wait_ready()
        self.coordinator.args = [
            "coordinator", "--key", str(self.root / "coordinator.key"),
            "--state-dir", str(self.root / "coordinator"), "--trust-root", str(self.admin_id),
            "--relay", self.relay_url,
        ]  # fmt: skip
        self.coordinator.start()
        await self.coordinator.wait_ready()

    def add_agent(
        self,
        name: str,
        *,
        relay_only: bool = False,
        trusted_key: str | None = None,
        host: Host = LOCAL,
        tags: Sequence[str] = (TAG,),
    ) -> Agent:
        """A device (not started) running on `host`. `relay_only`: it gets the coordinator's
        node id but no address, and its UDP socket is IPv6 (::1) while the coordinator's is
        IPv4, so no direct path exists: the relay is its only way, as for a device behind a
        hostile NAT (in the NAT lab, put it behind a real one instead). `tags`: the agent's own
        `--tag`s (what its scope checks use), by default the tag `register` gives it."""
        home = self.root / "agents" / name
        env = NixEnv.hermetic(home / "nix-env")
        store = NixStore.chroot(home / "store", env)
        key = home / "device.key"
        home.mkdir(parents=True, exist_ok=True)
        node_id = write_new_key(key).node_id
        coordinator = str(self.coordinator_id) if relay_only else self.coordinator_addr
        args = [
            "agent", "--key", str(key), "--coordinator", coordinator,
            "--relay", self.relay_url, "--state-dir", str(home / "state"),
            "--trust-root", str(self.admin_id), "--substituter", self.substituter,
            "--trusted-public-key", trusted_key or self.trusted_key,
            "--nix-store", str(store.root), *(a for t in tags for a in ("--tag", t)),
        ]  # fmt: skip
        switch_log = home / "switch.log"
        extra = {SWITCH_LOG_VAR: str(switch_log), **env.environ()}
        daemon = Daemon(
            f"agent-{name}",
            args,
            {**self.env, **extra},
            "agent_started",
            "listen",
            self.logs,
            listen="[::1]:0" if relay_only else f"{host.ip}:0",
            host=host,
        )
        agent = Agent(name, node_id, store, switch_log, daemon)
        self.agents[name] = agent
        return agent

    async def start_agents(self, *agents: Agent) -> None:
        """Start several agents at once and wait until each has logged agent_started."""
        for agent in agents:
            agent.daemon.start()
        await asyncio.gather(*(agent.daemon.wait_ready() for agent in agents))

    async def register(self, *agents: Agent, tags: Iterable[str] = (TAG,)) -> None:
        """`fleetctl devices add` for each agent (in parallel)."""
        tag_args = [arg for tag in tags for arg in ("--tag", tag)]
        results = await asyncio.gather(
            *(
                self.fleetctl("devices", "add", str(a.node_id), "--name", a.name, *tag_args)
                for a in agents
            )
        )
        for result in results:
            if result.code != 0:
                raise LabError(f"devices add failed: {result}")

    async def launch(self, *agents: Agent, tags: Iterable[str] = (TAG,)) -> None:
        """Register and start agents side by side (the coordinator must be running)."""
        await asyncio.gather(self.register(*agents, tags=tags), self.start_agents(*agents))

    def fleetctl_argv(self, *args: str, key: Path | None = None) -> list[str]:
        relay = [] if self.coordinator_public else ["--relay", self.relay_url]
        return self.fleetctl_host.argv(
            *fleetctl_argv(
                "--coordinator", self.coordinator_addr, "--key", str(key or self.admin_key),
                *relay, "--timeout", "20", *args,
            )
        )  # fmt: skip

    async def start_fleetctl(
        self, *args: str, key: Path | None = None, echo: bool = False
    ) -> RunningFleetctl:
        argv = self.fleetctl_argv(*args, key=key)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
        )
        running = RunningFleetctl(proc, argv, echo)
        self.fleetctls.append(running)
        return running

    async def fleetctl(
        self, *args: str, key: Path | None = None, timeout: float = 60, echo: bool = False
    ) -> FleetctlResult:
        running = await self.start_fleetctl(*args, key=key, echo=echo)
        return await running.finish(timeout)

    async def status(self) -> dict[str, dict[str, Any]]:
        """`fleetctl status --json`, by device name."""
        result = await self.fleetctl("status", "--json")
        if result.code != 0:
            raise LabError(f"status failed: {result}")
        return {row["name"]: row for row in json.loads(result.out)}

    async def wait_status(
        self, check: Callable[[dict[str, dict[str, Any]]], bool], timeout: float = 60
    ) -> dict[str, dict[str, Any]]:
        """Follow `fleetctl status --watch --json` until `check(rows by name)` holds."""
        watch = await self.start_fleetctl("status", "--watch", "--json")
        rows: dict[str, dict[str, Any]] = {}
        try:
            async with asyncio.timeout(timeout):
                for index in itertools.count():
                    doc = json.loads(await watch.next_line(index, timeout))
                    for row in doc.get("devices") or [doc.get("device")]:
                        rows[row["name"] or row["id"]] = row
                    if check(rows):
                        return rows
        except TimeoutError:
            raise LabError(f"status never matched; last rows: {json.dumps(rows)}") from None
        finally:
            await watch.kill()
        raise AssertionError("unreachable")

    async def close(self) -> str:
        """Stop every process (SIGTERM all, then wait; SIGKILL stragglers); the log tails."""
        for running in self.fleetctls:
            await running.kill()
        daemons = [a.daemon for a in self.agents.values()] + [self.coordinator, self.relay]
        for daemon in daemons:
            daemon.signal(signal.SIGTERM)
        await asyncio.gather(*(daemon.stop() for daemon in daemons))
        return "\n".join(f"==== {d.name} ====\n{d.tail()}" for d in daemons if d.runs)
