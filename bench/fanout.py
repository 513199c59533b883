"""Fan-out to N agents on one coordinator (issue 12): herd, idle cost, push latency, restart.

Usage: python -m bench.fanout -n N [-p WORKERS] [--ramp SECONDS] [options]  (see --help)

One real `fleet coordinator` started through the CLI (its own state dir, keys from
`fleet keygen`), N real agents (bench/fanout_agents.py: mesh Endpoint, CoordinatorSession,
Agent with verify_announcement and the Updater; no Nix work) in worker processes that report
timestamps over a pipe, and `fleetctl` for every admin step. Phases, each bounded:
1. enrollment: `fleetctl devices add --from FILE` for all N when the CLI has it; otherwise
   one `fleetctl devices add` per device for a sample (the per-device figure), and the rest
   written with the coordinator stopped through fleet.coordinator.registry, in one
   transaction (setup only, not an enrollment figure: no audit entries);
2. herd: every agent dials at the same instant (or spread over --ramp seconds); time until
   all are welcomed, and QUIC connections the coordinator accepted per agent (its
   `mesh_accepted` log events for the agent ALPN);
3. idle: coordinator and worker CPU (/proc/PID/stat) over --idle seconds, as % of one core;
   coordinator RSS per agent (VmRSS with N agents minus VmRSS with none);
4. push: `fleetctl push --wait` to tag:fanout; latency from the coordinator's `push_accepted`
   log event to each agent's verification (p50, p95, p99, max, never within --push-timeout),
   and what `push --wait` reported; then the wall time of `fleetctl status --json`;
5. restart: `kill -9` of the coordinator and a restart on the same port; time until every
   agent is welcomed again.
Prints a table, and as its last line one JSON object. Every process it started is stopped on
exit, also on Ctrl-C. Needs one UDP socket (file descriptor) per agent: workers raise their
soft RLIMIT_NOFILE to the hard limit, and the run stops early if that is too small.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.proc import cpu_seconds, rss_kib
from fleet.coordinator import registry
from fleet.coordinator.database import Database
from fleet.coordinator.settings import DB_NAME
from fleet.identity import Identity
from fleet.protocol import alpn

REPO = Path(__file__).resolve().parent.parent
TAG = "fanout"
# The system every agent's profile already points at, so applying it needs no Nix process.
STORE_PATH = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-fanout-bench-system"
STOP_TIMEOUT = 10.0
POLL = 0.1


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values; nan when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(latencies: Sequence[float], total: int, within: float) -> dict[str, Any]:
    """p50/p95/p99/max of the latencies at most `within`, and how many of `total` never."""
    ok = sorted(x for x in latencies if x <= within)
    return {
        "p50": percentile(ok, 50),
        "p95": percentile(ok, 95),
        "p99": percentile(ok, 99),
        "max": ok[-1] if ok else math.nan,
        "never": total - len(ok),
    }


def log_time(event: dict[str, Any]) -> float | None:
    """Epoch seconds of a JSON log event's ISO `timestamp`, if it has one."""
    stamp = event.get("timestamp")
    if not isinstance(stamp, str):
        return None
    with contextlib.suppress(ValueError):
        return datetime.datetime.fromisoformat(stamp).timestamp()
    return None


