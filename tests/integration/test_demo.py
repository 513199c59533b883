"""`scripts/demo` (the README's second command) end to end: the pushes it shows, then Ctrl-C
stops every process it started."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from harness.cli import REPO, cli_env

pytestmark = pytest.mark.nix


def processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # the process ended meanwhile
        if text in args:
            found.append(args)
    return found


async def test_the_demo_pushes_two_generations_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    venv = Path(sys.executable).parent.parent  # the venv running the tests: no install step
    proc = await asyncio.create_subprocess_exec(
        str(REPO / "scripts" / "demo"), "--dir", str(workdir),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=cli_env({"FLEET_VENV": str(venv)}),
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(100):
            while "the fleet is running" not in (lines[-1] if lines else ""):
                line = await proc.stdout.readline()
                assert line, "demo ended early:\n" + "".join(lines)
                lines.append(line.decode())
        assert processes_mentioning(str(workdir))  # the fleet is up
        proc.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(proc.communicate(), 60)
        output = "".join(lines) + rest.decode()
        assert proc.returncode == 0, output
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    assert output.count("all 3 devices applied sequence") == 2, output
    assert "all 3 devices applied sequence 2" in output
    tables = [block for block in output.split("$ fleetctl status\n")[1:]]
    assert len(tables) == 2, output
    for table, version in zip(tables, ("demo-1", "demo-2"), strict=True):
        lines_of = table.splitlines()
        headers = [i for i, line in enumerate(lines_of) if line.split()[:1] == ["NAME"]]
        assert headers, table
        header = headers[0]
        rows = [line.split() for line in lines_of[header + 1 : header + 4]]
        assert [row[0] for row in rows] == ["kiosk-1", "kiosk-2", "router"], table
        assert all(f"nixos-system-fleet-test-{version}" in " ".join(row) for row in rows), table
        assert all("applied" in row for row in rows), table
        assert [row[3] for row in rows] == ["direct", "direct", "relay"], table
    assert "export FLEET_COORDINATOR=" in output
    assert "==> stopped" in output
    assert processes_mentioning(str(workdir)) == []  # nothing left running
    assert not workdir.exists()  # removed on the way out
