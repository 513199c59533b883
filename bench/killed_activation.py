"""Agent killed mid-activation, again and again: is a killed activation ever called applied?

Run: python -m bench.killed_activation [--cycles 20] [--seed 1]
Real `fleet relay` (TLS), `fleet coordinator` and one `fleet agent` with a chroot Nix store
and a signed binary cache over HTTP (harness/fleetlab.py). Each cycle pushes a holding system
(harness/attack/activation_kill.py) and SIGKILLs the agent at a random moment: soon after the
push (downloading or switching), mid-switch with the switch's process group (a cgroup kill),
the agent alone (the switch outlives it), or mid-switch and again during the re-run; in a
quarter of the cycles the re-run fails. Then the agent restarts and the final status is
checked against the switch log and the profile: `applied` needs a switch of the pushed system
that ran to its end, after its last start; `rolled-back` needs the profile and a complete
re-activation of the previous system. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.attack.activation_kill import (
    FAIL_VAR,
    HOLD_VAR,
    build_holding,
    final_row,
    kill_agent,
    wait_for,
)
from harness.fleetlab import Agent, FleetLab
from harness.nixlab import Builder, fill_cache, serve_directory

MODES = ("soon", "mid-switch", "agent-alone", "twice")
NAME = "kiosk-1"


def _sequence(out: str) -> int:
    line = next(line for line in out.splitlines() if line.startswith("pushed sequence "))
    return int(line.removeprefix("pushed sequence ").partition(":")[0])


def _starts(dev: Agent, system: str) -> int:
    return dev.switches().count(f"switch {system}")


async def _restart(dev: Agent) -> None:
    dev.daemon.start()
    await dev.daemon.wait_ready()


async def _cycle(
    lab: FleetLab, dev: Agent, rng: random.Random, target: str, previous: str, tmp: Path
) -> dict[str, Any]:
    mode = rng.choice(MODES)
    fail = rng.random() < 0.25
    hold, fail_file = tmp / "hold", tmp / "fail"
    fail_file.unlink(missing_ok=True)
    hold.touch()
    began = time.monotonic()
    before = len(dev.switches())
    starts = _starts(dev, target)
    push = await lab.fleetctl("push", target, "--to", NAME)
    if push.code != 0:
        raise RuntimeError(f"push failed: {push}")
    sequence = _sequence(push.out)
    if mode == "soon":
        await asyncio.sleep(rng.uniform(0.0, 1.0))
    else:
        await wait_for(lambda: _starts(dev, target) > starts, "the switch to start")
        await asyncio.sleep(rng.uniform(0.0, 0.3))
    kill_agent(dev, target, with_child=mode != "agent-alone")
    if fail:
        fail_file.write_text(target)
    if mode == "agent-alone":
        await _restart(dev)
        await asyncio.sleep(rng.uniform(0.0, 1.0))
        hold.unlink()
    elif mode == "twice":
        started = _starts(dev, target)
        await _restart(dev)
        rerun = not fail  # a failing re-run would not block: it exits at once
        if rerun:
            try:
                await wait_for(lambda: _starts(dev, target) > started, "a re-run", timeout=15)
            except AssertionError:
                rerun = False  # an agent that does not re-run (the code before issue 10)
        if rerun:
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            kill_agent(dev, target, with_child=True)
            hold.unlink()
            await _restart(dev)
        else:
            hold.unlink()
    else:
        hold.unlink()
        await _restart(dev)
    row = await final_row(lab, NAME, sequence)
    lines = dev.switches()[before:]
    profile = await dev.profile()
    state = row["state"]
    if state == "applied":
        ok = profile == target and bool(lines) and lines[-1] == f"switch {target} done"
    elif state == "rolled-back":
        ok = profile == previous and bool(lines) and lines[-1] == f"switch {previous} done"
    else:
        ok = False
    return {
        "mode": mode,
        "fail": fail,
        "state": state,
        "runs": sum(line == f"switch {target}" for line in lines),
        "truthful": ok,
        "applied_unfinished": state == "applied" and not ok,
        "profile": profile,
        "seconds": round(time.monotonic() - began, 2),
        "error": row["error"],
    }


async def run(cycles: int, seed: int, show: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One row per cycle (see _cycle); each cycle's progress line goes to `show`."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="fleet-bench-kill-") as tmpdir:
        tmp = Path(tmpdir)
        builder = Builder(tmp / "builder")
        systems = [build_holding(builder, v) for v in ("base", "a", "b")]
        await fill_cache(builder, tmp / "cache", *systems)
        with serve_directory(tmp / "cache") as url:
            lab = FleetLab(tmp / "lab", substituter=url, trusted_key=builder.key.public_key)
            rows: list[dict[str, Any]] = []
            try:
                await lab.start()
                dev = lab.add_agent(NAME)
                dev.daemon.env[HOLD_VAR] = str(tmp / "hold")
                dev.daemon.env[FAIL_VAR] = str(tmp / "fail")
                await lab.launch(dev)
                first = await lab.fleetctl("push", systems[0].path, "--to", NAME, "--wait")
                if first.code != 0:
                    raise RuntimeError(f"first push failed: {first}")
                current = systems[0].path
                for _ in range(cycles):
                    target = next(s.path for s in systems[1:] if s.path != current)
                    row = await _cycle(lab, dev, rng, target, current, tmp)
                    rows.append(row)
                    show(
                        f"{len(rows):>3} {row['mode']:<12} fail={row['fail']!s:<5} "
                        f"{row['state']:<12} runs={row['runs']} truthful={row['truthful']} "
                        f"{row['seconds']:>5.1f}s"
                    )
                    current = row["profile"] or current
            finally:
                await lab.close()
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per mode (and "total"): cycles, applied, rolled-back, other, untruthful, applied
    unfinished (the figure that must be 0: a killed activation called applied)."""
    summary = {}
    for mode in (*MODES, "total"):
        mine = [r for r in rows if mode in ("total", r["mode"])]
        summary[mode] = {
            "cycles": len(mine),
            "applied": sum(r["state"] == "applied" for r in mine),
            "rolled_back": sum(r["state"] == "rolled-back" for r in mine),
            "other": sum(r["state"] not in ("applied", "rolled-back") for r in mine),
            "untruthful": sum(not r["truthful"] for r in mine),
            "applied_unfinished": sum(r["applied_unfinished"] for r in mine),
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rows = asyncio.run(run(args.cycles, args.seed, show=lambda line: print(line, flush=True)))
    summary = summarize(rows)
    print()
    print("| mode | cycles | applied | rolled-back | other | untruthful | applied unfinished |")
    print("|---|---|---|---|---|---|---|")
    for mode in MODES:
        counts = summary[mode]
        print(
            f"| {mode} | {counts['cycles']} | {counts['applied']} | {counts['rolled_back']} "
            f"| {counts['other']} | {counts['untruthful']} | {counts['applied_unfinished']} |"
        )
    total = summary["total"]
    summary_line = {
        "bench": "killed_activation",
        "cycles": total["cycles"],
        "seed": args.seed,
        "applied_unfinished": total["applied_unfinished"],
        "untruthful": total["untruthful"],
        "rows": rows,
    }
    print(json.dumps(summary_line))


if __name__ == "__main__":
    main()
