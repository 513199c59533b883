"""Audit log poisoning, the long version of tests/attack/test_audit_poisoning.py.

Keys with no certificate send garbage admin requests (and some over the size cap) to a real
`fleet coordinator`; the figures are what the audit log stored for what was sent, whether
every request was answered, and how long `fleetctl audit verify` takes before and after.

Run: python -m bench.audit_poisoning [--requests 200] [--size 921600] [--keys 20]
(prints a table and one JSON line, `"ok"` whether the expectation held; not a timed test)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from pathlib import Path

from fleet.identity import Identity, load_identity
from harness.attack.audit_poisoning import PER_REFUSAL, Attacked, framed, send_raw
from harness.cli import run_fleet
from harness.coordinator_process import Lab


async def run(requests: int, size: int, keys: int) -> dict[str, float | int]:
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        root = Path(tmp)
        coordinator_key, admin_key = root / "coordinator.key", root / "admin.key"
        for key in (coordinator_key, admin_key):
            if run_fleet("keygen", str(key)).returncode != 0:
                raise SystemExit("fleet keygen failed")
        lab = Lab(root, load_identity(admin_key), coordinator_key, admin_key, root / "st", [])
        attacked = Attacked(lab, lab.start())
        try:
            baseline, verify_before = attacked.fleetctl("audit", "verify")
            if baseline.returncode != 0:
                raise SystemExit(f"audit verify failed before the attack: {baseline.stderr}")
            attackers = [Identity.generate() for _ in range(keys)]
            per_key = max(1, requests // keys)
            sent = answered = 0
            for attacker in attackers:
                frames = [framed(os.urandom(size)) for _ in range(per_key)]
                frames.append(framed(os.urandom(1_200_000)))  # over the cap, each key once
                replies = await send_raw(attacked.coord, attacker, frames)
                sent += sum(len(f) for f in frames)
                answered += len(replies)
            entries, stored = attacked.stored()
            results = {}
            for name, args in (
                ("audit", ("audit", "--json")),
                ("verify", ("audit", "verify")),
                ("export", ("audit", "export", "--out", str(root / "audit.jsonl"))),
            ):
                done, seconds = attacked.fleetctl(*args)
                results[name] = seconds if done.returncode == 0 else -1.0
        finally:
            attacked.coord.stop()
    return {
        "requests": keys * (per_key + 1),
        "answered": answered,
        "bytes_sent": sent,
        "audit_entries": entries,
        "audit_bytes_stored": stored,
        "verify_s_before": round(verify_before, 2),
        "audit_s_after": round(results["audit"], 2),
        "verify_s_after": round(results["verify"], 2),
        "export_s_after": round(results["export"], 2),
    }


def holds(figures: dict[str, float | int]) -> bool:
    """The expectation: every request answered, the log grew by a bounded entry per recorded
    refusal (not with what was sent), and audit, verify and export all succeeded after."""
    return (
        figures["answered"] == figures["requests"]
        and figures["audit_bytes_stored"] <= figures["audit_entries"] * PER_REFUSAL
        and min(figures[k] for k in ("audit_s_after", "verify_s_after", "export_s_after")) >= 0
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200, help="garbage requests in all")
    parser.add_argument("--size", type=int, default=900 * 1024, help="bytes per request")
    parser.add_argument("--keys", type=int, default=20, help="uncertified keys sending them")
    args = parser.parse_args()
    figures = asyncio.run(run(args.requests, args.size, args.keys))
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key.ljust(width)}  {value}")
    print(json.dumps({"bench": "audit_poisoning", "ok": holds(figures), **figures}))


if __name__ == "__main__":
    main()
