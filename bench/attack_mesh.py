"""Mesh attacks, long versions: `python -m bench.attack_mesh` (root for the loss part).

1. Half-open QUIC flood (issue 10, item 2): a real coordinator and relay; one fresh key signs a
   disco Ping, then COUNT Initials with new connection ids at RATE/s
   (harness/attack/quic_flooder.py), once ignoring Retry and once answering it. Per flood:
   connections the coordinator answered (server state) and the most alive at once, Retries
   sent, `fleetctl status` latency before / during (median, max) / after and their ratio, the
   coordinator's CPU during the flood, RSS before / during / after.
2. UDP loss (issue 10, item 6): relay and coordinator on the wan of the NAT lab, fleetctl and
   three agents each in a namespace dropping that share of UDP both ways (iptables statistic;
   TCP to the relay refused, so the lossy link is the only way). Per loss: each agent's time
   from start to connected, and RUNS `fleetctl status` times.

Prints a table and one JSON line. `--no-loss` / `--no-flood` skip a part.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from harness.attack.packet_loss import lossy_fleet, measure
from harness.attack.quic_flood import under_flood
from harness.fleetlab import FleetLab


async def floods(count: int, rate: float) -> list[dict[str, Any]]:
    results = []
    for mode, args in (("ignores Retry", ()), ("answers Retry", ("--follow-retry",))):
        with tempfile.TemporaryDirectory() as tmp:
            fleet = FleetLab(Path(tmp), substituter="http://127.0.0.1:1", trusted_key="unused")
            try:
                await fleet.start()
                figures = await under_flood(fleet, *args, count=count, rate=rate)
            finally:
                await fleet.close()
        results.append({"mode": mode, **figures})
    return results


async def losses(runs: int) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        async with lossy_fleet(Path(tmp)) as (fleet, hosts):
            for loss in (0.0, 0.2, 0.4):
                results.append(await measure(fleet, hosts, loss, runs))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=4500)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--runs", type=int, default=10, help="fleetctl status runs per loss")
    parser.add_argument("--no-flood", action="store_true")
    parser.add_argument("--no-loss", action="store_true")
    args = parser.parse_args()
    report: dict[str, Any] = {}
    if not args.no_flood:
        report["flood"] = asyncio.run(floods(args.count, args.rate))
    if not args.no_loss:
        report["loss"] = asyncio.run(losses(args.runs))
    print()
    for row in report.get("flood", []):
        during = row["status_during_s"]
        print(
            f"flood {row['sent']} Initials in {row['seconds']} s ({row['mode']}): "
            f"answered {row['answered']} (most alive {row['most_alive']}), "
            f"retries {row['retries']}; status {row['status_before_s']} s before, "
            f"{statistics.median(during):.2f} / {max(during):.2f} s during (median/max, "
            f"ratio {row['ratio']} / {row['ratio_max']}), {row['status_after_s']} s after; "
            f"coordinator CPU {row['coordinator_cpu_s']} s; RSS MB before/during/after "
            f"{'/'.join(str(m) for m in row['rss_mb'])}"
        )
    for row in report.get("loss", []):
        status = row["status_s"]
        print(
            f"loss {row['loss']:.0%}: agents connected in "
            f"{', '.join(f'{s:.2f}' for s in row['agent_connect_s'])} s; fleetctl status "
            f"median {statistics.median(status):.2f} s, max {max(status):.2f} s"
        )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
