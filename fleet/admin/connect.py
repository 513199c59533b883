"""Opening an AdminClient over the mesh: an Endpoint with the admin's key, one connection.

The admin's endpoint accepts nothing (no ALPNs of its own) and binds any free UDP port; it
reaches the coordinator at its address hints and/or through a relay, and TLS proves the
coordinator's node id before any request is sent.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fleet.admin.client import AdminClient
from fleet.admin.errors import CoordinatorUnreachable
from fleet.admin.settings import Settings
from fleet.identity import Identity
from fleet.mesh import ConnectError, Endpoint, MeshConfig, MeshError
from fleet.protocol.alpn import ADMIN
from fleet.relay.client import relay_client_factory


@contextlib.asynccontextmanager
async def open_admin_client(
    identity: Identity, settings: Settings, *, config: MeshConfig | None = None
) -> AsyncIterator[AdminClient]:
    peer = settings.coordinator
    async with Endpoint(
        identity,
        bind=("0.0.0.0", 0),  # noqa: S104 - replies may come from any of the coordinator's paths
        alpns=[],
        relay_urls=settings.relays,
        config=config,
        relay_factory=relay_client_factory,
    ) as endpoint:
        try:
            connection = await endpoint.connect(
                peer.node_id,
                ADMIN,
                addrs=peer.addrs,
                relay_url=settings.relays[0] if settings.relays else None,
                timeout=settings.timeout,
            )
        except (ConnectError, TimeoutError, OSError) as exc:
            where = ", ".join(f"{h}:{p}" for h, p in peer.addrs) or "no address"
            via = f" or relay {settings.relays[0]}" if settings.relays else ""
            raise CoordinatorUnreachable(
                f"cannot reach coordinator {peer.node_id.short()} at {where}{via} "
                f"within {settings.timeout:g} s: {exc or type(exc).__name__}"
            ) from exc
        try:
            yield AdminClient(
                identity,
                peer.node_id,
                connection,
                timeout=settings.timeout,
                transport_errors=(MeshError,),
            )
        finally:
            await connection.close()
