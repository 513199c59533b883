"""The relay's STUN responder: answers Binding requests over UDP with the sender's address.

This is how a node learns its reflexive (public) address without any third-party server: it
asks its relay, from its mesh socket. Stateless; a response (40 bytes) is at most 1.5 times
the request that triggered it, so the responder is a poor amplifier. Anything that is not a
well-formed Binding request is counted and dropped, never answered.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import cast

from fleet.log import get_logger
from fleet.relay.metrics import RelayMetrics
from fleet.stun import BindingRequest, StunError, binding_response, decode

log = get_logger("fleet.relay.stun")


class StunResponder(asyncio.DatagramProtocol):
    def __init__(self, metrics: RelayMetrics) -> None:
        self.metrics = metrics
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            message = decode(data)
        except StunError:
            self.metrics.stun_rejected += 1
            return
        if not isinstance(message, BindingRequest) or self.transport is None:
            self.metrics.stun_rejected += 1
            return
        host, port = str(addr[0]), int(addr[1])
        ip = ipaddress.ip_address(host.partition("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        self.metrics.stun_requests += 1
        self.transport.sendto(binding_response(message.tx_id, (str(ip), port)), addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("relay_stun_error", error=str(exc))


async def start_stun_responder(
    host: str, port: int, metrics: RelayMetrics
) -> tuple[asyncio.DatagramTransport, tuple[str, int]]:
    """Listen for STUN on UDP HOST:PORT; returns the transport and the bound address."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: StunResponder(metrics), local_addr=(host, port)
    )
    bound = transport.get_extra_info("sockname")
    return transport, (str(bound[0]), int(bound[1]))
