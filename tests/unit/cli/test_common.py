"""The last net under every command: one line for errors a TaskGroup wrapped or nobody expected."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from fleet.cli.common import EXIT_CONFIG, FleetGroup, bad_settings_exit_config


@click.group(cls=FleetGroup)
def cli() -> None:
    pass


@cli.command()
def wrapped() -> None:
    raise ExceptionGroup("unhandled errors in a TaskGroup", [click.ClickException("no route")])


@cli.command()
def nested() -> None:
    inner = BaseExceptionGroup("inner", [click.ClickException("deep")])
    raise BaseExceptionGroup("outer", [inner])


@cli.command()
def bug() -> None:
    raise ValueError("surprise\nsecond line")


@cli.command()
def exits() -> None:
    raise SystemExit(3)


@cli.command()
@click.option("--listen")
@bad_settings_exit_config
def daemon(listen: str | None) -> None:
    raise click.BadParameter("expected HOST:PORT", param_hint="listen")


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.output


def test_an_error_inside_a_task_group_is_shown_as_itself() -> None:
    assert run("wrapped") == (1, "Error: no route\n")
    assert run("nested") == (1, "Error: deep\n")


def test_an_unexpected_error_is_one_line_that_says_it_is_a_bug() -> None:
    code, output = run("bug")
    assert code == 1
    assert output.count("\n") == 1
    assert output.startswith("Error: internal error: ValueError: surprise second line")
    assert "FLEET_TRACEBACK=1" in output


def test_fleet_traceback_shows_the_traceback() -> None:
    result = CliRunner().invoke(cli, ["bug"], env={"FLEET_TRACEBACK": "1"})
    assert isinstance(result.exception, ValueError)


def test_exits_pass_through() -> None:
    assert run("exits")[0] == 3


def test_a_daemon_setting_error_is_a_configuration_error() -> None:
    assert run("daemon") == (EXIT_CONFIG, "Error: Invalid value for listen: expected HOST:PORT\n")


@pytest.mark.parametrize("command", ["wrapped", "nested", "bug", "daemon"])
def test_never_a_traceback(command: str) -> None:
    assert "Traceback" not in run(command)[1]
