"""Mesh endpoint: QUIC handshake latency and single-connection throughput on loopback.

Run: python -m bench.mesh [--mib 64] [--handshakes 40] [--datagram 1200] [--no-relay]
The server endpoint runs in its own process (as on a real pair of machines; this host has 2
cores); the relay row starts a real `fleet relay` process (TLS) and blackholes the direct
path. Prints a table, then one JSON line. Not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

from fleet.identity import Identity
from fleet.mesh import Connection, Endpoint, MeshConfig
from tests.integration.relay_process import start_relay

ALPN = "fleet/bench/1"
CHUNK = 1 << 20


def _quiet() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


async def _serve_conn(conn: Connection) -> None:
    try:
        while True:
            reader, writer = await conn.accept_bi()
            total = 0
            while chunk := await reader.read(1 << 20):
                total += len(chunk)
            writer.write(total.to_bytes(8, "big"))
            writer.write_eof()
    except Exception:  # noqa: S110 - the client closed the connection: done with it
        pass


def _server(seed: bytes, config: MeshConfig, relay: str | None, ready: Any) -> None:
    _quiet()

    async def main() -> None:
        kwargs: dict[str, Any] = {}
        if relay is not None:
            kwargs.update(relay_urls=[relay])
        async with (
            Endpoint(
                Identity.from_seed(seed),
                bind=("127.0.0.1", 0),
                alpns=[ALPN],
                config=config,
                **kwargs,
            ) as ep,
            asyncio.TaskGroup() as tg,
        ):
            ready.put(ep.bound_address)
            while True:
                conn = await ep.accept(ALPN)
                tg.create_task(_serve_conn(conn))

    asyncio.run(main())


async def _measure(
    server_id: Any, addr: Any, config: MeshConfig, relay: str | None, mib: int, rounds: int
) -> dict[str, float]:
    kwargs: dict[str, Any] = {}
    addrs = [addr]
    if relay is not None:
        kwargs.update(relay_urls=[relay])
        addrs = []
    async with Endpoint(
        Identity.generate(), bind=("127.0.0.1", 0), alpns=[ALPN], config=config, **kwargs
    ) as ep:
        if relay is not None:  # the direct path must not be found: this row measures the relay
            ep.socket.blackhole.add(addr)
        latencies = []
        for _ in range(rounds + 2):
            start = time.perf_counter()
            conn = await ep.connect(server_id, ALPN, addrs=addrs, relay_url=relay, timeout=10)
            latencies.append(time.perf_counter() - start)
            await conn.close()
        latencies = sorted(latencies[2:])  # the first ones warm up caches and the relay
        conn = await ep.connect(server_id, ALPN, addrs=addrs, relay_url=relay, timeout=10)
        reader, writer = await conn.open_bi()
        blob = b"\xa5" * CHUNK
        start = time.perf_counter()
        for _ in range(mib):
            writer.write(blob)
            await writer.drain()
        writer.write_eof()
        got = int.from_bytes(await asyncio.wait_for(reader.read(), 120), "big")
        elapsed = time.perf_counter() - start
        assert got == mib * CHUNK, got
        path = conn.path
        await conn.close()
        return {
            "handshake_median_ms": statistics.median(latencies) * 1000,
            "handshake_p95_ms": latencies[int(len(latencies) * 0.95) - 1] * 1000,
            "throughput_MBps": mib * CHUNK / elapsed / 1e6,
            "path_relay": 1.0 if path == "relay" else 0.0,
        }


def run(label: str, config: MeshConfig, relay: str | None, mib: int, rounds: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    server_identity = Identity.generate()
    proc = ctx.Process(
        target=_server, args=(server_identity.seed, config, relay, ready), daemon=True
    )
    proc.start()
    try:
        addr = ready.get(timeout=30)
        result = asyncio.run(_measure(server_identity.node_id, addr, config, relay, mib, rounds))
    finally:
        proc.terminate()
        proc.join(5)
    return {"case": label, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--handshakes", type=int, default=40)
    parser.add_argument("--datagram", type=int, default=1200)
    parser.add_argument("--no-relay", action="store_true", help="skip the relay row")
    args = parser.parse_args()
    _quiet()
    config = MeshConfig(max_datagram_size=args.datagram)
    rows = [run("direct", config, None, args.mib, args.handshakes)]
    if not args.no_relay:
        with tempfile.TemporaryDirectory() as tmp:
            relay = start_relay(Path(tmp), metrics=False)  # a real `fleet relay` process (TLS)
            try:
                rows.append(run("relay", config, str(relay.url), args.mib, args.handshakes))
            finally:
                relay.stop()
    print(f"{'case':8} {'hs median ms':>12} {'hs p95 ms':>10} {'MB/s':>8}")
    for row in rows:
        print(
            f"{row['case']:8} {row['handshake_median_ms']:12.1f} "
            f"{row['handshake_p95_ms']:10.1f} {row['throughput_MBps']:8.1f}"
        )
    print(json.dumps({"bench": "mesh", "datagram": args.datagram, "rows": rows}))


if __name__ == "__main__":
    main()
