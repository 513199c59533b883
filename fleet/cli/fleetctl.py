"""`fleetctl`: the admin CLI. Parses options and prints; the work is in fleet.admin.

Exit codes: 0 success (also Ctrl-C ending `status --watch`); 1 an error (settings, key,
unknown target, coordinator unreachable or refusing, with the reason on stderr); 2 a usage
error; 3 `push --wait`: the push was accepted but not every device applied it (devices and
reasons on stderr); 130 interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from fleet import __version__
from fleet.admin.client import AdminClient
from fleet.admin.duration import parse_duration
from fleet.admin.errors import AdminError, unwrap_group
from fleet.admin.push import PushPlan, push, wait_for_devices
from fleet.admin.settings import Settings, resolve_settings
from fleet.admin.targets import resolve_targets
from fleet.admin.tracking import PushTracker
from fleet.admin.views import (
    StatusBoard,
    device_json,
    device_table,
    iso_utc,
    sort_key,
    status_json,
    status_table,
)
from fleet.cli.common import load_key_or_fail, parse_node_id_or_fail
from fleet.identity import Identity
from fleet.log import setup_logging
from fleet.nix.errors import InvalidStorePath
from fleet.nix.store import check_store_path
from fleet.protocol.messages import Action, StatusSnapshot

T = TypeVar("T")

EXIT_NOT_APPLIED = 3
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it
DEFAULT_WAIT = 600.0
CLEAR_SCREEN = "\x1b[H\x1b[2J"


@dataclass(frozen=True)
class GlobalOptions:
    coordinator: str | None
    key: str | None
    relays: tuple[str, ...]
    config_file: str | None
    timeout: float | None
    log_level: str


def _settings(options: GlobalOptions) -> Settings:
    try:
        return resolve_settings(
            coordinator=options.coordinator,
            key=options.key,
            relays=options.relays,
            timeout=options.timeout,
            config_file=options.config_file,
            env=os.environ,
            home=Path.home(),
        )
    except AdminError as exc:
        raise click.ClickException(str(exc)) from exc


def _open_client(
    identity: Identity, settings: Settings
) -> contextlib.AbstractAsyncContextManager[AdminClient]:
    """The mesh connection to the coordinator (tests swap this for an in-memory one)."""
    from fleet.admin.connect import open_admin_client  # the mesh is only needed here

    return open_admin_client(identity, settings)


def _run(ctx: click.Context, work: Callable[[AdminClient], Awaitable[T]]) -> T:
    """Connect to the coordinator, do `work`, and turn admin errors into a clean exit 1."""
    options = ctx.find_object(GlobalOptions)
    assert options is not None
    settings = _settings(options)
    identity = load_key_or_fail(settings.key)
    setup_logging(options.log_level)

    async def session() -> T:
        async with _open_client(identity, settings) as client:
            return await work(client)

    try:
        return asyncio.run(session())
    except KeyboardInterrupt:
        raise SystemExit(EXIT_INTERRUPTED) from None
    except AdminError as exc:
        raise click.ClickException(str(exc)) from exc
    except BaseExceptionGroup as group:
        inner = unwrap_group(group)
        if isinstance(inner, AdminError):
            raise click.ClickException(str(inner)) from inner
        if isinstance(inner, KeyboardInterrupt):
            raise SystemExit(EXIT_INTERRUPTED) from None
        raise


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def _json_line(value: Any) -> None:
    sys.stdout.write(json.dumps(value, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    raise SystemExit(code)


# ---------------------------------------------------------------- the group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fleetctl")
@click.option(
    "--coordinator",
    metavar="NODEID[@HOST:PORT...]",
    help="The coordinator's node id and address hints (env FLEET_COORDINATOR).",
)
@click.option(
    "--key",
    type=click.Path(dir_okay=False),
    help="The admin's key file or OpenSSH ed25519 key (env FLEET_KEY).",
)
@click.option(
    "--relay",
    "relays",
    multiple=True,
    metavar="URL",
    help="Relay to reach the coordinator through; repeatable (env FLEET_RELAY).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML settings (default ~/.config/fleet/fleetctl.toml when it exists).",
)
@click.option("--timeout", type=float, help="Seconds to connect and for each reply (default 10).")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="warning",
    show_default=True,
    help="Diagnostics on stderr.",
)
@click.pass_context
def main(
    ctx: click.Context,
    coordinator: str | None,
    key: str | None,
    relays: tuple[str, ...],
    config_file: str | None,
    timeout: float | None,
    log_level: str,
) -> None:
    """fleetctl: administer a fleet through its coordinator.

    Settings come from flags, then the environment (FLEET_COORDINATOR, FLEET_KEY,
    FLEET_RELAY), then the config file; flags win.
    """
    if timeout is not None and timeout <= 0:
        raise click.BadParameter("must be positive", param_hint="--timeout")
    ctx.obj = GlobalOptions(coordinator, key, relays, config_file, timeout, log_level)


# ---------------------------------------------------------------- devices


@main.group()
def devices() -> None:
    """Register, approve, list and remove devices."""


@devices.command("add")
@click.argument("node_id")
@click.option("--name", required=True, help="A unique name for the device.")
@click.option("--tag", "tags", multiple=True, help="A tag to push to (tag:NAME); repeatable.")
@click.pass_context
def devices_add(ctx: click.Context, node_id: str, name: str, tags: tuple[str, ...]) -> None:
    """Register and approve the device NODE_ID under NAME."""
    node = parse_node_id_or_fail(node_id, "NODE_ID")
    _run(ctx, lambda c: c.add_device(node, name, tags))
    click.echo(f"added {name} ({node.short()})" + (f" tags {','.join(tags)}" if tags else ""))


@devices.command("approve")
@click.argument("node_id")
@click.pass_context
def devices_approve(ctx: click.Context, node_id: str) -> None:
    """Approve a pending device (one that connected but is not yet known)."""
    node = parse_node_id_or_fail(node_id, "NODE_ID")
    _run(ctx, lambda c: c.approve_device(node))
    click.echo(f"approved {node.short()}")


@devices.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
@click.pass_context
def devices_list(ctx: click.Context, as_json: bool) -> None:
    """Known and pending devices."""
    found = _run(ctx, lambda c: c.devices())
    if as_json:
        ordered = sorted(found, key=lambda d: sort_key(d.name, d.node_id))
        _print_json([device_json(d) for d in ordered])
    else:
        click.echo(device_table(found, time.time()))


@devices.command("remove")
@click.argument("name")
@click.pass_context
def devices_remove(ctx: click.Context, name: str) -> None:
    """Forget the device NAME (it gets nothing more until added again)."""
    _run(ctx, lambda c: c.remove_device(name))
    click.echo(f"removed {name}")


# ---------------------------------------------------------------- push


def _valid_for(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@main.command("push")
@click.argument("store_path")
@click.option(
    "--to",
    "targets",
    multiple=True,
    required=True,
    metavar="TARGET",
    help="A device name, node id or tag:NAME; repeatable.",
)
@click.option(
    "--action",
    type=click.Choice([a.value for a in (Action.SWITCH, Action.BOOT, Action.TEST)]),
    default=Action.SWITCH.value,
    show_default=True,
    help="What switch-to-configuration does on the device.",
)
@click.option(
    "--substituter",
    "substituters",
    multiple=True,
    metavar="URL",
    help="Binary cache hint (devices fetch only from caches they trust); repeatable.",
)
@click.option(
    "--valid-for",
    default="7d",
    show_default=True,
    callback=_valid_for,
    help="How long devices accept the announcement (90s, 15m, 12h, 7d, 2w).",
)
@click.option("--wait", is_flag=True, help="Follow the devices until each applied or failed.")
@click.option(
    "--timeout",
    "wait_timeout",
    type=float,
    default=DEFAULT_WAIT,
    show_default=True,
    help="Seconds --wait waits for the devices.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
@click.pass_context
def push_command(
    ctx: click.Context,
    store_path: str,
    targets: tuple[str, ...],
    action: str,
    substituters: tuple[str, ...],
    valid_for: float,
    wait: bool,
    wait_timeout: float,
    as_json: bool,
) -> None:
    """Announce that the TARGETs should run the system STORE_PATH."""
    try:
        check_store_path(store_path)
    except InvalidStorePath as exc:
        raise click.BadParameter(str(exc), param_hint="STORE_PATH") from exc
    if wait_timeout <= 0:
        raise click.BadParameter("must be positive", param_hint="--timeout")

    def emit(line: str) -> None:
        if not as_json:
            click.echo(line)

    async def work(client: AdminClient) -> tuple[int, tuple[str, ...], PushTracker | None]:
        known = await client.devices()
        plan = PushPlan(
            store_path=store_path,
            devices=resolve_targets(targets, known),
            targets=targets,
            substituters=substituters,
            action=Action(action),
            valid_for=valid_for,
        )
        accepted = await push(client, plan)
        names = {d.node_id: d.name or d.node_id.short() for d in known}
        labels = tuple(names.get(n, n.short()) for n in plan.devices)
        if not as_json:
            click.echo(
                f"pushed sequence {accepted.sequence}: {store_path} ({action}) "
                f"to {len(labels)} device{'s' if len(labels) != 1 else ''}: {', '.join(labels)}"
            )
        if not wait:
            return accepted.sequence, tuple(str(n) for n in plan.devices), None
        tracker = PushTracker(accepted.sequence, plan.devices, names)
        await wait_for_devices(client, tracker, timeout=wait_timeout, emit=emit)
        return accepted.sequence, tuple(str(n) for n in plan.devices), tracker

    sequence, device_ids, tracker = _run(ctx, work)
    if as_json:
        document: dict[str, Any] = {"sequence": sequence, "devices": list(device_ids)}
        if tracker is not None:
            document["ok"] = tracker.succeeded
            document["results"] = [
                {
                    "name": t.label,
                    "id": str(t.node_id),
                    "outcome": str(t.outcome),
                    "state": str(t.status.state) if t.status and t.status.state else None,
                    "error": t.reason,
                }
                for t in tracker.tracks.values()
            ]
        _print_json(document)
    if tracker is None:
        return
    failed = tracker.failures()
    if not failed:
        if not as_json:
            click.echo(f"all {len(tracker.tracks)} devices applied sequence {sequence}")
        return
    lines = [f"  {t.label}: {t.outcome}" + (f": {t.reason}" if t.reason else "") for t in failed]
    _fail(
        f"{len(failed)} of {len(tracker.tracks)} devices did not apply sequence {sequence}:\n"
        + "\n".join(lines),
        EXIT_NOT_APPLIED,
    )


# ---------------------------------------------------------------- status


@main.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
@click.option("--watch", is_flag=True, help="Keep showing changes as they happen (Ctrl-C ends).")
@click.pass_context
def status_command(ctx: click.Context, as_json: bool, watch: bool) -> None:
    """One row per device: link, update state, current and desired system, error."""
    if not watch:
        snapshot = _run(ctx, lambda c: c.status())
        if as_json:
            board = StatusBoard()
            board.load(snapshot.devices)
            _print_json([status_json(s) for s in board.rows()])
        else:
            click.echo(status_table(snapshot.devices, time.time()))
        return
    try:
        _run(ctx, lambda c: _watch(c, as_json=as_json, tty=sys.stdout.isatty()))
    except SystemExit as exc:
        if exc.code != EXIT_INTERRUPTED:
            raise
        # Ctrl-C is how a watch ends: a normal exit


async def _watch(client: AdminClient, *, as_json: bool, tty: bool) -> None:
    board = StatusBoard()
    async with contextlib.aclosing(client.watch()) as stream:
        async for message in stream:
            if isinstance(message, StatusSnapshot):
                board.load(message.devices)
                if as_json:
                    _json_line(
                        {"event": "snapshot", "devices": [status_json(s) for s in board.rows()]}
                    )
            else:
                board.update(message.device)
                if as_json:
                    _json_line({"event": "update", "device": status_json(message.device)})
            if as_json:
                continue
            now = time.time()
            text = status_table(board.rows(), now)
            stamp = iso_utc(now)
            if tty:
                sys.stdout.write(f"{CLEAR_SCREEN}{text}\n\nupdated {stamp}; Ctrl-C to stop\n")
            else:
                sys.stdout.write(f"-- {stamp}\n{text}\n\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
