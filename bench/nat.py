"""The NAT matrix: `python -m bench.nat` (root; builds the NAT lab of harness/natlab.py).

For each scenario: a real `fleet relay` (TLS + STUN) in the wan namespace, a serving node
behind one NAT and a client behind another; the client connects through the relay, waits up
to 2 s for a direct path, then sends SIZE bytes. Prints a table and one JSON line with, per
scenario: success, final path, time to first byte and to the direct path (from the start of
connecting), and throughput on the final path.

Then scenario 8 of issue 4, the update chain (harness/natfleet.py; needs nix-bin): relay and
binary cache in the wan, three agents behind an endpoint-independent, a symmetric and a
UDP-blocking NAT, the coordinator public or at home behind a NAT. Per run: time from
`fleetctl push --wait` to its exit with every device applied, and each device's path.
`--no-chain` skips it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import fleetlab
from harness.natfleet import NatWorld, push_wait, settled_paths, three_kinds
from harness.natlab import Lab, LabError, Namespace, NatKind, start_node, start_relay
from harness.nixlab import Builder, FakeSystem

Topology = Callable[[Lab], tuple[Namespace, Namespace, bool]]  # client, server, direct expected


def _two(kind_a: NatKind, kind_b: NatKind, direct: bool) -> Topology:
    def build(lab: Lab) -> tuple[Namespace, Namespace, bool]:
        ra, rb = lab.router("ra", kind_a), lab.router("rb", kind_b)
        return lab.host("a", behind=ra), lab.host("b", behind=rb), direct

    return build


def _cgnat(lab: Lab) -> tuple[Namespace, Namespace, bool]:
    cgn = lab.router("cgn", NatKind.EASY, lan="100.64")
    home = lab.router("home", NatKind.EASY, upstream=cgn)
    other = lab.router("other", NatKind.EASY)
    return lab.host("a", behind=home), lab.host("b", behind=other), True


SCENARIOS: dict[str, Topology] = {
    "easy-easy": _two(NatKind.EASY, NatKind.EASY, True),
    "symmetric-easy": _two(NatKind.SYMMETRIC, NatKind.EASY, False),
    "symmetric-symmetric": _two(NatKind.SYMMETRIC, NatKind.SYMMETRIC, False),
    "cgnat-easy": _cgnat,
    "udp_blocked-easy": _two(NatKind.UDP_BLOCKED, NatKind.EASY, False),
}


async def run_scenario(name: str, build: Topology, size: int, tmp: Path) -> dict[str, Any]:
    lab = Lab.create()
    try:
        client_ns, server_ns, direct_expected = build(lab)
        relay = await start_relay(lab, tmp)
        server = await start_node(server_ns, tmp, "serve", "--relay", relay.url)
        node = (await server.wait_for("ready", 30))["node"]
        before = await relay.forwarded_bytes()
        client = await start_node(
            client_ns,
            tmp,
            "transfer",
            "--relay",
            relay.url,
            "--peer",
            str(node),
            "--size",
            str(size),
            "--settle",
            "2",
        )
        done = await client.wait_for("done", 120)
        first = await client.wait_for("first_byte", 1)
        relayed = await relay.forwarded_bytes() - before
        path = done["path"]
        # The path claimed by the endpoint must match where the bytes went.
        consistent = (relayed < size / 10) if path == "direct" else (relayed > size / 2)
        return {
            "scenario": name,
            "success": bool(done["ok"]) and consistent,
            "path": path,
            "direct_expected": direct_expected,
            "first_byte_ms": round(float(first["t"]) * 1000, 1),
            "direct_ms": round(float(done["direct_at"]) * 1000, 1) if done["direct_at"] else None,
            "throughput_mb_s": round(float(done["throughput"]) / 1e6, 2),
            "relay_bytes": int(relayed),
        }
    except LabError as exc:
        return {"scenario": name, "success": False, "error": str(exc)[:300]}
    finally:
        lab.close()


async def run_chain(
    coordinator_behind_nat: bool, builder: Builder, system: FakeSystem, tmp: Path
) -> dict[str, Any]:
    name = "chain-coordinator-" + ("at-home" if coordinator_behind_nat else "public")
    lab = Lab.create()
    try:
        world = await NatWorld.create(lab, tmp / name, builder, [system])
        world.print_logs = False
        async with three_kinds(world, coordinator_behind_nat=coordinator_behind_nat) as (
            fleet,
            sites,
        ):
            push, seconds = await push_wait(fleet, system.path)
            expected = {site.agent.name: site.expected_path for site in sites}
            try:
                rows = await settled_paths(fleet, expected, 10)
            except fleetlab.LabError:
                rows = await fleet.status()
            paths = {n.removeprefix("kiosk-"): rows[n]["path"] for n in expected}
            applied = all(rows[n]["state"] == "applied" for n in expected)
            return {
                "scenario": name,
                "success": push.code == 0 and applied,
                "applied_s": round(seconds, 2),
                "paths": paths,
                "paths_as_expected": all(rows[n]["path"] == p for n, p in expected.items()),
            }
    except (LabError, fleetlab.LabError) as exc:
        return {"scenario": name, "success": False, "error": str(exc)[:300]}
    finally:
        lab.close()


def _chain_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'update chain':<28}{'ok':<5}{'push->applied':>14}  paths"
    lines = [head, "-" * (len(head) + 46)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['scenario']:<28}{'FAIL':<5}{r['error']}")
            continue
        paths = ", ".join(f"{k} {v}" for k, v in r["paths"].items())
        mark = "" if r["paths_as_expected"] else "  (NOT as expected)"
        lines.append(
            f"{r['scenario']:<28}{'yes' if r['success'] else 'NO':<5}"
            f"{r['applied_s']:>12.2f} s  {paths}{mark}"
        )
    return "\n".join(lines)


def _table(rows: list[dict[str, Any]]) -> str:
    head = f"{'scenario':<22}{'ok':<5}{'path':<8}{'first byte':>12}{'direct':>10}{'MB/s':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['scenario']:<22}{'FAIL':<5}{r['error']}")
            continue
        direct = f"{r['direct_ms']:.0f} ms" if r["direct_ms"] is not None else "-"
        lines.append(
            f"{r['scenario']:<22}{'yes' if r['success'] else 'NO':<5}{r['path']:<8}"
            f"{r['first_byte_ms']:>9.1f} ms{direct:>10}{r['throughput_mb_s']:>8.2f}"
        )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=8_000_000, help="bytes per transfer")
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), help="scenarios to run")
    parser.add_argument("--no-chain", action="store_true", help="skip the update chain runs")
    args = parser.parse_args()
    rows = []
    chain: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-nat-") as tmp:
        for name, build in SCENARIOS.items():
            if args.only and name not in args.only:
                continue
            rows.append(await run_scenario(name, build, args.size, Path(tmp)))
        if not args.no_chain:
            builder = Builder(Path(tmp) / "builder")
            system = builder.build("bench")
            for behind_nat in (False, True):
                chain.append(await run_chain(behind_nat, builder, system, Path(tmp)))
    print(_table(rows))
    if chain:
        print()
        print(_chain_table(chain))
    ok = sum(1 for r in rows + chain if r.get("success"))
    direct_ok = all(
        r.get("path") == "direct" for r in rows if r.get("direct_expected") and r.get("success")
    )
    print(
        json.dumps(
            {
                "bench": "nat",
                "success_rate": ok / max(1, len(rows) + len(chain)),
                "direct_where_possible": direct_ok,
                "scenarios": rows,
                "update_chain": chain,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
