"""`fleet agent` as a daemon: the mesh endpoint, the worker and the coordinator session as
sibling tasks, and an orderly shutdown that never interrupts an activation."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from fleet.agent.agent import Agent
from fleet.agent.dial import MeshDialer
from fleet.agent.session import CoordinatorSession, SessionConfig
from fleet.agent.state import StateFile
from fleet.agent.updater import ApplyConfig
from fleet.daemon import run_until_signal
from fleet.identity import Identity, NodeId
from fleet.log import get_logger
from fleet.mesh import Endpoint
from fleet.mesh.peer_addr import PeerAddr
from fleet.mesh.ping import PING_ALPN, serve_ping
from fleet.netaddr import format_host_port
from fleet.relay.client import relay_client_factory
from fleet.wire import SignedEnvelope

log = get_logger("fleet.agent")


@dataclass(frozen=True)
class AgentSettings:
    identity: Identity
    coordinator: PeerAddr
    relays: tuple[str, ...]
    state_dir: Path
    trust_roots: tuple[NodeId, ...]
    apply: ApplyConfig
    listen: tuple[str, int]
    tags: tuple[str, ...] = ()
    session: SessionConfig = field(default_factory=SessionConfig)  # timeouts, reconnect spread
    enroll_token: SignedEnvelope | None = None  # presented in every Hello (ignored once known)


async def run_agent(settings: AgentSettings) -> None:
    """Run until SIGTERM/SIGINT; then finish an activation in progress and stop."""
    stop = asyncio.Event()
    await run_until_signal(_run(settings, stop), "agent", stop=stop)


async def _run(settings: AgentSettings, stop: asyncio.Event) -> None:
    agent = Agent(
        settings.identity.node_id,
        settings.trust_roots,
        settings.apply,
        StateFile(settings.state_dir),
        tags=settings.tags,
        coordinator=settings.coordinator.node_id,
        enroll_token=settings.enroll_token,
    )
    async with Endpoint(
        settings.identity,
        bind=settings.listen,
        alpns=[PING_ALPN],
        relay_urls=settings.relays,
        relay_factory=relay_client_factory,
    ) as endpoint:
        host, port = endpoint.bound_address
        log.info(
            "agent_started",
            node=str(settings.identity.node_id),
            listen=format_host_port(host, port),
            coordinator=str(settings.coordinator.node_id),
            state=agent.updater.status.state.value,
            last_sequence=agent.updater.procedure.applied_sequence,
            profile=str(settings.apply.profile),
            trust_roots=[r.short() for r in settings.trust_roots],
            tags=list(settings.tags),
        )
        session = CoordinatorSession(
            agent, MeshDialer(endpoint, settings.coordinator), settings.session
        )
        async with asyncio.TaskGroup() as tasks:
            work = tasks.create_task(agent.run(), name="agent-work")
            link = tasks.create_task(session.run(), name="agent-session")
            pings = tasks.create_task(serve_ping(endpoint), name="agent-ping")
            await stop.wait()
            await agent.finish_activation()
            link.cancel()
            pings.cancel()
            work.cancel()
    log.info("agent_stopped")
