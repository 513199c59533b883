"""Shared CLI plumbing: typed errors to clean click errors, and one line for any failure.

Every command fails with one `Error: ...` line on stderr and a non-zero exit (click's usage
errors add their `Usage:` and `Try ...` lines before it), never with a traceback.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TypeVar

import click

from fleet.config import EXIT_CONFIG as EXIT_CONFIG  # exit codes of the CLI
from fleet.identity import Identity, InvalidNodeId, KeyFileError, NodeId, load_identity
from fleet.netaddr import InvalidAddress, parse_host_port

ENV_TRACEBACK = "FLEET_TRACEBACK"  # set to 1 to see the traceback of an internal error

P = ParamSpec("P")
R = TypeVar("R")


class ConfigurationError(click.ClickException):
    """A daemon setting (flag or config file) that cannot be used; exits EX_CONFIG (78).

    systemd units can say `RestartPreventExitStatus=78` so a wrong setting stops the unit
    instead of restarting it in a loop.
    """

    exit_code = EXIT_CONFIG


def bad_settings_exit_config(command: Callable[P, R]) -> Callable[P, R]:
    """Make a daemon's own checks of its merged settings exit 78 with one line.

    Inside a daemon's command body a UsageError (BadParameter included) is about a setting
    that may come from its config file as well as from a flag, so it is a configuration
    error, not a command-line one: no `Usage:` lines, and systemd need not restart it.
    """

    @functools.wraps(command)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except click.UsageError as exc:
            raise ConfigurationError(exc.format_message()) from exc

    return checked


class FleetGroup(click.Group):
    """A click group whose commands never end in a traceback.

    Errors raised inside a daemon's TaskGroup arrive wrapped in an ExceptionGroup, which
    click does not recognise; the (first) error inside is re-raised for click to print.
    Anything else unexpected becomes one `internal error` line (with FLEET_TRACEBACK=1 the
    traceback is shown instead).
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BaseExceptionGroup as group:
            _reraise_clean(group)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:  # the last net under every command
            _reraise_clean(exc)


def _reraise_clean(exc: BaseException) -> NoReturn:
    if isinstance(exc, click.ClickException | click.exceptions.Exit | click.Abort):
        raise exc from None
    if isinstance(exc, BaseExceptionGroup):  # (nested, or several at once): the first
        _reraise_clean(exc.exceptions[0])
    if not isinstance(exc, Exception):  # SystemExit, KeyboardInterrupt: click handles them
        raise exc
    if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
        raise exc  # click's main turns a closed stdout into a quiet exit
    if os.environ.get(ENV_TRACEBACK) == "1":
        raise exc
    message = " ".join(str(exc).split())
    raise click.ClickException(
        f"internal error: {type(exc).__name__}: {message}; this is a bug, please report it "
        f"(set {ENV_TRACEBACK}=1 for the traceback)"
    ) from exc


def load_key_or_fail(path: str | Path) -> Identity:
    try:
        return load_identity(path)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from exc


def parse_node_id_or_fail(text: str, what: str = "node id") -> NodeId:
    try:
        return NodeId.parse(text)
    except InvalidNodeId as exc:
        raise click.BadParameter(f"{text!r}: {exc}", param_hint=what) from exc


def parse_bind_address_or_fail(text: object, what: str) -> tuple[str, int]:
    """An address to listen on or bind to (HOST:PORT, [IPV6]:PORT; port 0: any free port)."""
    try:
        return parse_host_port(text, any_port=True)
    except InvalidAddress as exc:
        raise click.BadParameter(str(exc), param_hint=what) from exc
