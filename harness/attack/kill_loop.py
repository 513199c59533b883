"""The coordinator killed with SIGKILL at random moments while admins push: nothing acknowledged
may be lost, and no sequence may be acknowledged twice.

Real processes: `fleet relay`, `fleet coordinator` and a stream of `fleetctl push` processes
(harness/fleetlab.py). Pushers run side by side without pause; the coordinator is killed after a
random uptime drawn from a seeded RNG (so a failure replays with the same seed), restarted on
the same port and state directory, and after every restart the announcements table is read
read-only: every push fleetctl reported accepted must be there, with the store path that push
signed. Pushes cut off by a kill fail with one line on stderr, never a traceback.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fleet.identity import write_new_key
from fleet.nix.narinfo import nix32_encode
from harness.cli import fleetctl_argv
from harness.fleetlab import FleetLab, LabError

DEVICE = "kill-loop-target"
PUSH_TIMEOUT = 5.0  # fleetctl --timeout: a push to a dead coordinator gives up soon
UPTIME = (0.3, 2.5)  # seconds between the coordinator being ready and its kill
PROGRESS_TIMEOUT = 30.0  # at most this long for the cycle's first acknowledged push


def store_path(index: int) -> str:
    """A distinct, valid store path per push, so each stored row names the push it came from."""
    digest = nix32_encode(hashlib.sha256(b"kill-loop %d" % index).digest()[:20])
    return f"/nix/store/{digest}-kill-loop-{index}"


@dataclass(frozen=True)
class Ack:
    sequence: int
    store_path: str


@dataclass
class KillLoopReport:
    cycles: int = 0
    acknowledged: list[Ack] = field(default_factory=list)
    failed: int = 0  # pushes that ended without an acknowledgement (cut off by a kill)
    lost: list[Ack] = field(default_factory=list)  # acknowledged, yet missing after a restart
    wrong: list[tuple[Ack, str]] = field(default_factory=list)  # stored with another path
    duplicated: list[int] = field(default_factory=list)  # sequences acknowledged twice
    # stderr of pushes that failed without exactly one line saying why (or showed a traceback)
    unclear: list[str] = field(default_factory=list)
    restart_seconds: list[float] = field(default_factory=list)

    def figures(self) -> dict[str, float | int]:
        restarts = self.restart_seconds or [0.0]
        return {
            "cycles": self.cycles,
            "acknowledged": len(self.acknowledged),
            "unacknowledged": self.failed,
            "lost": len(self.lost),
            "wrong_path": len(self.wrong),
            "duplicate_sequences": len(self.duplicated),
            "unclear_errors": len(self.unclear),
            "restart_max_s": round(max(restarts), 2),
        }


def stored_announcements(database: Path) -> dict[int, str]:
    """sequence -> store path, read without writing (the coordinator may be running)."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        return dict(conn.execute("SELECT sequence, store_path FROM announcements"))
    finally:
        conn.close()


class KillLoop:
    """One lab, `pushers` concurrent push loops, and the kill/restart cycle."""

    def __init__(self, lab: FleetLab, *, seed: int, pushers: int = 2) -> None:
        self.lab = lab
        self.rng = random.Random(seed)
        self.pushers = pushers
        self.report = KillLoopReport()
        self._next_index = 0
        self._stop = asyncio.Event()

    async def _push_once(self) -> None:
        index = self._next_index
        self._next_index += 1
        path = store_path(index)
        argv = fleetctl_argv(
            "--coordinator", self.lab.coordinator_addr, "--key", str(self.lab.admin_key),
            "--timeout", str(PUSH_TIMEOUT),
            "push", path, "--to", DEVICE, "--no-cache-check", "--json",
        )  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.lab.env,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), PUSH_TIMEOUT * 4 + 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        stderr = err.decode(errors="replace")
        said = [line for line in stderr.splitlines() if not line.startswith("notice: ")]
        if proc.returncode == 0:
            sequence = int(json.loads(out)["sequence"])
            self.report.acknowledged.append(Ack(sequence, path))
        else:
            self.report.failed += 1
            if len(said) != 1:
                self.report.unclear.append(stderr)
        if "Traceback" in stderr and stderr not in self.report.unclear:
            self.report.unclear.append(stderr)

    async def _pusher(self) -> None:
        while not self._stop.is_set():
            await self._push_once()

    def check(self) -> None:
        """Every acknowledged push so far is stored with its own path; none acked twice."""
        stored = stored_announcements(self.lab.root / "coordinator" / "coordinator.db")
        seen: set[int] = set()
        lost, wrong, duplicated = [], [], []
        for ack in self.report.acknowledged:
            if ack.sequence in seen:
                duplicated.append(ack.sequence)
            seen.add(ack.sequence)
            path = stored.get(ack.sequence)
            if path is None:
                lost.append(ack)
            elif path != ack.store_path:
                wrong.append((ack, path))
        self.report.lost, self.report.wrong, self.report.duplicated = lost, wrong, duplicated

    async def _restart(self) -> None:
        coordinator = self.lab.coordinator
        coordinator.kill9()
        started = time.monotonic()
        coordinator.start()
        await coordinator.wait_ready()
        self.report.restart_seconds.append(time.monotonic() - started)
        self.report.cycles += 1

    async def _progress(self, acked: int) -> None:
        """Wait (bounded) for an acknowledgement in this cycle, so every kill has one to lose:
        on a loaded machine a short uptime may otherwise pass with no push done."""
        deadline = time.monotonic() + PROGRESS_TIMEOUT
        while len(self.report.acknowledged) == acked and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def run(self, cycles: int) -> KillLoopReport:
        """`cycles` kill -9 + restart rounds during pushes, then a last check of everything."""
        device = write_new_key(self.lab.root / "kill-loop-device.key").node_id
        added = await self.lab.fleetctl("devices", "add", str(device), "--name", DEVICE)
        if added.code != 0:
            raise LabError(f"devices add failed: {added}")
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._pusher()) for _ in range(self.pushers)]
            try:
                for _ in range(cycles):
                    acked = len(self.report.acknowledged)
                    await asyncio.sleep(self.rng.uniform(*UPTIME))
                    await self._progress(acked)
                    await self._restart()
                    self.check()
            finally:
                self._stop.set()
            await asyncio.gather(*tasks)
        # The pushes that finished after the last check, across one more crash.
        await self._restart()
        self.report.cycles -= 1  # that one was not during pushes
        self.check()
        return self.report


async def run_kill_loop(
    root: Path,
    *,
    cycles: int,
    seed: int,
    pushers: int = 2,
    show: Callable[[str], object] = print,
) -> KillLoopReport:
    """A fresh lab under `root` (relay + coordinator, no agents) through `cycles` kills;
    `show` gets the daemons' log tails at the end (pytest prints them when a test fails)."""
    lab = FleetLab(root, substituter="http://127.0.0.1:9", trusted_key="unused:AAAA")
    try:
        await lab.start()
        return await KillLoop(lab, seed=seed, pushers=pushers).run(cycles)
    finally:
        show(await lab.close())
