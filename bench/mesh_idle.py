"""Idle cost of the mesh: one serving endpoint holding N idle connections from N nodes.

Run: python -m bench.mesh_idle [-n 200] [--seconds 20]
The serving endpoint runs in its own process (as a coordinator would); the N client
endpoints (one identity and socket each, as N agents) share this process. After every
client is connected and the paths have settled, nothing is sent by the application for
`--seconds`: what the server still does is the mesh's own upkeep (disco heartbeats, QUIC
keepalives, housekeeping). Prints a table, then one JSON line: the server's CPU share of
one core, its datagrams per second, and the clients' CPU. Not a timed test. Imports only
fleet.mesh, so it also runs against an older checkout (PYTHONPATH=that checkout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing as mp
import time
from typing import Any

import structlog

from fleet.identity import Identity
from fleet.mesh import Connection, Endpoint

ALPN = "fleet/bench-idle/1"
SETTLE = 5.0  # seconds after the last connect before measuring: handshake probes settle


def _quiet() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def _server(ready: Any, control: Any) -> None:
    _quiet()

    async def main() -> None:
        held: list[Connection] = []
        async with Endpoint(Identity.generate(), bind=("127.0.0.1", 0), alpns=[ALPN]) as ep:
            ready.put((str(ep.node_id), ep.bound_address))
            loop = asyncio.get_running_loop()

            async def accept() -> None:
                while True:
                    held.append(await ep.accept(ALPN))

            acceptor = asyncio.create_task(accept())
            while True:
                command = await loop.run_in_executor(None, control.get)
                if command == "stop":
                    break
                stats = ep.socket.stats
                ready.put(
                    {
                        "cpu_s": time.process_time(),
                        "sent": stats.sent,
                        "received": stats.received,
                        "connections": len(held),
                        "disco_sent": getattr(ep, "disco_sent", None),
                    }
                )
            acceptor.cancel()

    asyncio.run(main())


async def _run(n: int, seconds: float, server_id: str, addr: Any, ask: Any) -> dict[str, Any]:
    from fleet.identity import NodeId

    node = NodeId.parse(server_id)
    endpoints = [Endpoint(Identity.generate(), bind=("127.0.0.1", 0)) for _ in range(n)]
    for ep in endpoints:
        await ep.__aenter__()
    try:
        started = time.monotonic()
        conns = await asyncio.gather(
            *(ep.connect(node, ALPN, addrs=[tuple(addr)], timeout=60) for ep in endpoints)
        )
        connect_s = time.monotonic() - started
        await asyncio.sleep(SETTLE)
        loop = asyncio.get_running_loop()
        before = await loop.run_in_executor(None, ask)
        cpu = time.process_time()
        wall = time.monotonic()
        await asyncio.sleep(seconds)
        after = await loop.run_in_executor(None, ask)
        clients_cpu = time.process_time() - cpu
        wall = time.monotonic() - wall
        alive = sum(1 for c in conns if c.closed is None)
    finally:
        for ep in endpoints:
            await ep.__aexit__(None, None, None)
    disco = None
    if after["disco_sent"] is not None and before["disco_sent"] is not None:
        disco = (after["disco_sent"] - before["disco_sent"]) / wall
    return {
        "bench": "mesh_idle",
        "n": n,
        "seconds": round(wall, 1),
        "connect_s": round(connect_s, 2),
        "alive": alive,
        "server_connections": after["connections"],
        "server_cpu_pct": round(100 * (after["cpu_s"] - before["cpu_s"]) / wall, 2),
        "server_datagrams_per_s": round(
            (after["sent"] + after["received"] - before["sent"] - before["received"]) / wall, 1
        ),
        "server_disco_per_s": None if disco is None else round(disco, 1),
        "clients_cpu_pct": round(100 * clients_cpu / wall, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=200, help="idle connections (client nodes)")
    parser.add_argument("--seconds", type=float, default=20.0, help="idle time measured")
    args = parser.parse_args()
    _quiet()
    ctx = mp.get_context("spawn")
    ready, control = ctx.Queue(), ctx.Queue()
    server = ctx.Process(target=_server, args=(ready, control), daemon=True)
    server.start()
    try:
        server_id, addr = ready.get(timeout=30)

        def ask() -> dict[str, Any]:
            control.put("stats")
            reply: dict[str, Any] = ready.get(timeout=30)
            return reply

        result = asyncio.run(_run(args.n, args.seconds, server_id, addr, ask))
        control.put("stop")
    finally:
        server.join(10)
        if server.is_alive():
            server.kill()
    print(f"{'idle connections':<28}{result['n']}")
    print(f"{'connected in':<28}{result['connect_s']} s ({result['alive']} alive)")
    print(f"{'server CPU (of one core)':<28}{result['server_cpu_pct']} %")
    print(f"{'server datagrams':<28}{result['server_datagrams_per_s']} /s")
    if result["server_disco_per_s"] is not None:
        print(f"{'server disco sent':<28}{result['server_disco_per_s']} /s")
    print(f"{'clients CPU (this process)':<28}{result['clients_cpu_pct']} %")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