def cli_env(root: Path) -> dict[str, str]:
    """This checkout's fleet, no FLEET_* of the user's shell, no fleetctl.toml of theirs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env["XDG_CONFIG_HOME"] = str(root / "xdg-config")
    return env


@dataclass
class CliResult:
    code: int
    out: str
    err: str
    seconds: float


async def run_cli(argv: Sequence[str], env: dict[str, str], timeout: float) -> CliResult:
    """Run a CLI to its end (killed after `timeout`, then code -9)."""
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    code = proc.returncode if proc.returncode is not None else -9
    return CliResult(
        code, out.decode(errors="replace"), err.decode(errors="replace"), time.monotonic() - start
    )


class LogScan:
    """Reads a daemon's JSON log as it grows; hands each new event to `on_event`."""

    def __init__(self, path: Path, on_event: Callable[[dict[str, Any]], None]) -> None:
        self.path = path
        self.on_event = on_event
        self._offset = 0
        self._partial = b""

    def poll(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    self.on_event(event)


@dataclass
class CoordinatorLog:
    """What the bench reads from the coordinator's log events."""

    accepted_agents: int = 0  # QUIC connections accepted for the agent ALPN (this run)
    accepted_admins: int = 0
    push_accepted: dict[int, float] = field(default_factory=dict)  # sequence -> epoch
    listening: str | None = None
    events: dict[str, int] = field(default_factory=dict)  # count of each event name

    def __call__(self, event: dict[str, Any]) -> None:
        name = event.get("event")
        key = str(name)
        self.events[key] = self.events.get(key, 0) + 1
        if name == "mesh_accepted":
            if event.get("alpn") == alpn.AGENT:
                self.accepted_agents += 1
            elif event.get("alpn") == alpn.ADMIN:
                self.accepted_admins += 1
        elif name == "push_accepted":
            when = log_time(event)
            if when is not None:
                self.push_accepted[int(event["sequence"])] = when
        elif name == "coordinator_listening":
            self.listening = str(event["address"])


class Coordinator:
    """`fleet coordinator` through the CLI; restartable on the same port, state and key."""

    def __init__(
        self,
        root: Path,
        env: dict[str, str],
        trust_root: str,
        extra: list[str],
        profile: Path | None = None,
    ) -> None:
        self.root = root
        self.profile = profile  # cProfile output, one file per run (PROFILE.RUN)
        self.env = env
        self.key = root / "coordinator.key"
        self.args = [
            "--key",
            str(self.key),
            "--state-dir",
            str(root / "coordinator"),
            "--trust-root",
            trust_root,
            "--log-level",
            "info",
            *extra,
        ]
        self.listen = "127.0.0.1:0"
        self.proc: asyncio.subprocess.Process | None = None
        self.runs = 0
        self.log = CoordinatorLog()
        self._scan: LogScan | None = None

    @property
    def database(self) -> Path:
        return self.root / "coordinator" / DB_NAME

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float) -> float:
        """Start and wait for `coordinator_listening`; seconds it took."""
        self.runs += 1
        self.log = CoordinatorLog()
        log_path = self.root / f"coordinator-{self.runs}.log"
        self._scan = LogScan(log_path, self.log)
        start = time.monotonic()
        profiler = []
        if self.profile is not None:
            profiler = ["-m", "cProfile", "-o", f"{self.profile}.{self.runs}"]
        with log_path.open("wb") as log_file:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *profiler,
                "-m",
                "fleet",
                "coordinator",
                *self.args,
                "--listen",
                self.listen,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env=self.env,
            )
        deadline = start + timeout
        while self.log.listening is None:
            self.poll()
            if self.proc.returncode is not None:
                raise BenchError(
                    f"the coordinator exited with {self.proc.returncode}; see {log_path}"
                )
            if time.monotonic() > deadline:
                raise BenchError(f"the coordinator did not listen within {timeout:.0f} s")
            await asyncio.sleep(0.05)
        self.listen = self.log.listening  # a restart reuses the port
        return time.monotonic() - start

    def poll(self) -> None:
        if self._scan is not None:
            self._scan.poll()

    def kill9(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()


class BenchError(Exception):
    """The bench cannot go on; the message says why."""


@dataclass
class Fleet:
    """The agents as the workers report them."""

    total: int
    welcomes: list[int] = field(init=False)  # sessions welcomed so far, per agent
    last_welcome: list[float] = field(init=False)  # epoch of the latest, per agent
    verified: dict[int, dict[int, float]] = field(default_factory=dict)  # seq -> agent -> t
    ready: int = 0

    def __post_init__(self) -> None:
        self.welcomes = [0] * self.total
        self.last_welcome = [math.nan] * self.total

    def on_line(self, line: bytes) -> None:
        with contextlib.suppress(ValueError):
            msg = json.loads(line)
            match msg.get("ev"):
                case "welcomed":
                    i = int(msg["i"])
                    self.welcomes[i] = max(self.welcomes[i], int(msg["n"]))
                    self.last_welcome[i] = float(msg["t"])
                case "verified":
                    by_agent = self.verified.setdefault(int(msg["seq"]), {})
                    by_agent.setdefault(int(msg["i"]), float(msg["t"]))
                case "ready":
                    self.ready += 1

    def welcomed_since(self, since: float) -> int:
        return sum(1 for t in self.last_welcome if t >= since)


class Workers:
    """The worker processes (bench.fanout_agents) and their reporting pipes."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self._readers: list[asyncio.Task[None]] = []

    async def spawn(self, specs: list[Path], env: dict[str, str], fleet: Fleet, logs: Path) -> None:
        for k, spec in enumerate(specs):
            with (logs / f"worker-{k}.log").open("wb") as err:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench.fanout_agents",
                    str(spec),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=err,
                    env=env,
                    limit=1 << 20,
                )
            self.procs.append(proc)
            self._readers.append(asyncio.create_task(self._read(proc, fleet)))

    async def _read(self, proc: asyncio.subprocess.Process, fleet: Fleet) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            fleet.on_line(line)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.returncode is None]

    def dead(self) -> list[int]:
        return [p.returncode for p in self.procs if p.returncode is not None]

    async def send(self, command: dict[str, Any]) -> None:
        line = (json.dumps(command) + "\n").encode()
        for proc in self.procs:
            if proc.stdin is not None and proc.returncode is None:
                proc.stdin.write(line)
                with contextlib.suppress(ConnectionError):
                    await proc.stdin.drain()

    async def stop(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.send({"cmd": "stop"})
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


async def until(check: Callable[[], bool], timeout: float, tick: Callable[[], None]) -> bool:
    """Poll `check` (after `tick`) every POLL s; False if `timeout` passed first."""
    deadline = time.monotonic() + timeout
    while True:
        tick()
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(POLL)


def load() -> float:
    return round(os.getloadavg()[0], 2)


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.n: int = args.n
        self.root = root
        self.env = cli_env(root)
        self.workers = Workers()
        self.fleet = Fleet(args.n)
        self.results: dict[str, Any] = {"n": args.n, "workers": args.workers, "ramp": args.ramp}
        self.notes: dict[str, str] = {}
        self.coordinator: Coordinator | None = None
        self.admin_key = root / "admin.key"
        self.coordinator_id = ""  # from `fleet keygen`

    # -- helpers ------------------------------------------------------------------------------

    def coord(self) -> Coordinator:
        assert self.coordinator is not None
        return self.coordinator

    def fleetctl_argv(self, *args: str) -> list[str]:
        coordinator = f"{self.coordinator_id}@{self.coord().listen}"
        return [
            sys.executable,
            "-m",
            "fleet.cli.fleetctl",
            "--coordinator",
            coordinator,
            "--key",
            str(self.admin_key),
            "--timeout",
            str(self.args.admin_timeout),
            *args,
        ]

    async def fleetctl(self, *args: str, timeout: float) -> CliResult:
        return await run_cli(self.fleetctl_argv(*args), self.env, timeout)

    def tick(self) -> None:
        self.coord().poll()
        if dead := self.workers.dead():
            raise BenchError(f"a worker exited ({dead}); see {self.root}/worker-*.log")

    # -- phases -------------------------------------------------------------------------------

    async def keys(self) -> tuple[str, list[Identity]]:
        """Admin and coordinator keys through `fleet keygen`; the agents' in memory."""
        ids = []
        for name in ("admin", "coordinator"):
            result = await run_cli(
                [sys.executable, "-m", "fleet", "keygen", str(self.root / f"{name}.key")],
                self.env,
                30,
            )
            if result.code != 0:
                raise BenchError(f"fleet keygen failed: {result.err.strip()}")
            ids.append(result.out.strip())
        self.coordinator_id = ids[1]
        return ids[0], [Identity.generate() for _ in range(self.n)]

    async def enroll(self, agents: list[Identity]) -> None:
        help_text = await self.fleetctl("devices", "add", "--help", timeout=30)
        if "--from" in help_text.out:
            await self._enroll_bulk(agents)
        else:
            await self._enroll_one_by_one(agents)

    async def _enroll_bulk(self, agents: list[Identity]) -> None:
        lines = ["id,name,tags"] + [f"{a.node_id},agent-{i},{TAG}" for i, a in enumerate(agents)]
        path = self.root / "devices.csv"
        path.write_text("\n".join(lines) + "\n")
        result = await self.fleetctl(
            "devices", "add", "--from", str(path), timeout=self.args.enroll_timeout
        )
        if result.code != 0:
            raise BenchError(f"devices add --from failed ({result.code}): {result.err.strip()}")
        self.results["enroll"] = {
            "method": "devices add --from FILE",
            "devices": self.n,
            "seconds": result.seconds,
            "load": load(),
        }

    async def _enroll_one_by_one(self, agents: list[Identity]) -> None:
        sample = min(self.args.enroll_sample, self.n)
        started = load()
        start = time.monotonic()
        for i in range(sample):
            result = await self.fleetctl(
                "devices",
                "add",
                str(agents[i].node_id),
                "--name",
                f"agent-{i}",
                "--tag",
                TAG,
                timeout=60,
            )
            if result.code != 0:
                raise BenchError(f"devices add failed ({result.code}): {result.err.strip()}")
        seconds = time.monotonic() - start
        rest = self.n - sample
        setup = 0.0
        if rest:
            await self.coord().stop()
            setup_start = time.monotonic()
            await register_offline(self.coord().database, agents, sample)
            setup = time.monotonic() - setup_start
            await self.coord().start(self.args.start_timeout)
        self.results["enroll"] = {
            "method": "devices add, one per device",
            "devices": sample,
            "seconds": seconds,
            "per_device": seconds / sample if sample else math.nan,
            "offline_registered": rest,
            "offline_seconds": setup,
            "load": started,
        }

    async def start_workers(self, trust_root: str, agents: list[Identity]) -> None:
        profile_dir = self.root / "profile"
        profile_dir.mkdir()
        (profile_dir / "system-1-link").symlink_to(STORE_PATH)
        (profile_dir / "system").symlink_to("system-1-link")
        count = max(1, min(self.args.workers, self.n))
        share = math.ceil(self.n / count)
        specs = []
        for k in range(count):
            chunk = agents[k * share : (k + 1) * share]
            if not chunk:
                break
            spec = {
                "coordinator": f"{self.coordinator_id}@{self.coord().listen}",
                "trust_root": trust_root,
                "tags": [TAG],
                "state_root": str(self.root / "agents"),
                "profile": str(profile_dir / "system"),
                "first_index": k * share,
                "seeds": [a.seed.hex() for a in chunk],
            }
            path = self.root / f"worker-{k}.json"
            path.write_text(json.dumps(spec))
            specs.append(path)
        await self.workers.spawn(specs, self.env, self.fleet, self.root)
        if not await until(
            lambda: self.fleet.ready == len(specs), self.args.start_timeout, self.tick
        ):
            raise BenchError(f"workers not ready within {self.args.start_timeout:.0f} s")

    async def herd(self) -> None:
        coord = self.coord()
        self.results["rss0_kib"] = rss_kib(coord.pid)
        started = load()
        at = time.time() + 1.0
        pids = self.workers.pids
        c0, w0 = cpu_seconds(coord.pid), sum(map(cpu_seconds, pids))
        await self.workers.send({"cmd": "start", "at": at, "ramp": self.args.ramp, "total": self.n})
        done = await until(
            lambda: self.fleet.welcomed_since(at) == self.n,
            self.args.connect_timeout + self.args.ramp + 1.0,
            self.tick,
        )
        spent = time.time() - at
        c1, w1 = cpu_seconds(coord.pid), sum(map(cpu_seconds, pids))
        welcomed = self.fleet.welcomed_since(at)
        firsts = sorted(t - at for t in self.fleet.last_welcome if t >= at)
        self.results["herd"] = {
            "all_connected": done,
            "seconds": firsts[-1] if done else math.nan,
            "half_seconds": percentile(firsts, 100 * 0.5 * self.n / len(firsts))
            if len(firsts) >= self.n / 2
            else math.nan,
            "connected": welcomed,
            "coordinator_cpu_pct": 100 * (c1 - c0) / spent,
            "agents_cpu_pct": 100 * (w1 - w0) / spent,
            "coordinator_events": dict(coord.log.events),
            "accepted_per_agent": coord.log.accepted_agents / self.n,
            "accepted": coord.log.accepted_agents,
            "load": started,
            "timeout": self.args.connect_timeout + self.args.ramp,
        }

    async def idle(self) -> None:
        coord = self.coord()
        await asyncio.sleep(self.args.settle)
        started = load()
        pids = self.workers.pids
        c0, w0, t0 = cpu_seconds(coord.pid), sum(map(cpu_seconds, pids)), time.monotonic()
        await asyncio.sleep(self.args.idle)
        c1, w1, t1 = cpu_seconds(coord.pid), sum(map(cpu_seconds, pids)), time.monotonic()
        rss = rss_kib(coord.pid)
        workers_rss = sum(map(rss_kib, pids))
        connected = sum(1 for n in self.fleet.welcomes if n > 0)
        self.tick()
        self.results["idle"] = {
            "seconds": t1 - t0,
            "coordinator_cpu_pct": 100 * (c1 - c0) / (t1 - t0),
            "agents_cpu_pct": 100 * (w1 - w0) / (t1 - t0),
            "rss_kib": rss,
            "workers_rss_per_agent_kib": workers_rss / self.n,
            "rss_per_agent_kib": (rss - self.results["rss0_kib"]) / connected
            if connected
            else math.nan,
            "load": started,
        }

    async def push(self) -> None:
        coord = self.coord()
        started = load()
        known = set(coord.log.push_accepted)
        wait = self.args.push_timeout
        push = asyncio.create_task(
            self.fleetctl(
                "push",
                STORE_PATH,
                "--to",
                f"tag:{TAG}",
                "--no-cache-check",
                "--wait",
                "--timeout",
                str(wait),
                timeout=wait + self.args.admin_timeout + 30,
            )
        )
        accepted = await until(
            lambda: bool(set(coord.log.push_accepted) - known),
            self.args.admin_timeout + 30,
            self.tick,
        )
        summary: dict[str, Any] = {"load": started, "timeout": wait}
        if accepted:
            sequence = max(set(coord.log.push_accepted) - known)
            at = coord.log.push_accepted[sequence]
            await until(
                lambda: (
                    len(self.fleet.verified.get(sequence, {})) == self.n or time.time() > at + wait
                ),
                wait + 5,
                self.tick,
            )
            latencies = [t - at for t in self.fleet.verified.get(sequence, {}).values()]
            summary.update(sequence=sequence, **latency_summary(latencies, self.n, wait))
        else:
            summary.update(sequence=None, never=self.n)
        result = await push
        lines = [line for line in result.out.splitlines() if line.strip()]
        errors = [line for line in result.err.splitlines() if line.strip()]
        summary["wait"] = {
            "exit": result.code,
            "seconds": result.seconds,
            "applied_lines": sum("applied" in line for line in lines),
            "last": ((lines if result.code == 0 else errors) or errors or lines or [""])[-1][:200],
        }
        self.results["push"] = summary

    async def status(self) -> None:
        started = load()
        result = await self.fleetctl("status", "--json", timeout=self.args.admin_timeout + 30)
        rows = math.nan
        with contextlib.suppress(ValueError, TypeError):
            doc = json.loads(result.out)  # a list of rows, or an object holding "devices"
            rows = len(doc["devices"] if isinstance(doc, dict) else doc)
        self.results["status"] = {
            "exit": result.code,
            "seconds": result.seconds,
            "rows": rows,
            "error": result.err.strip()[-200:],
            "load": started,
        }

    async def restart(self) -> None:
        coord = self.coord()
        started = load()
        killed = time.time()
        coord.kill9()
        assert coord.proc is not None
        await asyncio.wait_for(coord.proc.wait(), STOP_TIMEOUT)
        start_seconds = await coord.start(self.args.start_timeout)
        timeout = self.args.restart_timeout
        done = await until(lambda: self.fleet.welcomed_since(killed) == self.n, timeout, self.tick)
        back = [t for t in self.fleet.last_welcome if t >= killed]
        self.results["restart"] = {
            "all_back": done,
            "seconds": (max(back) - killed) if done else math.nan,
            "back": len(back),
            "coordinator_start_seconds": start_seconds,
            "accepted_per_agent": coord.log.accepted_agents / self.n,
            "coordinator_events": dict(coord.log.events),
            "load": started,
            "timeout": timeout,
        }

    async def run(self) -> None:
        trust_root, agents = await self.keys()
        self.coordinator = Coordinator(
            self.root, self.env, trust_root, self.args.coordinator_arg, self.args.profile
        )
        await self.coord().start(self.args.start_timeout)
        await self.enroll(agents)
        await asyncio.sleep(self.args.settle)
        await self.start_workers(trust_root, agents)
        await self.herd()
        await self.idle()
        await self.push()
        await self.status()
        if not self.args.no_restart:
            await self.restart()

    async def close(self) -> None:
        await self.workers.stop()
        if self.coordinator is not None:
            await self.coordinator.stop()


async def register_offline(database: Path, agents: list[Identity], first: int) -> None:
    """Register agents[first:] with the coordinator stopped, through its own registry code."""
    db = await Database.open(database)
    try:
        now = time.time()
        async with db.transaction() as tx:
            for i in range(first, len(agents)):
                await registry.add(tx, agents[i].node_id, f"agent-{i}", (TAG,), now)
    finally:
        await db.close()


# ------------------------------------------------------------------------------- reporting


def _fmt(value: Any, unit: str = "", digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def table(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(measure, value, note) rows for the people reading the run."""
    rows: list[tuple[str, str, str]] = []
    e = r.get("enroll", {})
    if "per_device" in e:
        rows.append(
            (
                "enrollment per device",
                _fmt(e["per_device"], " s"),
                f"fleetctl devices add x{e['devices']}, load {e['load']}",
            )
        )
        if e["offline_registered"]:
            rows.append(
                (
                    "  rest (setup, not enrollment)",
                    _fmt(e["offline_seconds"], " s"),
                    f"{e['offline_registered']} rows via registry.add, coordinator "
                    "stopped, one transaction",
                )
            )
    elif e:
        rows.append(
            (
                f"enrollment of {e['devices']}",
                _fmt(e["seconds"], " s"),
                f"{e['method']}, load {e['load']}",
            )
        )
    h = r.get("herd", {})
    if h:
        how = f"ramp {r['ramp']:g} s" if r["ramp"] else "simultaneous start"
        value = _fmt(h["seconds"], " s") if h["all_connected"] else f"never ({h['timeout']:g} s)"
        rows.append(
            ("all connected", value, f"{how}; {h['connected']}/{r['n']} welcomed, load {h['load']}")
        )
        rows.append(
            (
                "  half connected",
                _fmt(h["half_seconds"], " s"),
                f"coordinator CPU {h['coordinator_cpu_pct']:.0f} %, agents' "
                f"{h['agents_cpu_pct']:.0f} % during the herd",
            )
        )
        rows.append(
            (
                "connections accepted per agent",
                _fmt(h["accepted_per_agent"]) if h["accepted"] or not h["connected"] else "-",
                f"{h['accepted']} QUIC connections (mesh_accepted, agent ALPN), "
                f"{h['coordinator_events'].get('agent_hello', 0)} Hellos (agent_hello)",
            )
        )
    i = r.get("idle", {})
    if i:
        rows.append(
            (
                "idle coordinator CPU",
                _fmt(i["coordinator_cpu_pct"], " %", 1),
                f"of one core over {i['seconds']:.0f} s, load {i['load']}",
            )
        )
        rows.append(
            (
                "idle agents' CPU",
                _fmt(i["agents_cpu_pct"], " %", 1),
                f"all {r['workers']} workers together",
            )
        )
        rows.append(
            (
                "coordinator RSS per agent",
                _fmt(i["rss_per_agent_kib"], " KiB", 0),
                f"{i['rss_kib']} KiB minus {r['rss0_kib']} KiB with 0 agents",
            )
        )
    p = r.get("push", {})
    if p:
        pct = " / ".join(_fmt(p.get(k), "", 2) for k in ("p50", "p95", "p99", "max"))
        rows.append(
            (
                "push accept -> verified p50/p95/p99/max",
                pct + " s",
                f"{p['never']} never within {p['timeout']:g} s, load {p['load']}",
            )
        )
        w = p["wait"]
        rows.append(
            (
                "push --wait",
                f"exit {w['exit']} in {w['seconds']:.1f} s",
                f"{w['applied_lines']} 'applied' lines; last: {w['last'][:60]}",
            )
        )
    s = r.get("status", {})
    if s:
        rows.append(
            (
                "fleetctl status --json",
                _fmt(s["seconds"], " s"),
                f"exit {s['exit']}, {s['rows']} rows, load {s['load']}",
            )
        )
    b = r.get("restart", {})
    if b:
        value = _fmt(b["seconds"], " s") if b["all_back"] else f"never ({b['timeout']:g} s)"
        rows.append(
            (
                "all back after kill -9 + restart",
                value,
                f"{b['back']}/{r['n']} back, {b['accepted_per_agent']:.2f} conn/agent, "
                f"load {b['load']}",
            )
        )
    return rows


def print_report(results: dict[str, Any]) -> None:
    rows = table(results)
    width = max((len(m) for m, _, _ in rows), default=10)
    vwidth = max((len(v) for _, v, _ in rows), default=10)
    print(f"fan-out to {results['n']} agents ({results['workers']} worker processes)")
    for measure, value, note in rows:
        print(f"  {measure:<{width}}  {value:>{vwidth}}  {note}")
    print(json.dumps(_nan_to_none(results), default=str, separators=(",", ":")))


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def environment() -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def sysctl(name: str) -> str:
        with contextlib.suppress(OSError):
            return Path("/proc/sys/" + name.replace(".", "/")).read_text().strip()
        return "?"

    return {
        "nofile_soft": soft,
        "nofile_hard": hard,
        "rmem_max": sysctl("net.core.rmem_max"),
        "udp_mem": sysctl("net.ipv4.udp_mem"),
        "cores": os.cpu_count(),
        "load_start": load(),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fanout",
        description="Fan-out to N real agents on one `fleet coordinator`: herd, idle CPU and "
        "RSS, push latency, status, restart. Prints a table, then one JSON line.",
    )
    parser.add_argument("-n", type=int, required=True, help="number of agents")
    parser.add_argument(
        "-p",
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="agent worker processes (default: the core count)",
    )
    parser.add_argument(
        "--ramp",
        type=float,
        metavar="SECONDS",
        default=0.0,
        help="spread the agents' first dial over SECONDS (default 0: all at once)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        metavar="SECONDS",
        default=120.0,
        help="seconds to wait for all agents to be welcomed (default 120)",
    )
    parser.add_argument(
        "--idle",
        type=float,
        metavar="SECONDS",
        default=15.0,
        help="length of the idle CPU window in seconds (default 15)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        metavar="SECONDS",
        default=3.0,
        help="seconds to wait before measuring idle (default 3)",
    )
    parser.add_argument(
        "--push-timeout",
        type=float,
        metavar="SECONDS",
        default=30.0,
        help="seconds after acceptance an agent may take to verify; also "
        "push --wait's --timeout (default 30)",
    )
    parser.add_argument(
        "--restart-timeout",
        type=float,
        metavar="SECONDS",
        default=120.0,
        help="seconds to wait for all agents after kill -9 (default 120)",
    )
    parser.add_argument("--no-restart", action="store_true", help="skip the kill -9 phase")
    parser.add_argument(
        "--enroll-sample",
        metavar="DEVICES",
        type=int,
        default=50,
        help="devices enrolled one `fleetctl devices add` at a time when "
        "there is no `devices add --from` (default 50)",
    )
    parser.add_argument(
        "--enroll-timeout",
        type=float,
        metavar="SECONDS",
        default=600.0,
        help="seconds allowed for `devices add --from` (default 600)",
    )
    parser.add_argument(
        "--admin-timeout",
        type=float,
        metavar="SECONDS",
        default=60.0,
        help="fleetctl --timeout for each reply (default 60)",
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        metavar="SECONDS",
        default=120.0,
        help="seconds for the coordinator and the workers to start (default 120)",
    )
    parser.add_argument(
        "--coordinator-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra `fleet coordinator` argument, repeatable "
        "(e.g. --coordinator-arg=--max-connections=12000)",
    )
    parser.add_argument(
        "--work-dir",
        metavar="DIR",
        type=Path,
        default=None,
        help="where keys, state and logs go (default: a new directory "
        "under /dev/shm, else the temp dir)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="run the coordinator under cProfile, written to FILE.RUN when a run ends by "
        "SIGTERM (not the run killed by kill -9: use --no-restart to profile the herd)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.n < 1 or args.workers < 1:
        parser.error("-n and -p must be at least 1")
    return args


async def _main(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    bench = Bench(args, root)
    bench.results["env"] = environment()
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    try:
        await bench.run()
    except BenchError as exc:
        bench.results["error"] = str(exc)
    finally:
        await bench.close()
    return bench.results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    share = math.ceil(args.n / args.workers)
    if share + 256 > hard:
        sys.exit(
            f"{share} agents per worker need about {share + 256} file descriptors; the "
            f"hard RLIMIT_NOFILE is {hard}: raise it (ulimit -Hn) or use more -p"
        )
    base = args.work_dir
    shm = Path("/dev/shm")  # noqa: S108 - mkdtemp makes a fresh 0700 directory in it
    if base is None and shm.is_dir():
        base = shm
    root = Path(tempfile.mkdtemp(prefix="fleet-fanout-", dir=base))
    try:
        results = asyncio.run(_main(args, root))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM
        print("interrupted; every process the bench started was stopped", file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if args.keep:
        results["work_dir"] = str(root)
    print_report(results)
    if "error" in results:
        print(f"error: {results['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
