"""The Endpoint's lifecycle: what the caller raises inside `async with` reaches it as itself.

On loopback UDP (one socket per endpoint, nothing leaves the host)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from fleet.identity import Identity, NodeId
from fleet.mesh import Endpoint, RelayRunner

ALPN = "fleet/test/1"
LOOPBACK = ("127.0.0.1", 0)


class Mine(Exception):
    """The caller's own error."""


async def test_an_error_raised_in_the_block_is_not_wrapped() -> None:
    with pytest.raises(Mine) as caught:
        async with Endpoint(Identity.generate(), bind=LOOPBACK, alpns=[ALPN]):
            raise Mine("from the caller")
    assert type(caught.value) is Mine
    assert str(caught.value) == "from the caller"


async def _fail_while_connected() -> None:
    async with (
        Endpoint(Identity.generate(), bind=LOOPBACK, alpns=[ALPN]) as server,
        Endpoint(Identity.generate(), bind=LOOPBACK) as client,
    ):
        conn = await client.connect(server.node_id, ALPN, addrs=[server.bound_address], timeout=10)
        accepted = await server.accept(ALPN, timeout=10)
        writer = await conn.open_uni()
        writer.write(b"half a message")
        assert accepted.remote_id == client.node_id
        raise Mine("while connected")


async def test_an_error_raised_while_a_connection_is_open_is_not_wrapped() -> None:
    with pytest.raises(Mine):
        await _fail_while_connected()


async def test_keyboard_interrupt_and_cancellation_pass_through() -> None:
    with pytest.raises(KeyboardInterrupt):
        async with Endpoint(Identity.generate(), bind=LOOPBACK):
            raise KeyboardInterrupt

    async def hold() -> None:
        async with Endpoint(Identity.generate(), bind=LOOPBACK):
            await asyncio.sleep(30)

    task = asyncio.create_task(hold())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class FailingRelay:
    """A relay client whose run() dies: a failure of the endpoint's own background task."""

    connected = False

    def send(self, dst: NodeId, data: bytes) -> bool:
        return False

    async def run(self) -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("relay task died")

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.sleep(timeout)


def _failing_factory(
    url: str,
    identity: Identity,
    on_packet: Callable[[NodeId, bytes], None],
    on_gone: Callable[[NodeId], None],
) -> RelayRunner:
    return FailingRelay()


async def test_a_background_failure_still_ends_the_block_and_is_reported() -> None:
    with pytest.raises(BaseExceptionGroup) as caught:
        async with Endpoint(
            Identity.generate(),
            bind=LOOPBACK,
            relay_urls=["fleet-relay+insecure://test@127.0.0.1:1"],
            relay_factory=_failing_factory,
        ):
            await asyncio.sleep(5)  # cancelled when the relay task fails
    assert [str(e) for e in caught.value.exceptions] == ["relay task died"]
