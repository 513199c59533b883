"""An in-memory relay for mesh tests: forwards packets between clients by node id."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fleet.identity import Identity, NodeId


class FakeRelayHub:
    """One relay server: every client registered under a node id; counts forwarded packets."""

    def __init__(self) -> None:
        self.clients: dict[NodeId, FakeRelayClient] = {}
        self.forwarded = 0
        self.forwarded_by_src: dict[NodeId, int] = {}
        self.up = True  # set False to drop everything

    def factory(
        self,
        url: str,
        identity: Identity,
        on_packet: Callable[[NodeId, bytes], None],
        on_peer_gone: Callable[[NodeId], None],
    ) -> FakeRelayClient:
        client = FakeRelayClient(self, url, identity.node_id, on_packet)
        self.clients[identity.node_id] = client
        return client

    def deliver(self, src: NodeId, dst: NodeId, data: bytes) -> bool:
        target = self.clients.get(dst)
        if not self.up or target is None or not target.connected:
            return False
        self.forwarded += 1
        self.forwarded_by_src[src] = self.forwarded_by_src.get(src, 0) + 1
        asyncio.get_running_loop().call_soon(target.on_packet, src, bytes(data))
        return True


class FakeRelayClient:
    def __init__(
        self,
        hub: FakeRelayHub,
        url: str,
        node: NodeId,
        on_packet: Callable[[NodeId, bytes], None],
    ) -> None:
        self.hub, self.url, self.node, self.on_packet = hub, url, node, on_packet
        self._connected = False
        self._up = asyncio.Event()

    async def wait_connected(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await self._up.wait()

    @property
    def connected(self) -> bool:
        return self._connected

    def send(self, dst: NodeId, data: bytes) -> bool:
        return self._connected and self.hub.deliver(self.node, dst, data)

    async def run(self) -> None:
        self._connected = True
        self._up.set()
        try:
            await asyncio.Event().wait()
        finally:
            self._connected = False
            self._up.clear()
