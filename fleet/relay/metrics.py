"""Relay counters and a tiny HTTP endpoint serving them in Prometheus text format.

The counters are what operators (and the NAT lab tests) read to see that traffic really
crossed a relay and why clients were cut off.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from fleet.log import get_logger

log = get_logger("fleet.relay.metrics")

_REQUEST_TIMEOUT = 5.0
_MAX_REQUEST = 8192


class RelayMetrics:
    """Plain counters, updated on the event loop only (no locks needed)."""

    def __init__(self) -> None:
        self.connections = 0  # open TCP connections, logged in or not
        self.clients = 0  # logged-in clients
        self.connections_accepted = 0
        self.logins = 0
        self.packets_forwarded = 0
        self.bytes_forwarded = 0
        self.drops: Counter[str] = Counter()
        self.disconnects: Counter[str] = Counter()
        self.stun_requests = 0  # Binding requests answered with the sender's address
        self.stun_errors = 0  # Binding requests answered with error 420 (unknown attributes)
        self.stun_rejected = 0  # datagrams on the STUN port dropped, never answered

    def render(self) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, value: int) -> None:
            lines.extend((f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"))

        def labelled(name: str, help_text: str, counts: Counter[str]) -> None:
            lines.extend((f"# HELP {name} {help_text}", f"# TYPE {name} counter"))
            for reason, value in sorted(counts.items()):
                lines.append(f'{name}{{reason="{reason}"}} {value}')

        metric("fleet_relay_connections", "gauge", "Open TCP connections.", self.connections)
        metric("fleet_relay_clients", "gauge", "Authenticated clients.", self.clients)
        metric(
            "fleet_relay_connections_accepted_total",
            "counter",
            "TCP connections accepted.",
            self.connections_accepted,
        )
        metric("fleet_relay_logins_total", "counter", "Successful logins.", self.logins)
        metric(
            "fleet_relay_packets_forwarded_total",
            "counter",
            "Packets delivered to a destination client.",
            self.packets_forwarded,
        )
        metric(
            "fleet_relay_bytes_forwarded_total",
            "counter",
            "Packet bytes (without framing) delivered to a destination client.",
            self.bytes_forwarded,
        )
        metric(
            "fleet_relay_stun_requests_total",
            "counter",
            "STUN Binding requests answered with the sender's address (RFC 5389 and 3489).",
            self.stun_requests,
        )
        metric(
            "fleet_relay_stun_errors_total",
            "counter",
            "STUN Binding requests answered with error 420 (unknown comprehension-required "
            "attributes, such as RFC 3489 CHANGE-REQUEST).",
            self.stun_errors,
        )
        metric(
            "fleet_relay_stun_rejected_total",
            "counter",
            "Datagrams on the STUN port dropped unanswered (malformed, not a Binding "
            "request, or an erroring transaction repeated too often).",
            self.stun_rejected,
        )
        labelled("fleet_relay_packets_dropped_total", "Packets dropped, by reason.", self.drops)
        labelled(
            "fleet_relay_disconnects_total", "Connections closed, by reason.", self.disconnects
        )
        return "\n".join(lines) + "\n"


async def start_metrics_server(host: str, port: int, render: Callable[[], str]) -> asyncio.Server:
    """Listen for `GET /metrics`; anything else gets 404 or 400. One request per connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) != 3:
                status, body = "400 Bad Request", "bad request\n"
            elif parts[0] == b"GET" and parts[1] in (b"/metrics", b"/metrics/"):
                status, body = "200 OK", render()
            else:
                status, body = "404 Not Found", "try GET /metrics\n"
            data = body.encode("utf-8")
            writer.write(
                f"HTTP/1.1 {status}\r\n"
                "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode("ascii")
                + data
            )
            async with asyncio.timeout(_REQUEST_TIMEOUT):
                await writer.drain()
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=_MAX_REQUEST)
