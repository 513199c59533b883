"""`fleet agent` refuses a bad setting at start-up: exit 78 (EX_CONFIG), one line naming it.

Each case is the same working configuration with one value broken, so the failure can only
come from that value; the unbroken configuration is shown to start.
"""

from __future__ import annotations

import base64
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fleet.cli.common import EXIT_CONFIG
from fleet.identity import Identity
from harness.cli import cli_env, fleet_argv, run_fleet

ROOT = str(Identity.generate().node_id)
COORDINATOR = str(Identity.generate().node_id)
NIX_KEY = "cache.example.org-1:" + base64.b64encode(bytes(32)).decode()

# (setting broken, its flag, the bad value, text the one error line must contain)
BROKEN = [
    ("trusted public key", "--trusted-public-key", "cache.example.org-1", "--trusted-public-key"),
    (
        "key of 31 bytes",
        "--trusted-public-key",
        "k:" + base64.b64encode(bytes(31)).decode(),
        "31 bytes",
    ),
    ("substituter", "--substituter", "cache.example.org", "--substituter"),
    ("substituter scheme", "--substituter", "htps://cache.example.org", "unknown scheme"),
    ("trust root", "--trust-root", ROOT[:-1], "--trust-root"),
    ("coordinator id", "--coordinator", "coordinator@127.0.0.1:1", "--coordinator"),
    ("coordinator address", "--coordinator", f"{COORDINATOR}@127.0.0.1", "--coordinator"),
    ("relay URL", "--relay", "https://relay.example.org", "--relay"),
    ("listen", "--listen", "0.0.0.0", "--listen"),
]


def base_argv(tmp_path: Path, **replace: str) -> list[str]:
    settings = {
        "--key": str(tmp_path / "device.key"),
        "--coordinator": f"{COORDINATOR}@127.0.0.1:1",
        "--trust-root": ROOT,
        "--substituter": "http://127.0.0.1:1",
        "--trusted-public-key": NIX_KEY,
        "--state-dir": str(tmp_path / "state"),
        "--listen": "127.0.0.1:0",
        **replace,
    }
    argv = ["agent"]
    for flag, value in settings.items():
        argv += [flag, value]
    return argv


@pytest.fixture
def device_key(tmp_path: Path) -> Path:
    key = tmp_path / "device.key"
    assert run_fleet("keygen", str(key)).returncode == 0
    return key


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fleet_argv(*argv), capture_output=True, text=True, env=cli_env(), timeout=60, check=False
    )


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    lines = result.stderr.splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines
    for needle in needles:
        assert needle in lines[0], lines
    return lines[0]


def test_the_unbroken_configuration_starts(tmp_path: Path, device_key: Path) -> None:
    proc = subprocess.Popen(
        fleet_argv(*base_argv(tmp_path), "--log-level", "info"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # the agent runs until stopped: the loop ends at agent_started
            seen.append(line)
            if '"agent_started"' in line:
                break
        assert '"agent_started"' in seen[-1], seen
    finally:
        proc.terminate()
        proc.wait(15)


def test_each_bad_setting_stops_the_agent_at_start_up(tmp_path: Path, device_key: Path) -> None:
    argvs = [base_argv(tmp_path, **{flag: value}) for _, flag, value, _ in BROKEN]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, argvs))
    for (what, _, value, needle), result in zip(BROKEN, results, strict=True):
        line = assert_one_line(result, EXIT_CONFIG, needle)
        assert value in line or needle in line, f"{what}: {line}"


def test_bad_settings_in_the_config_file(tmp_path: Path, device_key: Path) -> None:
    garbage = tmp_path / "garbage.toml"
    garbage.write_text("substituter = = [\n")
    typo = tmp_path / "typo.toml"
    typo.write_text('trusted_public_keys = ["x"]\n')
    wrong_type = tmp_path / "type.toml"
    wrong_type.write_text("tag = 3\n")
    cases = [
        (["agent", "--config", str(garbage)], "invalid TOML"),
        (["agent", "--config", str(typo)], "unknown setting 'trusted_public_keys'"),
        ([*base_argv(tmp_path), "--config", str(wrong_type)], "--tag: expected a list"),
        (["agent", "--config", str(tmp_path / "missing.toml")], "no such configuration file"),
        (["agent", "--trust-root", ROOT], "--coordinator is required"),
    ]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, [argv for argv, _ in cases]))
    for (_, needle), result in zip(cases, results, strict=True):
        assert_one_line(result, EXIT_CONFIG, needle)


def test_the_coordinator_is_not_the_device_itself(tmp_path: Path, device_key: Path) -> None:
    own = run_fleet("id", str(device_key)).stdout.strip()
    result = run(base_argv(tmp_path, **{"--coordinator": f"{own}@127.0.0.1:1"}))
    assert_one_line(result, EXIT_CONFIG, "--coordinator", "own node id")


def test_a_key_file_that_is_not_a_key(tmp_path: Path) -> None:
    # Not EX_CONFIG: a missing host key may yet appear (sshd generates it), so systemd retries.
    (tmp_path / "device.key").write_text("not a key\n")
    assert_one_line(run(base_argv(tmp_path)), 1, "device.key", "not a key file")
    assert_one_line(run(base_argv(tmp_path, **{"--key": str(tmp_path / "nope")})), 1, "no such")
