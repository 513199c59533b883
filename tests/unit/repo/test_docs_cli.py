"""Every `fleet ...` / `fleetctl ...` command shown in README.md and docs/ exists as written.

Command lines are taken from code blocks (fenced, or indented by four spaces) and checked
against the click command tree of the real CLI: each subcommand must exist, and each
`--option` must be accepted by the command it is given to. Nothing is executed.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from fleet.cli.fleet import main as fleet_main
from fleet.cli.fleetctl import main as fleetctl_main

REPO = Path(__file__).resolve().parents[3]
PROGRAMS: dict[str, click.Command] = {"fleet": fleet_main, "fleetctl": fleetctl_main}

# Documented ahead of the code by another branch. Each entry is "PROGRAM SUBCOMMAND..." or
# "PROGRAM SUBCOMMAND... --option"; test_pending_commands_are_still_missing fails as soon as
# the CLI has it: then delete the entry here.
PENDING: dict[str, str] = {}

SHELL_OPERATORS = re.compile(r"\s(?:\|\|?|&&|;|2?>>?|<)\s|\|")
PROMPT = re.compile(r"^\s*(?:\$|#|%)\s+")


@dataclass(frozen=True)
class CommandLine:
    file: str
    line: int
    text: str


# Fenced blocks with these info strings hold commands; others (nix, toml, json, text
# diagrams, ...) are not checked.
SHELL_BLOCKS = {"", "sh", "shell", "bash", "console", "shell-session"}


def code_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of every line in a shell code block, fenced or indented."""
    fence: str | None = None
    shell = True
    previous_blank = True
    in_indented = False
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if fence is not None:
            if stripped.startswith(fence):
                fence = None
            elif shell:
                yield number, line
            continue
        if stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
            shell = stripped[3:].strip().lower() in SHELL_BLOCKS
            in_indented = False
            continue
        if line.startswith("    ") and (previous_blank or in_indented) and stripped:
            in_indented = True
            yield number, line
        elif stripped:
            in_indented = False
        previous_blank = not stripped


def command_lines(path: Path, root: Path = REPO) -> Iterator[CommandLine]:
    """Each fleet/fleetctl invocation in the code blocks, with backslash continuations joined."""
    relative = str(path.relative_to(root))
    pending: tuple[int, str] | None = None
    for number, raw in code_lines(path.read_text()):
        if pending is not None:
            start, text = pending
            text = text + " " + raw.strip()
        else:
            start, text = number, PROMPT.sub("", raw).strip()
        if text.endswith("\\"):
            pending = (start, text[:-1])
            continue
        pending = None
        for segment in SHELL_OPERATORS.split(" " + text + " "):
            words = segment.split()
            while words and (
                re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0])
                or words[0]
                in {
                    "sudo",
                    "exec",
                    "env",
                }
            ):
                words = words[1:]  # VAR=value, sudo, ... before the command
            if words and words[0] == "ssh":  # ssh [-opts] HOST COMMAND...
                rest = words[1:]
                while rest and rest[0].startswith("-"):
                    rest = rest[1:]
                words = rest[1:]
            if words and words[0] in PROGRAMS:
                yield CommandLine(relative, start, " ".join(words))


def split_words(text: str) -> list[str]:
    try:
        words = shlex.split(text, comments=True)
    except ValueError:  # an unbalanced quote in a placeholder: fall back to spaces
        words = text.split()
    # Synopsis notation: [--flag], [--opt VALUE], VALUE...
    return [w.strip("[]") for w in words if w.strip("[]") not in ("", "...", "…")]


def option_names(command: click.Command) -> dict[str, click.Parameter]:
    names: dict[str, click.Parameter] = {}
    for param in command.get_params(click.Context(command)):
        if isinstance(param, click.Option):
            for name in (*param.opts, *param.secondary_opts):
                names[name] = param
    return names


