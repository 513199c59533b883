"""Running the coordinator: state database, mesh endpoint, server, until cancelled."""

from __future__ import annotations

import asyncio
import os

from fleet.coordinator.admins import KnownAdmins
from fleet.coordinator.database import Database
from fleet.coordinator.hello_gate import HelloGate
from fleet.coordinator.lossy import LossyService, lost_push_answers
from fleet.coordinator.server import CoordinatorServer
from fleet.coordinator.service import CoordinatorService
from fleet.coordinator.settings import CoordinatorSettings
from fleet.identity import Identity
from fleet.log import get_logger
from fleet.mesh import Endpoint
from fleet.mesh.config import MeshConfig
from fleet.mesh.ping import PING_ALPN, serve_ping
from fleet.netaddr import format_host_port
from fleet.protocol import alpn
from fleet.relay.client import relay_client_factory

log = get_logger("fleet.coordinator")


def prepare_state_dir(settings: CoordinatorSettings) -> None:
    """Create the state directory (0700: it holds the audit log and the registry)."""
    settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)


async def run(settings: CoordinatorSettings, identity: Identity) -> None:
    prepare_state_dir(settings)
    db = await Database.open(settings.database)
    try:
        os.chmod(settings.database, 0o600)
        lose = lost_push_answers(os.environ)
        kind = LossyService if lose else CoordinatorService
        service = kind(db, identity.node_id, settings.trust_roots, signer=identity)
        if isinstance(service, LossyService):
            service.lost_answers = lose
        admins = KnownAdmins(settings.trust_roots)
        await admins.load(db)
        async with Endpoint(
            identity,
            bind=settings.listen,
            alpns=[alpn.AGENT, alpn.ADMIN, PING_ALPN],
            relay_urls=settings.relays,
            relay_factory=relay_client_factory,
            config=MeshConfig(max_connections=settings.max_connections),
        ) as endpoint:
            gate = HelloGate()
            endpoint.set_admission(priority=admins.__contains__, busy=lambda: gate.saturated)
            host, port = endpoint.bound_address
            log.info(
                "coordinator_listening",
                node=str(identity.node_id),
                address=format_host_port(host, port),
                addrs=[format_host_port(h, p) for h, p in endpoint.local_addresses],
                relays=[str(r) for r in settings.relays],
                trust_roots=[a.short() for a in settings.trust_roots],
                state=str(settings.database),
                max_connections=settings.max_connections,
                known_admins=len(admins),
            )
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(serve_ping(endpoint), name="ping")
                tasks.create_task(
                    _checkpoints(service, settings.checkpoint_interval), name="checkpoints"
                )
                server = CoordinatorServer(service, gate=gate, admins=admins)
                await server.serve(endpoint)  # runs until cancelled
    finally:
        await db.close()


async def _checkpoints(service: CoordinatorService, interval: float) -> None:
    """Sign the audit head every `interval` seconds when it moved (and once at start)."""
    while True:
        await service.checkpoint()
        await asyncio.sleep(interval)
