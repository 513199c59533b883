"""Many agents in one process, started at once: a herd for the admission tests.

    python -m tests.integration.herd_agents --coordinator NODEID@HOST:PORT --count N --out FILE

Each agent is the real agent-side connection code: its own key, its own mesh Endpoint (UDP
socket, QUIC pinned to the coordinator's node id), a MeshDialer and a CoordinatorSession with
its Hello/Welcome, Busy, backoff and reconnect logic. Only the update procedure is left out
(`HerdAgent` says Hello as an idle device and ignores deliveries): admission is about
connecting, not about Nix. The process writes a JSON summary to FILE every 0.2 s (atomically
replaced) and runs until SIGTERM, so the connections stay up while a test looks at them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from pathlib import Path

from fleet.agent.dial import MeshDialer
from fleet.agent.outbox import Outbox
from fleet.agent.session import CoordinatorSession, SessionConfig
from fleet.identity import Identity
from fleet.mesh import Endpoint
from fleet.mesh.peer_addr import PeerAddr
from fleet.protocol.messages import AgentState, Hello, StatusReport, SystemState
from fleet.wire import Message

IDLE = SystemState(store_path=None, generation=None)


class HerdAgent:
    """The AgentSide of an idle device that never gets an update."""

    def __init__(self) -> None:
        self.outbox = Outbox(self._status(), self._hello)

    @staticmethod
    def _status() -> StatusReport:
        return StatusReport(
            state=AgentState.IDLE, since=0.0, sequence=None, desired=None, current=IDLE,
            progress=None, error=None, exit_code=None, log_tail=None,
        )  # fmt: skip

    @staticmethod
    def _hello() -> Hello:
        return Hello(
            agent_version="herd", current=IDLE, last_sequence=0, state=AgentState.IDLE,
            state_since=0.0, tags=("herd",),
        )  # fmt: skip

    def receive(self, message: Message) -> list[Message]:
        return []


async def run_herd(coordinator: PeerAddr, count: int, out: Path, config: SessionConfig) -> None:
    started = time.monotonic()
    sessions: list[CoordinatorSession] = []
    welcomed_at: dict[int, float] = {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def summary() -> dict[str, object]:
        for index, session in enumerate(sessions):
            if session.sessions and index not in welcomed_at:
                welcomed_at[index] = time.monotonic() - started
        return {
            "agents": count,
            "welcomed": len(welcomed_at),
            "connected_now": sum(s.connected.is_set() for s in sessions),
            "dials": sum(s.dials for s in sessions),
            "busy_answers": sum(s.busy_answers for s in sessions),
            "sessions": sum(s.sessions for s in sessions),
            "all_welcomed_after": max(welcomed_at.values()) if len(welcomed_at) == count else None,
        }

    async def report() -> None:
        while True:
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(summary()))
            os.replace(tmp, out)
            await asyncio.sleep(0.2)

    async def one(identity: Identity, ready: asyncio.Barrier) -> None:
        async with Endpoint(identity, bind=("127.0.0.1", 0)) as endpoint:
            session = CoordinatorSession(HerdAgent(), MeshDialer(endpoint, coordinator), config)
            sessions.append(session)
            await ready.wait()  # every endpoint is up: now they all dial at once
            await session.run()

    identities = [Identity.generate() for _ in range(count)]
    ready = asyncio.Barrier(count)
    async with asyncio.TaskGroup() as tasks:
        herd = [tasks.create_task(one(identity, ready)) for identity in identities]
        reporter = tasks.create_task(report())
        await stop.wait()
        for task in (*herd, reporter):
            task.cancel()
    out.write_text(json.dumps(summary()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--welcome-timeout", type=float, default=SessionConfig.welcome_timeout)
    args = parser.parse_args()
    config = SessionConfig(welcome_timeout=args.welcome_timeout)
    asyncio.run(run_herd(PeerAddr.parse(args.coordinator), args.count, args.out, config))


if __name__ == "__main__":
    main()