def check(line: CommandLine, pending: dict[str, str] = PENDING) -> list[str]:
    """Problems with one command line, each naming the file, line and what is wrong."""
    words = split_words(line.text)
    program = words[0]
    command = PROGRAMS[program]
    path = [program]
    problems: list[str] = []
    where = f"{line.file}:{line.line}: `{line.text}`"
    i = 1
    while i < len(words):
        word = words[i]
        i += 1
        if word.startswith("-") and word != "-":
            name = word.split("=", 1)[0]
            params = option_names(command)
            if name not in params:
                if f"{' '.join(path)} {name}" not in pending:
                    known = ", ".join(sorted(n for n in params if n.startswith("--")))
                    problems.append(
                        f"{where}: `{' '.join(path)}` has no option {name} (it has: {known})"
                    )
                continue
            param = params[name]
            takes_value = isinstance(param, click.Option) and not param.is_flag and not param.count
            if takes_value and "=" not in word:
                i += 1  # the option's value
            continue
        if isinstance(command, click.Group):
            sub = command.commands.get(word)
            if sub is None:
                if f"{' '.join(path)} {word}" in pending:
                    return problems  # a pending subcommand: nothing more to check
                problems.append(
                    f"{where}: `{' '.join(path)}` has no subcommand {word!r} "
                    f"(it has: {', '.join(sorted(command.commands))})"
                )
                return problems
            command = sub
            path.append(word)
        # else: a positional argument of a command
    return problems


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def all_command_lines() -> list[CommandLine]:
    return [line for path in documents() for line in command_lines(path)]


def test_docs_show_commands() -> None:
    lines = all_command_lines()
    files = {line.file for line in lines}
    assert "README.md" in files
    assert len(lines) >= 20, lines


def test_every_documented_command_and_option_exists() -> None:
    problems = [problem for line in all_command_lines() for problem in check(line)]
    assert not problems, "CLI examples that do not match the real commands:\n" + "\n".join(problems)


def test_pending_commands_are_still_missing() -> None:
    for entry, why in PENDING.items():
        if not check(CommandLine("PENDING", 0, entry), pending={}):
            pytest.fail(
                f"`{entry}` ({why}) exists now: remove it from PENDING in "
                "tests/unit/repo/test_docs_cli.py so that the docs are checked against it"
            )


# --- The checker itself -------------------------------------------------------------------


def test_checker_names_file_line_and_option(tmp_path: Path) -> None:
    doc = tmp_path / "docs" / "_checker_test.md"
    doc.parent.mkdir()
    text = "intro\n\n```console\n$ fleetctl --key k.key push /nix/store/x --to a --bogus 1\n```\n"
    doc.write_text(text)
    (line,) = list(command_lines(doc, root=tmp_path))
    (problem,) = check(line)
    assert problem.startswith("docs/_checker_test.md:4: `fleetctl --key k.key push")
    assert "`fleetctl push` has no option --bogus" in problem
    assert "--to" in problem  # lists what exists


def test_checker_follows_groups_continuations_and_pipes(tmp_path: Path) -> None:
    doc = tmp_path / "guide.md"
    text = (
        "Indented:\n\n    sudo fleet id /etc/ssh/ssh_host_ed25519_key\n\n"
        "```console\n$ ssh root@host fleet keygen k.key\n```\n"
        "```sh\nFLEET_KEY=a.key fleetctl devices add ID --name n \\\n  --tag t\n"
        "fleetctl status --json | jq . && fleetctl devices frobnicate\n```\n"
    )
    doc.write_text(text)
    lines = list(command_lines(doc, root=tmp_path))
    assert [(line.line, line.text) for line in lines] == [
        (3, "fleet id /etc/ssh/ssh_host_ed25519_key"),
        (6, "fleet keygen k.key"),
        (9, "fleetctl devices add ID --name n --tag t"),
        (11, "fleetctl status --json"),
        (11, "fleetctl devices frobnicate"),
    ]
    assert [check(line) for line in lines[:4]] == [[], [], [], []]
    (problem,) = check(lines[4])
    assert "`fleetctl devices` has no subcommand 'frobnicate'" in problem
