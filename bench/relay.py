"""Relay forwarding throughput on loopback: sender client -> `fleet relay` process -> receiver.

Usage: python -m bench.relay [--megabytes N] [--size BYTES] [--window PACKETS] [--insecure]

Prints a table and one JSON line. Relay CPU comes from /proc/PID/stat of the relay process,
so it counts only the relay's own work (TLS in and out, parsing, forwarding).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from bench.proc import cpu_seconds
from fleet.identity import Identity, NodeId
from fleet.relay import RelayClient
from harness.relay_process import RelayProcess, start_relay


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(relay: RelayProcess, total: int, size: int, window: int) -> dict[str, float]:
    sender, receiver = Identity.generate(), Identity.generate()
    received = 0
    done = asyncio.Event()
    progress = asyncio.Event()

    def on_packet(src: NodeId, data: bytes) -> None:
        nonlocal received
        received += 1
        progress.set()
        if received == total:
            done.set()

    tx = RelayClient(relay.url, sender, lambda s, d: None)
    rx = RelayClient(relay.url, receiver, on_packet)
    payload = os.urandom(size)
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(tx.run()), tg.create_task(rx.run())]
        await tx.wait_connected(10)
        await rx.wait_connected(10)
        relay_cpu0, own_cpu0 = cpu_seconds(relay.proc.pid), own_cpu_seconds()
        start = time.perf_counter()
        sent = 0
        async with asyncio.timeout(300):
            while sent < total:
                # A window keeps the relay's per-destination buffer from overflowing (no drops),
                # the way QUIC's congestion window would.
                while (
                    sent < total and sent - received < window and tx.send(receiver.node_id, payload)
                ):
                    sent += 1
                progress.clear()
                if sent < total:
                    await progress.wait()
            await done.wait()
        elapsed = time.perf_counter() - start
        relay_cpu = cpu_seconds(relay.proc.pid) - relay_cpu0
        own_cpu = own_cpu_seconds() - own_cpu0
        for task in tasks:
            task.cancel()
    metrics = await relay.metrics()
    dropped = sum(v for k, v in metrics.items() if k.startswith("fleet_relay_packets_dropped"))
    nbytes = total * size
    return {
        "packets": total,
        "packet_size": size,
        "seconds": round(elapsed, 3),
        "mb_per_s": round(nbytes / elapsed / 1e6, 1),
        "packets_per_s": round(total / elapsed),
        "relay_cpu_s": round(relay_cpu, 2),
        "relay_cpu_s_per_gb": round(relay_cpu / (nbytes / 1e9), 2),
        "relay_cpu_share": round(relay_cpu / elapsed, 2),
        "clients_cpu_s_per_gb": round(own_cpu / (nbytes / 1e9), 2),
        "relay_drops": dropped,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=200)
    parser.add_argument("--size", type=int, default=1200)
    parser.add_argument("--window", type=int, default=2048)
    parser.add_argument("--insecure", action="store_true", help="plain TCP instead of TLS")
    args = parser.parse_args()
    total = int(args.megabytes * 1e6 / args.size)
    with tempfile.TemporaryDirectory(prefix="fleet-bench-relay-") as tmp:
        extra = ["--rate-limit", "0"]
        if args.insecure:
            extra.append("--insecure-no-tls")
        relay = start_relay(Path(tmp), *extra)
        try:
            result = asyncio.run(measure(relay, total, args.size, args.window))
        finally:
            relay.stop()
    result["tls"] = not args.insecure
    width = max(len(k) for k in result)
    print("relay forwarding, loopback, 1 sender -> relay process -> 1 receiver")
    for key, value in result.items():
        print(f"  {key:<{width}}  {value}")
    print(json.dumps({"bench": "relay", **result}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
