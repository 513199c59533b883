"""Shell completion through the real entry points, as pip and the Nix package install them.

The `fleet` and `fleetctl` commands are console scripts named in pyproject.toml; click
derives the completion variable from the program name (`_FLEETCTL_COMPLETE`), so the test
starts them under their own names, not as `python -m`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from harness.cli import REPO, cli_env

SHELLS = {  # what each shell's script must contain to register the completion
    "bash": "complete -o nosort -F _{name}_completion {name}",
    "zsh": "#compdef {name}",
    "fish": 'complete --no-files --command {name} --arguments "(_{name}_completion)"',
}


def entry_points() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    scripts: dict[str, str] = project["project"]["scripts"]
    return scripts


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The console scripts as pip writes them, running this checkout's code."""
    directory = tmp_path_factory.mktemp("bin")
    for name, target in entry_points().items():
        module, _, function = target.partition(":")
        script = directory / name
        script.write_text(
            f"#!{sys.executable}\n"
            "import sys\n"
            f"from {module} import {function}\n"
            f"sys.exit({function}())\n"
        )
        script.chmod(0o755)
    return directory


def _env(bin_dir: Path, **extra: str) -> dict[str, str]:
    return cli_env({"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", **extra})


def test_both_programs_are_entry_points() -> None:
    assert set(entry_points()) == {"fleet", "fleetctl"}


@pytest.mark.parametrize("shell", sorted(SHELLS))
@pytest.mark.parametrize("name", ["fleet", "fleetctl"])
def test_each_shell_gets_a_completion_script(bin_dir: Path, name: str, shell: str) -> None:
    variable = f"_{name.upper()}_COMPLETE"
    result = subprocess.run(
        [str(bin_dir / name)],
        env=_env(bin_dir, **{variable: f"{shell}_source"}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert SHELLS[shell].format(name=name) in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("fleetctl dev", {"devices"}),
        ("fleetctl devices ap", {"approve"}),
        ("fleetctl audit l", {"list"}),
        ("fleetctl record", {"record-grant"}),
        ("fleetctl grant X --no", {"--no-record"}),
        ("fleet k", {"keygen"}),
    ],
)
def test_bash_completes_commands_and_options(bin_dir: Path, words: str, expected: set[str]) -> None:
    """Load the script into a real bash and ask it to complete, as pressing Tab does."""
    name = words.split()[0]
    variable = f"_{name.upper()}_COMPLETE"
    program = f"""
        eval "$({variable}=bash_source {name})"
        COMP_WORDS=({words})
        COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
        _{name}_completion {name}
        printf '%s\\n' "${{COMPREPLY[@]}}"
    """
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        env=_env(bin_dir),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == expected, result.stderr
