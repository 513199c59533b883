"""Mesh endpoint: QUIC handshake latency and single-connection throughput on loopback.

Run: python -m bench.mesh [--mib 64] [--handshakes 40] [--datagram 1200] [--no-relay]
                          [--profile DIR]
The server endpoint runs in its own process (as on a real pair of machines; this host has 2
cores); the relay row starts a real `fleet relay` process (TLS) and blackholes the direct
path. Prints a table, then one JSON line. Not a timed test. With --profile, both ends run
under cProfile and write DIR/<case>-{sender,receiver}.prof (read with `python -m pstats`).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import multiprocessing as mp
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

from fleet.identity import Identity
from fleet.mesh import Connection, Endpoint, MeshConfig
from fleet.relay.client import relay_client_factory
from harness.relay_process import start_relay

ALPN = "fleet/bench/1"
CHUNK = 1 << 20


def _quiet() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


async def _serve_conn(conn: Connection) -> None:
    try:
        while True:
            reader, writer = await conn.accept_bi()
            cpu = time.process_time_ns()
            total = 0
            while chunk := await reader.read(1 << 20):
                total += len(chunk)
            writer.write(total.to_bytes(8, "big"))
            writer.write((time.process_time_ns() - cpu).to_bytes(8, "big"))
            writer.write_eof()
    except Exception:  # noqa: S110 - the client closed the connection: done with it
        pass


def _server(
    seed: bytes, config: MeshConfig, relay: str | None, ready: Any, profile: str | None
) -> None:
    _quiet()

    async def main() -> None:
        kwargs: dict[str, Any] = {}
        if relay is not None:
            kwargs.update(relay_urls=[relay], relay_factory=relay_client_factory)
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

    if profile is None:
        asyncio.run(main())
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    profiler = cProfile.Profile()
    try:
        profiler.runcall(asyncio.run, main())
    finally:
        profiler.dump_stats(profile)


async def _measure(
    server_id: Any, addr: Any, config: MeshConfig, relay: str | None, mib: int, rounds: int
) -> dict[str, float]:
    kwargs: dict[str, Any] = {}
    addrs = [addr]
    if relay is not None:
        kwargs.update(relay_urls=[relay], relay_factory=relay_client_factory)
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
        cpu = time.process_time()
        for _ in range(mib):
            writer.write(blob)
            await writer.drain()
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 120)
        elapsed = time.perf_counter() - start
        sender_cpu = time.process_time() - cpu
        got = int.from_bytes(answer[:8], "big")
        receiver_cpu = int.from_bytes(answer[8:16], "big") / 1e9
        assert got == mib * CHUNK, got
        megabytes = mib * CHUNK / 1e6
        path = conn.path
        await conn.close()
        return {
            "handshake_median_ms": statistics.median(latencies) * 1000,
            "handshake_p95_ms": latencies[int(len(latencies) * 0.95) - 1] * 1000,
            "throughput_MBps": megabytes / elapsed,
            # CPU per megabyte: the per-packet cost, much less sensitive to the machine's load
            "sender_cpu_ms_per_MB": sender_cpu * 1000 / megabytes,
            "receiver_cpu_ms_per_MB": receiver_cpu * 1000 / megabytes,
            "path_relay": 1.0 if path == "relay" else 0.0,
        }


def run(
    label: str,
    config: MeshConfig,
    relay: str | None,
    mib: int,
    rounds: int,
    profile: Path | None = None,
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    server_identity = Identity.generate()
    receiver_prof = str(profile / f"{label}-receiver.prof") if profile else None
    proc = ctx.Process(
        target=_server,
        args=(server_identity.seed, config, relay, ready, receiver_prof),
        daemon=True,
    )
    proc.start()
    try:
        addr = ready.get(timeout=30)
        measure = _measure(server_identity.node_id, addr, config, relay, mib, rounds)
        if profile is None:
            result = asyncio.run(measure)
        else:
            profiler = cProfile.Profile()
            result = profiler.runcall(asyncio.run, measure)
            profiler.dump_stats(str(profile / f"{label}-sender.prof"))
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
    parser.add_argument("--profile", type=Path, help="cProfile both ends into this directory")
    parser.add_argument(
        "--retry",
        choices=["pressure", "always"],
        default="pressure",
        help="QUIC Retry only under pressure (the default setting) or on every connection",
    )
    args = parser.parse_args()
    _quiet()
    retry = {"retry_threshold": 0} if args.retry == "always" else {}
    config = MeshConfig(max_datagram_size=args.datagram, **retry)  # type: ignore[arg-type]
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    rows = [run("direct", config, None, args.mib, args.handshakes, args.profile)]
    if not args.no_relay:
        with tempfile.TemporaryDirectory() as tmp:
            relay = start_relay(Path(tmp), metrics=False)  # a real `fleet relay` process (TLS)
            try:
                rows.append(
                    run("relay", config, str(relay.url), args.mib, args.handshakes, args.profile)
                )
            finally:
                relay.stop()
    print(
        f"{'case':8} {'hs median ms':>12} {'hs p95 ms':>10} {'MB/s':>8}"
        f" {'send cpu ms/MB':>15} {'recv cpu ms/MB':>15}"
    )
    for row in rows:
        print(
            f"{row['case']:8} {row['handshake_median_ms']:12.1f} "
            f"{row['handshake_p95_ms']:10.1f} {row['throughput_MBps']:8.1f}"
            f" {row['sender_cpu_ms_per_MB']:15.1f} {row['receiver_cpu_ms_per_MB']:15.1f}"
        )
    print(
        json.dumps({"bench": "mesh", "datagram": args.datagram, "retry": args.retry, "rows": rows})
    )


if __name__ == "__main__":
    main()
