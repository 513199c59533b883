"""Enrollment at fleet scale: `fleetctl devices add --from FILE` against a real coordinator.

One `fleet coordinator` process started through the CLI; for each N, a CSV of N new devices
(names `kiosk-berlin-NNNNN`, two tags) is added by one `fleetctl` process (one signed
request, one transaction), then `fleetctl devices list --json` reads them back. The figures
are wall-clock seconds of each command (process start, key, mesh handshake included) and the
request size.

Run: python -m bench.enroll [-n 1000 -n 10000]
(prints a table and one JSON line, `"ok"` whether every device was stored; not a timed test)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from fleet.identity import Identity, load_identity
from fleet.protocol.messages import DeviceAddBatch, DeviceEntry
from fleet.wire import encode
from harness.cli import cli_env, fleetctl_argv, run_fleet
from harness.coordinator_process import CoordinatorProcess, Lab

TIMEOUT = 120.0


def fleetctl(
    coord: CoordinatorProcess, key: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    host, port = coord.address
    argv = fleetctl_argv(
        "--coordinator", f"{coord.node_id}@{host}:{port}", "--key", str(key),
        "--timeout", str(TIMEOUT), *args,
    )  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, env=cli_env(), timeout=300)
    return done, time.monotonic() - started


def run(sizes: list[int]) -> list[dict[str, float | int | bool]]:
    rows: list[dict[str, float | int | bool]] = []
    with tempfile.TemporaryDirectory(prefix="bench-enroll-") as tmp:
        root = Path(tmp)
        coordinator_key, admin_key = root / "coordinator.key", root / "admin.key"
        for key in (coordinator_key, admin_key):
            if run_fleet("keygen", str(key)).returncode != 0:
                raise SystemExit("fleet keygen failed")
        lab = Lab(root, load_identity(admin_key), coordinator_key, admin_key, root / "st", [])
        coord = lab.start()
        try:
            total = 0
            for offset, n in enumerate(sizes):
                entries = [
                    DeviceEntry(
                        node_id=Identity.generate().node_id,
                        name=f"kiosk-berlin-{offset}{i:05d}",
                        tags=("berlin", "kiosk"),
                    )
                    for i in range(n)
                ]
                path = root / f"devices-{n}.csv"
                path.write_text(
                    "id,name,tags\n"
                    + "".join(f"{e.node_id},{e.name},{' '.join(e.tags)}\n" for e in entries)
                )
                size = len(encode(DeviceAddBatch(devices=tuple(entries), skip_existing=False)))
                added, add_s = fleetctl(coord, admin_key, "devices", "add", "--from", str(path))
                listed, list_s = fleetctl(coord, admin_key, "devices", "list", "--json")
                total += n
                stored = len(json.loads(listed.stdout)) if listed.returncode == 0 else -1
                rows.append(
                    {
                        "n": n,
                        "request_bytes": size,
                        "add_s": round(add_s, 2),
                        "list_s": round(list_s, 2),
                        "stored": stored,
                        "ok": added.returncode == 0 and stored == total,
                    }
                )
                if added.returncode != 0:
                    print(added.stderr.strip())
        finally:
            coord.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, action="append", help="devices per file (repeatable)")
    sizes = parser.parse_args().n or [1000, 10_000]
    rows = run(sizes)
    print(f"{'N':>7}  {'request':>10}  {'devices add':>12}  {'devices list':>13}  {'stored':>7}")
    for r in rows:
        print(
            f"{r['n']:>7}  {r['request_bytes']:>8} B  {r['add_s']:>10} s  {r['list_s']:>11} s"
            f"  {r['stored']:>7}"
        )
    print(json.dumps({"bench": "enroll", "rows": rows, "ok": all(r["ok"] for r in rows)}))


if __name__ == "__main__":
    main()
