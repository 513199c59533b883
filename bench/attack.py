"""The attack suite's long versions (tests/attack/ runs them short in CI), with their figures.

Usage: python -m bench.attack [SCENARIO ...] [--cycles N] [--count N] [--seconds S]
       [--poison-requests N] [--poison-size B] [--poison-keys N] [--activation-cycles N]
       [--flood-initials N] [--flood-rate R] [--loss-runs N] [--seed N]

Scenarios (default: all): kill-loop (coordinator kill -9 during pushes: acknowledged lost /
cycles), fuzz (every decoder of outside bytes: inputs / foreign exceptions), floods (relay and
coordinator: latency ratio of a real admin request, RSS before / during / after),
audit-poisoning (garbage from uncertified keys: bytes stored / sent, audit still readable;
bench/audit_poisoning.py), killed-activation (agent and switch child killed mid-switch:
killed activations called applied / cycles; bench/killed_activation.py, needs Nix),
quic-flood (half-open QUIC Initials from one key: connections answered, status latency ratio,
coordinator CPU and RSS; bench/attack_mesh.py), packet-loss (agents and fleetctl at 0/20/40 %
UDP loss in namespaces: connect and status times; bench/attack_mesh.py, needs root). Prints a
table and one JSON line. Add a scenario: an async function (options, scratch directory) ->
rows, registered in SCENARIOS; each row has `scenario`, `item`, `figure` (the table text),
`ok`, and whatever numbers it reports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import attack_mesh, audit_poisoning, killed_activation
from fleet.log import setup_logging
from harness.attack.decoders import TARGETS
from harness.attack.floods import FLOODS, FloodLab, measure
from harness.attack.fuzzing import fuzz
from harness.attack.kill_loop import run_kill_loop
from harness.attack.packet_loss import FLEETCTL_TIMEOUT
from harness.attack.quic_flood import CAP, CPU_SHARE, LATENCY_RATIO, RSS_GROWTH_MB

Row = dict[str, Any]
Scenario = Callable[[argparse.Namespace, Path], Awaitable[list[Row]]]
MAX_RATIO = 10.0  # as tests/attack/test_floods.py


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr)


async def kill_loop(options: argparse.Namespace, scratch: Path) -> list[Row]:
    report = await run_kill_loop(
        scratch / "kill-loop", cycles=options.cycles, seed=options.seed, show=_to_stderr
    )
    figures = report.figures()
    ok = not (report.lost or report.wrong or report.duplicated or report.unclear)
    text = (
        f"acknowledged lost / cycles: {figures['lost']} / {figures['cycles']} "
        f"({figures['acknowledged']} acknowledged, {figures['duplicate_sequences']} sequences "
        f"twice, restart <= {figures['restart_max_s']} s)"
    )
    return [{"scenario": "kill-loop", "item": "coordinator", "figure": text, "ok": ok, **figures}]


async def fuzz_all(options: argparse.Namespace, _scratch: Path) -> list[Row]:
    rows: list[Row] = []
    for target in TARGETS:
        result = await asyncio.to_thread(fuzz, target, options.count, options.seed)
        text = (
            f"inputs / foreign: {result.inputs} / {result.foreign} "
            f"(slowest {result.slowest * 1000:.1f} ms)"
        )
        rows.append({"scenario": "fuzz", "item": target.name, "figure": text,
                     "ok": result.foreign == 0, **result.figures(),
                     "findings": [f.error for f in result.findings]})  # fmt: skip
        print(f"  fuzz {target.name}: {text}", file=sys.stderr, flush=True)
    inputs = sum(r["inputs"] for r in rows)
    foreign = sum(r["foreign"] for r in rows)
    total = f"inputs / foreign: {inputs} / {foreign} over {len(rows)} decoders"
    rows.append({"scenario": "fuzz", "item": "total", "figure": total, "ok": foreign == 0,
                 "inputs": inputs, "foreign": foreign})  # fmt: skip
    return rows


def _memory(report_memory: dict[str, dict[str, float]]) -> str:
    daemons = sorted(report_memory.get("before", {}))
    return ", ".join(
        f"{d} {'/'.join(str(report_memory[p].get(d, '-')) for p in ('before', 'during', 'after'))}"
        for d in daemons
    )


async def floods(options: argparse.Namespace, scratch: Path) -> list[Row]:
    rows: list[Row] = []
    async with FloodLab(scratch / "floods", show=_to_stderr) as lab:
        for flood in FLOODS:
            report = await measure(lab, flood, seconds=options.seconds)
            text = (
                f"ratio {report.ratio:.2f}x (quiet {report.quiet_s:.2f} s, during "
                f"{report.during_s:.2f} s, {report.sent} sent); RSS MB before/during/after: "
                f"{_memory(report.memory_mb)}"
            )
            alive = set(lab.pids()) == {"relay", "coordinator"}
            rows.append({"scenario": "floods", "item": flood.name, "figure": text,
                         "ok": alive and report.ratio < MAX_RATIO, **report.figures()})  # fmt: skip
            print(f"  flood {flood.name}: {text}", file=sys.stderr, flush=True)
    return rows


async def poisoning(options: argparse.Namespace, _scratch: Path) -> list[Row]:
    f = await audit_poisoning.run(options.poison_requests, options.poison_size, options.poison_keys)
    text = (
        f"stored / sent: {f['audit_bytes_stored']} / {f['bytes_sent']} B in "
        f"{f['audit_entries']} entries, {f['answered']} / {f['requests']} answered; after: "
        f"audit {f['audit_s_after']} s, verify {f['verify_s_after']} s (before "
        f"{f['verify_s_before']} s), export {f['export_s_after']} s"
    )
    return [{"scenario": "audit-poisoning", "item": "uncertified keys", "figure": text,
             "ok": audit_poisoning.holds(f), **f}]  # fmt: skip


async def activation(options: argparse.Namespace, _scratch: Path) -> list[Row]:
    cycles = await killed_activation.run(
        options.activation_cycles, options.seed, show=lambda line: _to_stderr(f"  {line}")
    )
    rows: list[Row] = []
    for mode, c in killed_activation.summarize(cycles).items():
        text = (
            f"applied unfinished / cycles: {c['applied_unfinished']} / {c['cycles']} "
            f"({c['applied']} applied, {c['rolled_back']} rolled back, {c['other']} other; "
            f"{c['untruthful']} untruthful)"
        )
        rows.append({"scenario": "killed-activation", "item": mode, "figure": text,
                     "ok": c["untruthful"] == 0, **c})  # fmt: skip
    return rows


async def quic_flood(options: argparse.Namespace, _scratch: Path) -> list[Row]:
    rows: list[Row] = []
    for f in await attack_mesh.floods(options.flood_initials, options.flood_rate):
        before, _during, after = f["rss_mb"]
        rss = "/".join(str(m) for m in f["rss_mb"])
        text = (
            f"answered {f['answered']} of {f['sent']} (most alive {f['most_alive']}, cap {CAP}), "
            f"retries {f['retries']}; status ratio {f['ratio']}x; coordinator CPU "
            f"{f['coordinator_cpu_s']} s in {f['seconds']} s; RSS MB before/during/after {rss}"
        )
        ok = (
            f["most_alive"] <= CAP
            and f["ratio"] <= LATENCY_RATIO
            and f["coordinator_cpu_s"] <= CPU_SHARE * f["seconds"]
            and after - before <= RSS_GROWTH_MB
        )
        rows.append({"scenario": "quic-flood", "item": f["mode"], "figure": text, "ok": ok, **f})
    return rows


async def packet_loss(options: argparse.Namespace, _scratch: Path) -> list[Row]:
    rows: list[Row] = []
    for f in await attack_mesh.losses(options.loss_runs):
        connects, status = f["agent_connect_s"], f["status_s"]
        text = (
            f"agents connected in {', '.join(f'{s:.2f}' for s in connects)} s; fleetctl status "
            f"max {max(status):.2f} s (timeout {FLEETCTL_TIMEOUT:.0f} s)"
        )
        ok = max(connects) < FLEETCTL_TIMEOUT and max(status) < FLEETCTL_TIMEOUT
        rows.append({"scenario": "packet-loss", "item": f"{f['loss']:.0%} UDP loss",
                     "figure": text, "ok": ok, **f})  # fmt: skip
    return rows


SCENARIOS: dict[str, Scenario] = {
    "kill-loop": kill_loop,
    "fuzz": fuzz_all,
    "floods": floods,
    "audit-poisoning": poisoning,
    "killed-activation": activation,
    "quic-flood": quic_flood,
    "packet-loss": packet_loss,
}


def table(rows: list[Row]) -> str:
    width = max([len("scenario"), *(len(r["scenario"]) for r in rows)]) + 2
    head = f"{'scenario':<{width}}{'item':<31}{'ok':<4}figure"
    lines = [head, "-" * 100]
    for r in rows:
        ok = "yes" if r["ok"] else "NO"
        lines.append(f"{r['scenario']:<{width}}{r['item']:<31}{ok:<4}{r['figure']}")
    return "\n".join(lines)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", choices=[[], *SCENARIOS], default=[])
    parser.add_argument("--cycles", type=int, default=100, help="kill -9 cycles (CI: 10)")
    parser.add_argument("--count", type=int, default=200_000, help="fuzz inputs per decoder")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each flood")
    parser.add_argument("--poison-requests", type=int, default=200, help="garbage requests")
    parser.add_argument("--poison-size", type=int, default=900 * 1024, help="bytes per request")
    parser.add_argument("--poison-keys", type=int, default=20, help="uncertified keys sending")
    parser.add_argument("--activation-cycles", type=int, default=20, help="agent kills (CI: 3)")
    parser.add_argument("--flood-initials", type=int, default=4500, help="QUIC Initials sent")
    parser.add_argument("--flood-rate", type=float, default=300.0, help="QUIC Initials per s")
    parser.add_argument("--loss-runs", type=int, default=10, help="fleetctl status per loss")
    parser.add_argument("--seed", type=int, default=10, help="RNG seed (kill moments, inputs)")
    options = parser.parse_args()
    setup_logging("warning")  # the in-process flooders' logs to stderr; stdout is the figures
    chosen = options.scenarios or list(SCENARIOS)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-attack-") as tmp:
        for name in chosen:
            rows += await SCENARIOS[name](options, Path(tmp))
    print(table(rows))
    ok = all(r["ok"] for r in rows)
    print(json.dumps({"bench": "attack", "ok": ok, "seed": options.seed, "rows": rows}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
