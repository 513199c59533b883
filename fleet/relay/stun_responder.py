"""The relay's STUN responder: the asyncio adapter around fleet.stun's StunAnswerer.

The answerer decides what to answer (see fleet/stun/answerer.py); this module binds the UDP
port, moves datagrams between it and the answerer, and counts the outcomes in the metrics.
"""

from __future__ import annotations

import asyncio
from typing import cast

from fleet.log import get_logger
from fleet.netaddr import format_host_port
from fleet.relay.metrics import RelayMetrics
from fleet.stun import Addr, ReplyKind, StunAnswerer

log = get_logger("fleet.relay.stun")


class StunResponder(asyncio.DatagramProtocol):
    """asyncio adapter: feeds each datagram to a StunAnswerer and counts the outcome."""

    def __init__(self, metrics: RelayMetrics, answerer: StunAnswerer | None = None) -> None:
        self.metrics = metrics
        self.answerer = answerer or StunAnswerer()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        reply = self.answerer.answer(data, addr)
        if reply is None or self.transport is None:
            self.metrics.stun_rejected += 1
            return
        if reply.kind is ReplyKind.UNKNOWN_ATTRIBUTES:
            self.metrics.stun_errors += 1
        else:
            self.metrics.stun_requests += 1
        self.transport.sendto(reply.data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("relay_stun_error", error=str(exc))


class StunListenError(Exception):
    """The STUN port could not be bound (the message names the address and why)."""

    def __init__(self, address: Addr, reason: str) -> None:
        super().__init__(f"cannot answer STUN on UDP {format_host_port(*address)}: {reason}")
        self.address = address
        self.reason = reason


async def start_stun_responder(
    host: str, port: int, metrics: RelayMetrics
) -> tuple[asyncio.DatagramTransport, tuple[str, int]]:
    """Listen for STUN on UDP HOST:PORT; returns the transport and the bound address."""
    loop = asyncio.get_running_loop()
    try:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: StunResponder(metrics), local_addr=(host, port)
        )
    except OSError as exc:
        raise StunListenError((host, port), exc.strerror or str(exc)) from exc
    bound = transport.get_extra_info("sockname")
    return transport, (str(bound[0]), int(bound[1]))
