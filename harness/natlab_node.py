"""A small mesh program for the NAT lab, run inside a namespace: `python -m harness.natlab_node`.

    serve    --relay URL [--key PATH]          sink + ping service; prints {"event": "ready"}
    transfer --relay URL --peer NODEID [...]   connect through the relay, report path changes,
                                               time to first byte, then send data (paced until
                                               "stop" on stdin, or SIZE bytes at full speed)
    metrics  HOST:PORT                         print a Prometheus scrape as JSON (stdlib only)

Every output line on stdout is one JSON event with `t` = seconds since the program started
connecting, so tests and bench/nat.py can await events with timeouts instead of sleeping.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import socket
import sys
import time
from typing import Any

SINK_ALPN = "fleet/natlab-sink/1"
CHUNK = 16 * 1024


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _identity(key: str | None) -> Any:
    from fleet.identity import Identity, load_identity

    return load_identity(key) if key else Identity.generate()


async def serve(args: argparse.Namespace) -> None:
    from fleet.mesh import Connection, Endpoint, MeshError
    from fleet.mesh.ping import PING_ALPN, serve_ping
    from fleet.relay.client import relay_client_factory

    async def sink(conn: Connection) -> None:
        try:
            while True:
                reader, writer = await conn.accept_bi(timeout=120)
                writer.write(b"!")  # first byte back at once: time to first byte
                digest, count = hashlib.sha256(), 0
                while chunk := await reader.read(65536):
                    digest.update(chunk)
                    count += len(chunk)
                writer.write(count.to_bytes(8, "big") + digest.digest())
                writer.write_eof()
        except (MeshError, TimeoutError):
            pass

    async with (
        Endpoint(
            _identity(args.key),
            alpns=[SINK_ALPN, PING_ALPN],
            relay_urls=[args.relay],
            relay_factory=relay_client_factory,
        ) as ep,
        asyncio.TaskGroup() as tg,
    ):
        tg.create_task(serve_ping(ep))
        await ep.wait_relays(10)
        emit("ready", node=str(ep.node_id), bound=list(ep.bound_address))
        while True:
            try:
                conn = await ep.accept(SINK_ALPN)
            except MeshError:
                return
            tg.create_task(sink(conn))


async def transfer(args: argparse.Namespace) -> None:
    from fleet.identity import NodeId
    from fleet.mesh import Endpoint, PathChanged
    from fleet.relay.client import relay_client_factory

    start = time.monotonic()

    def t() -> float:
        return round(time.monotonic() - start, 4)

    peer = NodeId.parse(args.peer)
    direct_at: list[float] = []

    def on_path(change: PathChanged) -> None:
        new = change.new
        if change.node != peer or new is None:
            return
        addr = f"{new.addr[0]}:{new.addr[1]}" if new.addr else None
        if new.kind == "direct" and not direct_at:
            direct_at.append(t())
        emit("path", t=t(), path=new.kind, addr=addr, reason=change.reason)

    async with Endpoint(
        _identity(args.key), relay_urls=[args.relay], relay_factory=relay_client_factory
    ) as ep:
        ep.add_path_listener(on_path)
        # Give STUN its round trip first, as a daemon that has been up for a while would.
        with contextlib.suppress(TimeoutError):  # no answer: UDP may be blocked
            async with asyncio.timeout(2):
                while not ep.reflexive_addresses and not args.no_stun_wait:
                    await asyncio.sleep(0.01)
        emit("stun", t=t(), reflexive=sorted(f"{h}:{p}" for h, p in ep.reflexive_addresses))
        start = time.monotonic()
        direct_at.clear()
        conn = await ep.connect(peer, SINK_ALPN, relay_url=args.relay, timeout=10)
        emit("connected", t=t(), path=conn.path)
        reader, writer = await conn.open_bi()
        writer.write(b"x")
        async with asyncio.timeout(10):
            assert await reader.readexactly(1) == b"!"
        emit("first_byte", t=t(), path=conn.path)
        if args.settle:
            with contextlib.suppress(TimeoutError):
                await conn.wait_path("direct", timeout=args.settle)
        digest, sent = hashlib.sha256(b"x"), 1
        block = bytes(range(256)) * (CHUNK // 256)
        stop = asyncio.Event()
        if args.rate:
            loop = asyncio.get_running_loop()
            stdin = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

            async def wait_stop() -> None:
                while (line := await stdin.readline()) and line.strip() != b"stop":
                    pass
                stop.set()

            stopper = asyncio.create_task(wait_stop())
        began = time.monotonic()
        last_report = began
        while sent < args.size and not stop.is_set():
            writer.write(block)
            digest.update(block)
            sent += len(block)
            await writer.drain()
            now = time.monotonic()
            if args.rate:
                await asyncio.sleep(max(0.0, began + sent / args.rate - now))
            if now - last_report >= 0.5:
                last_report = now
                emit("progress", t=t(), bytes=sent, path=conn.path)
        writer.write_eof()
        async with asyncio.timeout(60):
            answer = await reader.readexactly(40)
        seconds = time.monotonic() - began
        if args.rate:
            stopper.cancel()
        ok = int.from_bytes(answer[:8], "big") == sent and answer[8:] == digest.digest()
        emit(
            "done",
            t=t(),
            ok=ok,
            bytes=sent,
            seconds=round(seconds, 3),
            throughput=round(sent / seconds) if seconds > 0 else None,
            path=conn.path,
            direct_at=direct_at[0] if direct_at else None,
            relay_packets_sent=ep.relay_packets_sent,
        )
        await conn.close()


def metrics(address: str) -> None:
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: relay\r\n\r\n")
        body = b""
        while chunk := sock.recv(65536):
            body += chunk
    values = {}
    for line in body.decode().partition("\r\n\r\n")[2].splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    print(json.dumps(values))


def main() -> None:
    parser = argparse.ArgumentParser(prog="natlab_node")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--relay", required=True)
    s.add_argument("--key")
    c = sub.add_parser("transfer")
    c.add_argument("--relay", required=True)
    c.add_argument("--peer", required=True)
    c.add_argument("--key")
    c.add_argument("--size", type=int, default=1 << 60)
    c.add_argument("--rate", type=float, default=0.0, help="bytes/s; stop on 'stop' in stdin")
    c.add_argument("--settle", type=float, default=0.0, help="wait up to S s for direct")
    c.add_argument("--no-stun-wait", action="store_true")
    m = sub.add_parser("metrics")
    m.add_argument("address")
    args = parser.parse_args()
    if args.command == "metrics":
        metrics(args.address)
        return
    from fleet.log import setup_logging

    setup_logging("info", json=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args) if args.command == "serve" else transfer(args))


if __name__ == "__main__":
    main()
