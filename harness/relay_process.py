"""A real `fleet relay` process for tests and benchmarks, started through the CLI."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.relay.url import RelayUrl
from harness.cli import cli_env, fleet_argv, run_fleet


def read_log_events(path: Path) -> list[dict[str, Any]]:
    """The JSON log events a process wrote so far (other lines skipped)."""
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


async def scrape_metrics(address: tuple[str, int]) -> dict[str, float]:
    """GET /metrics of a relay at `address`; returns {'name{labels}': value}."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), timeout=5)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: relay\r\n\r\n")
        body = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
    head, _, text = body.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200"), head
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


@dataclass
class RelayProcess:
    proc: subprocess.Popen[bytes]
    url: RelayUrl
    metrics_address: tuple[str, int] | None
    log_path: Path
    stun_address: tuple[str, int] | None = None

    def logs(self) -> list[dict[str, Any]]:
        return read_log_events(self.log_path)

    def alive(self) -> bool:
        return self.proc.poll() is None

    async def metrics(self) -> dict[str, float]:
        """Scrape GET /metrics; returns {'name{labels}': value}."""
        assert self.metrics_address is not None
        return await scrape_metrics(self.metrics_address)

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise


def private_loopback() -> str:
    """A loopback address of the caller's own (all of 127/8 is local on Linux), so a relay can
    take the default STUN port 3478 there while other tests and relays run."""
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"


def without_stun(args: Sequence[str]) -> list[str]:
    """`args` plus `--no-stun` unless they say where STUN goes: tests run many relays side by
    side on loopback, and the default (UDP 3478 of the listen host) can be bound only once."""
    if any(a in ("--stun", "--no-stun", "--stun-listen") for a in args):
        return list(args)
    return [*args, "--no-stun"]


def start_relay(
    tmp: Path, *args: str, metrics: bool = True, timeout: float = 20, listen: str = "127.0.0.1:0"
) -> RelayProcess:
    """Start `fleet relay --listen 127.0.0.1:0` and read its URL from the relay_listening log.

    No STUN unless `args` ask for it (see without_stun)."""
    key = tmp / "relay.key"
    if not key.exists():
        result = run_fleet("keygen", str(key))
        assert result.returncode == 0, result.stderr
    log_path = tmp / f"relay-{time.monotonic_ns()}.log"
    argv = fleet_argv("relay", "--listen", listen, "--key", str(key), *without_stun(args))
    if metrics:
        argv += ["--metrics-listen", "127.0.0.1:0"]
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(argv, stderr=log_file, stdout=subprocess.DEVNULL, env=cli_env())
    relay = None
    deadline = time.monotonic() + timeout
    while relay is None:
        for event in read_log_events(log_path):
            if event.get("event") == "relay_listening":
                metrics_address = None
                if event.get("metrics"):
                    host, _, port = event["metrics"].rpartition(":")
                    metrics_address = (host, int(port))
                stun_address = None
                if event.get("stun"):
                    host, _, port = event["stun"].rpartition(":")
                    stun_address = (host, int(port))
                relay = RelayProcess(
                    proc, RelayUrl.parse(event["url"]), metrics_address, log_path, stun_address
                )
        if relay is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"relay did not start: {log_path.read_text()}")
            time.sleep(0.05)
    return relay
