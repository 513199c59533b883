"""The mesh UDP socket on loopback: batched sends with segmentation offload (GSO) and
coalesced receives (GRO) must deliver exactly the datagrams that were sent."""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

import pytest

from fleet.mesh.disco import Addr
from fleet.mesh.udp import UdpSocket

LOOPBACK = ("127.0.0.1", 0)


def _datagrams() -> list[bytes]:
    # Runs of full-size datagrams, a shorter one closing a run, a lone big one, tiny ones,
    # and more than one sendmsg can carry (64 segments).
    sizes = [1200] * 70 + [700, 1200, 1200, 1452, 60, 60, 1200, 5]
    return [
        bytes([i % 251]) * 4 + i.to_bytes(4, "big") + b"\xa5" * (n - 8)
        for i, n in enumerate(sizes)
        if n >= 8
    ] + [b"tiny!"]


class _Collector:
    def __init__(self, expected: int) -> None:
        self.got: list[tuple[bytes, Addr]] = []
        self.expected = expected
        self.done = asyncio.Event()

    def __call__(self, batch: list[tuple[bytes, Addr]]) -> None:
        self.got.extend(batch)
        if len(self.got) >= self.expected:
            self.done.set()


async def _roundtrip(sender: UdpSocket, receiver: UdpSocket, datagrams: list[bytes]) -> list[bytes]:
    collector = _Collector(len(datagrams))
    source = sender.address
    receiver.start(collector, 256)
    try:
        sender.send_many(datagrams, ("127.0.0.1", receiver.address[1]))
        async with asyncio.timeout(5):
            await collector.done.wait()
        await asyncio.sleep(0)  # nothing more may arrive than was sent
    finally:
        receiver.close()
        sender.close()
    assert {addr for _, addr in collector.got} == {source}
    return [data for data, _ in collector.got]


@pytest.mark.parametrize(
    ("send_offload", "recv_offload"), [(True, True), (True, False), (False, True)]
)
async def test_send_many_delivers_each_datagram_intact_and_in_order(
    send_offload: bool, recv_offload: bool
) -> None:
    sender = UdpSocket(LOOPBACK, offload=send_offload)
    receiver = UdpSocket(LOOPBACK, offload=recv_offload)
    datagrams = _datagrams()
    got = await _roundtrip(sender, receiver, datagrams)
    assert got == datagrams
    assert sender.stats.sent == len(datagrams)
    assert receiver.stats.received == len(datagrams)
    if send_offload:
        assert sender.stats.gso_sends >= 2  # the long run took two calls, not 70
    if send_offload and recv_offload:
        assert receiver.stats.gro_buffers >= 1


async def test_send_many_falls_back_when_the_kernel_refuses_offload(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sender = UdpSocket(LOOPBACK)
    receiver = UdpSocket(LOOPBACK)
    offload_at_start = sender.gso
    assert offload_at_start

    class NoGso:
        def __init__(self, real: socket.socket) -> None:
            self.real = real

        def sendmsg(self, *args: Any) -> int:
            raise OSError(errno.EIO, "no offload on this device")

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

    monkeypatch.setattr(sender, "_sock", NoGso(sender._sock))
    datagrams = _datagrams()
    got = await _roundtrip(sender, receiver, datagrams)
    assert got == datagrams
    assert not sender.gso
    assert sender.stats.gso_sends == 0


async def test_send_many_respects_the_blackhole() -> None:
    sender = UdpSocket(LOOPBACK)
    receiver = UdpSocket(LOOPBACK)
    target = ("127.0.0.1", receiver.address[1])
    sender.blackhole.add(target)
    sender.send_many([b"x" * 1200] * 5, target)
    assert sender.stats.dropped_by_blackhole == 5
    assert sender.stats.sent == 0
    sender.close()
    receiver.close()
