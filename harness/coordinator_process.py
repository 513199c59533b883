"""A real `fleet coordinator` process started through the CLI on loopback, its address and node
id read from its own log line, for tests and benchmarks that talk to it over the mesh."""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from fleet.identity import Identity, NodeId
from harness.cli import cli_env, fleet_argv
from harness.relay_process import read_log_events


@dataclass
class CoordinatorProcess:
    proc: subprocess.Popen[bytes]
    node_id: NodeId
    address: tuple[str, int]
    log_path: Path

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise


@dataclass
class Lab:
    tmp: Path
    admin: Identity
    coordinator_key: Path
    admin_key: Path
    state_dir: Path
    running: list[CoordinatorProcess]

    def start(self, *extra: str, timeout: float = 20) -> CoordinatorProcess:
        log_path = self.tmp / f"coordinator-{len(self.running)}.log"
        argv = fleet_argv(
            "coordinator",
            "--key",
            str(self.coordinator_key),
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            str(self.state_dir),
            "--trust-root",
            str(self.admin.node_id),
            *extra,
        )
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(argv, stderr=log_file, stdout=subprocess.DEVNULL, env=cli_env())
        deadline = time.monotonic() + timeout
        while True:
            for event in read_log_events(log_path):
                if event.get("event") == "coordinator_listening":
                    host, _, port = event["address"].rpartition(":")
                    running = CoordinatorProcess(
                        proc, NodeId.parse(event["node"]), (host, int(port)), log_path
                    )
                    self.running.append(running)
                    return running
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"coordinator did not start: {log_path.read_text()}")
            time.sleep(0.05)
