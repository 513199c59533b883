"""The unit tests pass under the conditions of nix/package.nix's check phase.

scripts/sandbox-unit-tests copies the package's source fileset and runs tests/unit with an
empty environment, HOME=/homeless-shelter (absent, uncreatable), no network, not as root and
with nothing on PATH but python and stdenv's tools. It runs here once without ssh-keygen:
the only failures must then be the tests marked `openssh` (package.nix provides OpenSSH for
exactly those), each saying what is missing. Anything else that fails needs something a Nix
build does not have. Then the `openssh` tests alone run with ssh-keygen on PATH, and pass.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
SCRIPT = REPO / "scripts" / "sandbox-unit-tests"


def marked_openssh() -> set[str]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--collect-only",
            "-q",
            "-m",
            "openssh",
            "tests/unit",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return {line for line in done.stdout.splitlines() if "::" in line}


@pytest.mark.timeout(900)
def test_unit_tests_pass_in_a_nix_like_sandbox() -> None:
    needs_openssh = marked_openssh()
    assert needs_openssh, "no unit test is marked openssh, but some run ssh-keygen"

    env = {**os.environ, "FLEET_PYTHON": sys.executable}
    done = subprocess.run(
        [str(SCRIPT), "-q", "-rfE"],
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
        env=env,
    )
    output = done.stdout + done.stderr
    failed = set(re.findall(r"^(?:FAILED|ERROR) (\S+::\S+)", done.stdout, re.MULTILINE))
    assert failed == needs_openssh, (
        "in the sandbox, tests other than the `openssh` ones failed (or those passed without "
        f"ssh-keygen): {sorted(failed ^ needs_openssh)}\n{output[-6000:]}"
    )
    assert output.count("ssh-keygen is not on PATH") >= len(needs_openssh), output[-6000:]
    summary = re.search(r"(\d+) failed, (\d+) passed", done.stdout)
    assert summary is not None, output[-3000:]
    assert int(summary.group(1)) == len(needs_openssh)
    assert int(summary.group(2)) > 100, "suspiciously few unit tests ran"
    assert " error" not in done.stdout.splitlines()[-1], done.stdout[-3000:]
    assert done.returncode == 1
    assert not Path("/homeless-shelter").exists()

    # With OpenSSH on PATH, as package.nix's nativeCheckInputs provide it, those pass too
    # (only they run: the last -m wins).
    with_openssh = subprocess.run(
        [str(SCRIPT), "--with-openssh", "-q", "-m", "openssh"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert with_openssh.returncode == 0, with_openssh.stdout[-3000:] + with_openssh.stderr
    assert f"{len(needs_openssh)} passed" in with_openssh.stdout, with_openssh.stdout[-3000:]
