"""What the mesh needs from a relay client (fleet.relay.client.RelayClient satisfies it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from fleet.identity import Identity, NodeId


class RelayTransport(Protocol):
    """Forwards opaque packets to a node id through a relay server."""

    def send(self, dst: NodeId, data: bytes) -> bool:
        """Queue a packet; False if it was dropped (not connected, queue full)."""
        ...

    @property
    def connected(self) -> bool: ...


class RelayRunner(RelayTransport, Protocol):
    async def run(self) -> None:
        """Connect and stay connected (reconnecting) until cancelled."""
        ...

    async def wait_connected(self, timeout: float) -> None:
        """Return once connected; raise TimeoutError after `timeout` seconds."""
        ...


RelayFactory = Callable[
    [str, Identity, Callable[[NodeId, bytes], None], Callable[[NodeId], None]], RelayRunner
]
