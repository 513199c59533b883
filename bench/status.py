"""`fleetctl status` at fleet scale: real processes against a registry of N devices.

Usage: python -m bench.status [-n N] [--runs R]

The registry is filled through the coordinator's own code (fleet.coordinator.registry, one
transaction; a third of the devices report `failed`, the rest `applied`, one in ten never
reported), then one `fleet coordinator` process is started on it (with a relay, as in the
lab) and each `fleetctl` command below runs R times as its own process: wall time includes
starting Python, the mesh handshake and reading every page. Next to it, the CPU seconds
of the fleetctl process and of the coordinator for the command: on a shared, loaded machine
those hold still while wall time does not (the load average is printed too). Prints a table
and, last, one JSON line. (The issue's target: `fleetctl status --json` for 10,000 devices
<= 3 s.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.proc import cpu_seconds
from fleet.coordinator import registry
from fleet.coordinator.database import Database
from fleet.identity import Identity
from fleet.protocol.messages import AgentState, StatusReport, SystemState
from harness.fleetlab import FleetLab

SYSTEM = "/nix/store/" + "a" * 32 + "-nixos-system-kiosk"
COMMANDS: dict[str, tuple[str, ...]] = {
    "status --json": ("status", "--json"),
    "status (table)": ("status",),
    "status --summary": ("status", "--summary"),
    "status --state failed --json": ("status", "--state", "failed", "--json"),
    "status --tag even --offline --json": ("status", "--tag", "even", "--offline", "--json"),
}


async def fill_registry(path: Path, n: int) -> float:
    """N devices registered and reporting, in one transaction; the seconds it took."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = await Database.open(path)
    started = time.monotonic()
    try:
        now = time.time()
        async with db.transaction() as tx:
            for i in range(n):
                node = Identity.generate().node_id
                tags = ("kiosk", "even") if i % 2 == 0 else ("kiosk",)
                await registry.add(tx, node, f"device-{i:05}", tags, now)
                if i % 10 == 9:
                    continue
                failed = i % 3 == 0
                report = StatusReport(
                    state=AgentState.FAILED if failed else AgentState.APPLIED,
                    since=now,
                    sequence=1,
                    desired=SYSTEM,
                    current=SystemState(store_path=SYSTEM, generation=2),
                    progress=None,
                    error="switch-to-configuration exited 1" if failed else None,
                    exit_code=1 if failed else None,
                    log_tail=None,
                )
                await registry.save_report(tx, node, report, now)
    finally:
        await db.close()
    return time.monotonic() - started


async def run(n: int, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-status-") as scratch:
        root = Path(scratch)
        lab = FleetLab(root, substituter="http://127.0.0.1:9", trusted_key="k:AAAA")
        fill_seconds = await fill_registry(root / "coordinator" / "coordinator.db", n)
        results: dict[str, Any] = {"n": n, "runs": runs, "fill_registry_s": fill_seconds}
        try:
            await lab.start()
            coordinator = lab.coordinator.proc
            assert coordinator is not None
            for label, args in COMMANDS.items():
                times, client_cpu, server_cpu, rows = [], [], [], None
                for _ in range(runs):
                    children = resource.getrusage(resource.RUSAGE_CHILDREN)
                    served = cpu_seconds(coordinator.pid)
                    started = time.monotonic()
                    result = await lab.fleetctl(*args, timeout=120)
                    times.append(time.monotonic() - started)
                    server_cpu.append(cpu_seconds(coordinator.pid) - served)
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    client_cpu.append(
                        after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
                    )
                    if result.code != 0:
                        raise SystemExit(f"fleetctl {label} failed: {result}")
                    if "--json" in args:
                        rows = len(json.loads(result.out))
                results[label] = {
                    "median_s": statistics.median(times),
                    "max_s": max(times),
                    "fleetctl_cpu_s": statistics.median(client_cpu),
                    "coordinator_cpu_s": statistics.median(server_cpu),
                    "rows": rows,
                }
            results["load_average"] = os.getloadavg()[0]
        finally:
            await lab.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10_000, help="devices in the registry")
    parser.add_argument("--runs", type=int, default=3, help="runs of each command")
    options = parser.parse_args()
    results = asyncio.run(run(options.n, options.runs))
    print(f"registry of {results['n']} devices filled in {results['fill_registry_s']:.1f} s")
    print(f"load average (1 min) at the end: {results['load_average']:.1f}")
    header = f"{'command':44} {'median s':>9} {'max s':>7} {'fleetctl cpu s':>15}"
    print(f"{header} {'coordinator cpu s':>18} {'rows':>6}")
    for label in COMMANDS:
        r = results[label]
        rows = "-" if r["rows"] is None else str(r["rows"])
        print(
            f"fleetctl {label:35} {r['median_s']:9.2f} {r['max_s']:7.2f} "
            f"{r['fleetctl_cpu_s']:15.2f} {r['coordinator_cpu_s']:18.2f} {rows:>6}"
        )
    sys.stdout.write(json.dumps(results, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
