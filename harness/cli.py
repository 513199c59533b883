"""Running the real CLI as a separate process, the way users and systemd start it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def fleet_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "fleet", *args]


def fleetctl_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "fleet.cli.fleetctl", *args]


def run_fleet(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fleet_argv(*args),
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=timeout,
        check=False,
    )
