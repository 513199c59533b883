"""A worker process of bench.fanout: many real agents in one process, timestamps on stdout.

Usage (by bench.fanout, not by hand): python -m bench.fanout_agents SPEC.json

Each agent is what `fleet agent` runs (fleet/agent/daemon.py): its own mesh Endpoint (one UDP
socket), the real `Agent` (verify_announcement, Updater, state file) and the real
`CoordinatorSession` over a `MeshDialer`. Only the Nix work is skipped, and without a stand-in
class: every agent's system profile already points at the store path the bench pushes, so
the real Updater ends in `applied` through its "already running" branch (no Nix process).

Protocol with the driver, JSON lines. stdin: {"cmd": "start", "at": EPOCH, "ramp": SECONDS,
"total": N} (agent with global index i dials at `at + ramp * i / total`), then {"cmd":
"stop"} or end of file (the driver is gone): the worker stops. stdout: {"ev": "ready"} once
every endpoint is bound; {"ev": "welcomed", "i": I, "n": SESSIONS, "t": EPOCH} for each
Welcome (seen by polling every POLL_FAST s while an agent of this worker is not connected);
{"ev": "verified", "i": I, "seq": SEQ, "t": EPOCH} the moment an announcement passed
verification (Agent.offer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.agent.agent import Agent
from fleet.agent.dial import MeshDialer
from fleet.agent.session import CoordinatorSession
from fleet.agent.state import StateFile
from fleet.agent.updater import ApplyConfig
from fleet.agent.verify import Accepted
from fleet.identity import Identity, NodeId
from fleet.log import setup_logging
from fleet.mesh import Endpoint
from fleet.mesh.peer_addr import PeerAddr
from fleet.nix import NixStore

POLL_FAST = 0.05  # while some agent is not connected: welcome times are this precise
POLL_SLOW = 0.5  # while all are: close to no CPU in the idle window


@dataclass(frozen=True)
class WorkerSpec:
    coordinator: str  # NODEID@HOST:PORT
    trust_root: str
    tags: tuple[str, ...]
    state_root: Path  # one directory per agent below it
    profile: Path  # the system profile every agent reads (already at the pushed path)
    first_index: int  # global index of this worker's first agent
    seeds: tuple[str, ...]  # hex Ed25519 seeds, one per agent

    @classmethod
    def load(cls, path: Path) -> WorkerSpec:
        data = json.loads(path.read_text())
        return cls(
            coordinator=data["coordinator"],
            trust_root=data["trust_root"],
            tags=tuple(data["tags"]),
            state_root=Path(data["state_root"]),
            profile=Path(data["profile"]),
            first_index=int(data["first_index"]),
            seeds=tuple(data["seeds"]),
        )


class Reporter:
    """Buffered JSON lines to the driver; flushed by the poll loop (and on ready)."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def emit(self, **fields: Any) -> None:
        self._lines.append(json.dumps(fields, separators=(",", ":")))

    def flush(self) -> None:
        if self._lines:
            sys.stdout.write("\n".join(self._lines) + "\n")
            sys.stdout.flush()
            self._lines.clear()


class TimedAgent(Agent):
    """The real Agent; records the moment an announcement passed verification."""

    def __init__(self, index: int, reporter: Reporter, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.index = index
        self.reporter = reporter

    def offer(self, accepted: Accepted) -> None:
        self.reporter.emit(
            ev="verified", i=self.index, seq=accepted.announcement.sequence, t=time.time()
        )
        super().offer(accepted)


def raise_nofile_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (one UDP socket per agent); the new soft one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def _commands() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _next_command(reader: asyncio.StreamReader) -> dict[str, Any]:
    """The next command; end of file (the driver went away) reads as stop."""
    line = await reader.readline()
    if not line:
        return {"cmd": "stop"}
    command: dict[str, Any] = json.loads(line)
    return command


async def _run_agent(agent: TimedAgent, session: CoordinatorSession, delay: float) -> None:
    await asyncio.sleep(max(0.0, delay))
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(agent.run())
        tasks.create_task(session.run())


async def _watch(sessions: list[CoordinatorSession], first_index: int, reporter: Reporter) -> None:
    seen = [0] * len(sessions)
    while True:
        now = time.time()
        all_up = True
        for k, session in enumerate(sessions):
            if session.sessions != seen[k]:
                seen[k] = session.sessions
                reporter.emit(ev="welcomed", i=first_index + k, n=session.sessions, t=now)
            all_up = all_up and session.connected.is_set()
        reporter.flush()
        await asyncio.sleep(POLL_SLOW if all_up else POLL_FAST)


async def run_worker(spec: WorkerSpec) -> None:
    reporter = Reporter()
    coordinator = PeerAddr.parse(spec.coordinator)
    trust_root = NodeId.parse(spec.trust_root)
    apply = ApplyConfig(
        store=NixStore(), profile=spec.profile, substituters=(), trusted_public_keys=()
    )
    commands = await _commands()
    async with contextlib.AsyncExitStack() as stack:
        sessions: list[CoordinatorSession] = []
        agents: list[TimedAgent] = []
        for k, seed in enumerate(spec.seeds):
            identity = Identity.from_seed(bytes.fromhex(seed))
            index = spec.first_index + k
            state_dir = spec.state_root / f"agent-{index}"
            state_dir.mkdir(parents=True, exist_ok=True)
            agent = TimedAgent(
                index,
                reporter,
                identity.node_id,
                (trust_root,),
                apply,
                StateFile(state_dir),
                tags=spec.tags,
                coordinator=coordinator.node_id,
            )
            endpoint = await stack.enter_async_context(Endpoint(identity, bind=("127.0.0.1", 0)))
            agents.append(agent)
            sessions.append(CoordinatorSession(agent, MeshDialer(endpoint, coordinator)))
        reporter.emit(ev="ready", agents=len(agents))
        reporter.flush()
        command = await _next_command(commands)
        if command["cmd"] != "start":
            return
        start, ramp, total = float(command["at"]), float(command["ramp"]), int(command["total"])
        async with asyncio.TaskGroup() as tasks:
            running = [
                tasks.create_task(
                    _run_agent(agent, session, start + ramp * agent.index / total - time.time())
                )
                for agent, session in zip(agents, sessions, strict=True)
            ]
            running.append(tasks.create_task(_watch(sessions, spec.first_index, reporter)))
            while (await _next_command(commands))["cmd"] != "stop":
                pass
            for task in running:
                task.cancel()


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bench.fanout_agents SPEC.json (started by bench.fanout)")
    raise_nofile_limit()
    setup_logging("warning", json=True)  # stderr: the driver keeps it in a file
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_worker(WorkerSpec.load(Path(sys.argv[1]))))


if __name__ == "__main__":
    main()
