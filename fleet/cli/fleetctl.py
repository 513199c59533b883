"""`fleetctl`: the admin CLI. Parses options and prints; the work is in fleet.admin.

Exit codes (docs/fleetctl.md has the table): 0 success (also Ctrl-C ending `status
--watch`); 1 an error (settings, key, unknown target, coordinator unreachable or refusing,
with the reason on stderr); 2 a usage error; 3 `push --wait`: the push was accepted but not
every device applied it (failed, rolled back, rejected or timed out; devices and reasons on
stderr); 4 `grant`: the chain is valid and written, but the coordinator did not record the
grant; 130 interrupted.
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
from fleet.admin import auditing
from fleet.admin.auditing import (
    check_witnessed,
    fetch_log,
    fetch_witnesses,
    parse_since,
    roots_of,
    select,
    table,
    verify,
)
from fleet.admin.cache_check import (
    SKIP_HINT,
    CacheCheckFailed,
    CacheUnavailable,
    CheckReport,
    check_closure,
)
from fleet.admin.cache_reader import CacheReader
from fleet.admin.client import AdminClient
from fleet.admin.device_file import (
    DeviceFile,
    DeviceFileError,
    check_batch_size,
    parse_device_file,
)
from fleet.admin.duration import parse_duration
from fleet.admin.enroll_token_file import write_token_file
from fleet.admin.errors import (
    AdminError,
    AmbiguousTarget,
    CoordinatorRefused,
    OutcomeUnknown,
    ProtocolViolation,
    TargetError,
)
from fleet.admin.live import LARGE_PUSH, InPlace, PushDigest, push_lines, status_lines
from fleet.admin.push import PushPlan, push, wait_for_devices
from fleet.admin.settings import (
    CacheSettings,
    Credentials,
    Settings,
    resolve_cache_settings,
    resolve_credentials,
    resolve_state_dir,
)
from fleet.admin.settings import load as load_settings
from fleet.admin.store_path import resolve_system_path
from fleet.admin.targets import find_device, is_short_id, push_targets
from fleet.admin.tracking import PushTracker
from fleet.admin.views import (
    StatusBoard,
    device_json,
    device_table,
    iso_utc,
    push_record_json,
    sort_key,
    status_json,
    status_table,
    summary_json,
    summary_text,
)
from fleet.admin.witness import CheckpointMemory, WitnessFileError
from fleet.audit import (
    AuditEntry,
    AuditExport,
    AuditVerifyError,
    ExportError,
    Witnessed,
    check_extends,
    export_lines,
    newest,
    read_export,
)
from fleet.capability import (
    EMPTY_CHAIN,
    CapabilityError,
    Chain,
    ChainFileError,
    Permission,
    Scope,
    authority_of,
    certificate_id,
    certificates_of,
    format_id,
    issue,
    parse_id,
    parse_permissions,
    read_chain,
    revoke,
    write_chain,
)
from fleet.cli.common import FleetGroup, load_key_or_fail, parse_node_id_or_fail
from fleet.config import SettingsError
from fleet.identity import (
    Identity,
    InvalidLabel,
    InvalidNodeId,
    KeyFileError,
    NodeId,
    normalize_tags,
    write_new_key,
)
from fleet.log import setup_logging
from fleet.nix.substituters import InvalidSubstituter, check_substituter
from fleet.protocol.enroll_token import MAX_USES as MAX_TOKEN_USES
from fleet.protocol.enroll_token import (
    TOKEN_ID_LEN,
    format_token_file,
    make_enroll_token,
    parse_token_file,
)
from fleet.protocol.messages import (
    AgentState,
    DeviceBatchAdded,
    DeviceInfo,
    EnrollToken,
    StatusSnapshot,
    Witness,
)
from fleet.vocabulary import Action, InvalidStorePath
from fleet.wire import SignedEnvelope, decode

T = TypeVar("T")

EXIT_NOT_APPLIED = 3
EXIT_NOT_RECORDED = 4  # grant: chain written and valid, not in the coordinator's audit log
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it
DEFAULT_WAIT = 600.0
DEFAULT_GRANT = "30d"


@dataclass(frozen=True)
class GlobalOptions:
    coordinator: str | None
    key: str | None
    relays: tuple[str, ...]
    config_file: str | None
    timeout: float | None
    log_level: str
    cert: str | None = None


def _settings(options: GlobalOptions) -> Settings:
    try:
        flags = {
            "coordinator": options.coordinator,
            "key": options.key,
            "cert": options.cert,
            "relay": options.relays,
            "timeout": options.timeout,
        }
        return load_settings(options.config_file, flags, env=os.environ, home=Path.home())
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


def _credentials(options: GlobalOptions) -> Credentials:
    try:
        return resolve_credentials(
            key=options.key,
            cert=options.cert,
            config_file=options.config_file,
            env=os.environ,
            home=Path.home(),
        )
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


def _load_chain(path: Path | None) -> Chain:
    if path is None:
        return EMPTY_CHAIN
    try:
        return read_chain(path)
    except ChainFileError as exc:
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
    chain = _load_chain(settings.cert)
    setup_logging(options.log_level)

    async def session() -> T:
        async with _open_client(identity, settings) as client:
            client.chain = chain
            return await work(client)

    try:
        return asyncio.run(session())
    except KeyboardInterrupt:
        raise SystemExit(EXIT_INTERRUPTED) from None
    except AdminError as exc:
        raise click.ClickException(str(exc)) from exc


JSON_OPTION = click.option(
    "--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout."
)


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def _json_line(value: Any) -> None:
    sys.stdout.write(json.dumps(value, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    raise SystemExit(code)


# ---------------------------------------------------------------- the group


EPILOG = """\b
Every command takes --json (one JSON document on stdout; errors on stderr).
Exit codes: 0 done, 1 error, 2 usage error, 3 push --wait: not every device
applied, 4 grant: chain written but not recorded, 130 interrupted.

\b
Shell completion (bash, zsh, fish), e.g. in ~/.bashrc:
  eval "$(_FLEETCTL_COMPLETE=bash_source fleetctl)"
zsh: _FLEETCTL_COMPLETE=zsh_source; fish: _FLEETCTL_COMPLETE=fish_source
(`fleet` likewise with _FLEET_COMPLETE). See docs/fleetctl.md.
"""


@click.group(
    cls=FleetGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG
)
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
    "--cert",
    type=click.Path(dir_okay=False),
    help="The key's capability chain file from `fleetctl grant` (env FLEET_CERT); "
    "not needed for a trust root's own key.",
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
    default="error",
    show_default=True,
    help="Diagnostics on stderr (warning: also retries, e.g. a relay refusing connections).",
)
@click.pass_context
def main(
    ctx: click.Context,
    coordinator: str | None,
    key: str | None,
    cert: str | None,
    relays: tuple[str, ...],
    config_file: str | None,
    timeout: float | None,
    log_level: str,
) -> None:
    """fleetctl: administer a fleet through its coordinator.

    Settings come from flags, then the environment (FLEET_COORDINATOR, FLEET_KEY,
    FLEET_CERT, FLEET_RELAY), then the config file; flags win.
    """
    if timeout is not None and timeout <= 0:
        raise click.BadParameter("must be positive", param_hint="--timeout")
    ctx.obj = GlobalOptions(coordinator, key, relays, config_file, timeout, log_level, cert)


# ---------------------------------------------------------------- devices


async def _readable_devices(client: AdminClient) -> tuple[DeviceInfo, ...] | None:
    """The coordinator's device list, or None when this key may not read it (`devices` alone)."""
    try:
        return await client.devices()
    except CoordinatorRefused as exc:
        if exc.code != "unauthorized":
            raise
        return None


async def _known_device(client: AdminClient, text: str) -> DeviceInfo:
    """The known device TEXT names (name, node id or short id), from the coordinator's list."""
    known = await _readable_devices(client)
    if known is None:
        raise TargetError(
            f"device {text!r}: names and short ids are looked up in the device list, which "
            "this key may not read; give the full node id"
        )
    return find_device(text, known)


def _full_id(text: str) -> NodeId | None:
    try:
        return NodeId.parse(text.strip())
    except InvalidNodeId:
        return None


@main.group()
def devices() -> None:
    """Register, approve, list and remove devices.

    A device is given by its name, its node id, or a short id as tables show it (the start
    of its node id, when no other known device shares it).
    """


@devices.command("add")
@click.argument("node_id", required=False)
@click.option("--name", help="A unique name for the device.")
@click.option("--tag", "tags", multiple=True, help="A tag to push to (tag:NAME); repeatable.")
@click.option(
    "--from",
    "from_file",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Add every device of a CSV (id,name,tags) or JSON-lines file, all or none; - for stdin.",
)
@click.option(
    "--skip-existing",
    is_flag=True,
    help="With --from: leave devices already registered as they are instead of refusing.",
)
@JSON_OPTION
@click.pass_context
def devices_add(
    ctx: click.Context,
    node_id: str | None,
    name: str | None,
    tags: tuple[str, ...],
    from_file: str | None,
    skip_existing: bool,
    as_json: bool,
) -> None:
    """Register and approve the device NODE_ID under NAME, or every device of --from FILE.

    NODE_ID is the device's full node id (`fleet id /etc/ssh/ssh_host_ed25519_key` on the
    device), or the short id of a device that connected and is pending. With --from, the
    whole file is one request and one transaction: a bad line, or a device already
    registered (unless --skip-existing), refuses it all, naming the line.
    """
    if from_file is not None:
        listed, source = _device_file(from_file)  # what is wrong with the file, first
        if node_id is not None or name is not None or tags:
            raise click.UsageError("--from FILE takes no NODE_ID, --name or --tag")
        _devices_add_file(ctx, listed, source, skip_existing, as_json)
        return
    if node_id is None or name is None:
        raise click.UsageError("give NODE_ID and --name (or --from FILE)")
    if skip_existing:
        raise click.UsageError("--skip-existing goes with --from FILE")
    full = _full_id(node_id)
    if full is None and not is_short_id(node_id.strip()):
        parse_node_id_or_fail(node_id, "NODE_ID")  # a usage error saying what an id looks like
    try:
        tags = normalize_tags(tags)  # `tag:kiosk` is `kiosk`, as the agent's own --tag
    except InvalidLabel as exc:
        raise click.BadParameter(str(exc), param_hint="--tag") from None

    async def work(client: AdminClient) -> NodeId:
        if full is not None:
            node = full
        else:
            try:
                node = (await _known_device(client, node_id)).node_id
            except AmbiguousTarget:
                raise  # it lists the candidates: nothing to add
            except TargetError as exc:
                raise TargetError(
                    f"{exc}; a device that has not connected is added by its full node id"
                ) from exc
        await client.add_device(node, name, tags)
        return node

    node = _run(ctx, work)
    if as_json:
        _print_json({"name": name, "id": str(node), "tags": list(tags), "approved": True})
    else:
        click.echo(f"added {name} ({node.short()})" + (f" tags {','.join(tags)}" if tags else ""))


def _device_file(path: str) -> tuple[DeviceFile, str]:
    """The checked entries of `devices add --from PATH` (- for stdin), and what to call it."""
    source = "stdin" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise click.ClickException(f"cannot read {source}: {why}") from exc
    try:
        listed = parse_device_file(text, source)
        check_batch_size(listed)
    except DeviceFileError as exc:
        raise click.ClickException(str(exc)) from exc
    return listed, source


def _devices_add_file(
    ctx: click.Context, listed: DeviceFile, source: str, skip_existing: bool, as_json: bool
) -> None:

    async def work(client: AdminClient) -> DeviceBatchAdded:
        try:
            return await client.add_devices(listed.entries, skip_existing=skip_existing)
        except CoordinatorRefused as exc:
            raise CoordinatorRefused(exc.code, listed.explain(exc.reason, source)) from exc

    done = _run(ctx, work)
    if as_json:
        _print_json({"added": done.added, "skipped": [str(n) for n in done.skipped]})
    else:
        click.echo(
            f"added {done.added} device{'s' if done.added != 1 else ''} from {source}"
            + (f", skipped {len(done.skipped)} already registered" if done.skipped else "")
        )


@devices.command("approve")
@click.argument("device")
@JSON_OPTION
@click.pass_context
def devices_approve(ctx: click.Context, device: str, as_json: bool) -> None:
    """Approve a pending DEVICE (one that connected but is not yet known): node id or short id."""
    full = _full_id(device)

    async def work(client: AdminClient) -> tuple[NodeId, str | None]:
        if full is not None:
            await client.approve_device(full)
            return full, None
        found = await _known_device(client, device)
        await client.approve_device(found.node_id)
        return found.node_id, found.name

    node, name = _run(ctx, work)
    if as_json:
        _print_json({"name": name, "id": str(node), "approved": True})
    else:
        click.echo(f"approved {name or node.short()}")


@devices.command("list")
@JSON_OPTION
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
@click.argument("device")
@JSON_OPTION
@click.pass_context
def devices_remove(ctx: click.Context, device: str, as_json: bool) -> None:
    """Forget DEVICE: its name, node id or short id (it gets nothing more until added again)."""
    full = _full_id(device)

    async def work(client: AdminClient) -> tuple[NodeId | None, str]:
        known = await _readable_devices(client)
        if known is None:  # this key may change devices but not read the list
            if full is not None:
                raise TargetError(
                    f"device {device!r}: the coordinator removes devices by name, and this key "
                    "may not read the device list to find it; give the device's name"
                )
            await client.remove_device(device)
            return None, device
        found = find_device(device, known)
        if found.name is None:
            raise TargetError(
                f"device {device!r} is pending and has no name, so it cannot be removed; "
                "it gets nothing unless approved"
            )
        await client.remove_device(found.name)
        return found.node_id, found.name

    node, name = _run(ctx, work)
    if as_json:
        _print_json({"name": name, "id": None if node is None else str(node), "removed": True})
    else:
        click.echo(f"removed {name}")


# ---------------------------------------------------------------- push


def _valid_for(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@main.command("push")
@click.argument("store_path", required=False)
@click.option(
    "--to",
    "targets",
    multiple=True,
    metavar="TARGET",
    help="A device name, node id or tag:NAME; repeatable (required to push).",
)
@click.option(
    "--action",
    type=click.Choice([a.value for a in (Action.SWITCH, Action.BOOT, Action.TEST)]),
    default=Action.SWITCH.value,
    show_default=True,
    help="What switch-to-configuration does on the device.",
)
@click.option(
    "--cache",
    "--substituter",
    "caches",
    multiple=True,
    metavar="URL",
    help="Binary cache the devices fetch from (setting `substituter`): the closure is "
    "checked there before signing, and the URL is sent as a hint; repeatable.",
)
@click.option(
    "--trusted-public-key",
    "trusted_public_keys",
    multiple=True,
    metavar="NAME:BASE64",
    help="Nix signing key the devices trust (setting `trusted-public-key`); repeatable.",
)
@click.option(
    "--no-cache-check",
    is_flag=True,
    help="Push without checking that the caches have the closure, signed.",
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
@click.option(
    "--status",
    "status_of",
    type=click.IntRange(min=1),
    metavar="SEQ",
    help="Push nothing: show whether the push of sequence SEQ was accepted, and what it was.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
@click.pass_context
def push_command(
    ctx: click.Context,
    store_path: str | None,
    targets: tuple[str, ...],
    action: str,
    caches: tuple[str, ...],
    trusted_public_keys: tuple[str, ...],
    no_cache_check: bool,
    valid_for: float,
    wait: bool,
    wait_timeout: float,
    status_of: int | None,
    as_json: bool,
) -> None:
    """Announce that the TARGETs should run the system STORE_PATH (or ./result).

    Unless --no-cache-check, the whole closure must first be in one of the caches, signed
    by a trusted key: otherwise nothing is numbered, signed or sent. When the coordinator
    does not answer, the same signed push is sent again; if none is answered, the outcome
    is unknown and `push --status SEQ` tells it.
    """
    if status_of is not None:
        if store_path is not None or targets or wait:
            raise click.UsageError("--status SEQ takes no STORE_PATH, --to or --wait")
        _push_status(ctx, status_of, as_json)
        return
    if store_path is None:
        raise click.UsageError("Missing argument 'STORE_PATH'.")
    if not targets:
        raise click.UsageError("Missing option '--to'.")
    try:
        store_path = resolve_system_path(store_path)
    except InvalidStorePath as exc:
        _fail(str(exc), 2)
    if wait_timeout <= 0:
        raise click.BadParameter("must be positive", param_hint="--timeout")
    options = ctx.find_object(GlobalOptions)
    assert options is not None
    try:
        cache = resolve_cache_settings(
            caches=caches,
            trusted_public_keys=trusted_public_keys,
            config_file=options.config_file,
            env=os.environ,
            home=Path.home(),
        )
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc
    for url in cache.caches:
        try:
            check_substituter(url)
        except InvalidSubstituter as exc:
            raise click.BadParameter(str(exc), param_hint="--cache") from exc
    cache_check = _check_cache(store_path, cache, _settings(options), no_cache_check, as_json)

    def emit(line: str) -> None:
        if not as_json:
            click.echo(line)

    async def work(client: AdminClient) -> tuple[int, tuple[str, ...], PushTracker | None]:
        known = await client.devices()
        plan = PushPlan(
            store_path=store_path,
            to=await push_targets(targets, known, client.check_targets),
            substituters=cache.caches,
            action=Action(action),
            valid_for=valid_for,
        )
        accepted = await push(client, plan)
        names = {d.node_id: d.name or d.node_id.short() for d in known}
        labels = tuple(names.get(n, n.short()) for n in plan.devices)
        large = len(labels) > LARGE_PUSH
        if not as_json:
            listed = f"{', '.join(labels[:LARGE_PUSH])}, ..." if large else ", ".join(labels)
            click.echo(
                f"pushed sequence {accepted.sequence}: {store_path} ({action}) "
                f"to {len(labels)} device{'s' if len(labels) != 1 else ''}: {listed}"
            )
        if not wait:
            return accepted.sequence, tuple(str(n) for n in plan.devices), None
        tracker = PushTracker(accepted.sequence, plan.devices, names)
        if large and not as_json and not sys.stdout.isatty():
            digest = PushDigest()

            def report(*, final: bool = False) -> None:
                for line in digest.lines(tracker, time.monotonic(), final=final):
                    click.echo(line)

            await wait_for_devices(
                client, tracker, timeout=wait_timeout, emit=lambda _line: None, changed=report
            )
            report(final=True)
        elif as_json or not sys.stdout.isatty():
            await wait_for_devices(client, tracker, timeout=wait_timeout, emit=emit)
        else:  # a terminal: one line per device, redrawn in place, and a summary line
            view = InPlace(sys.stdout)
            view.draw(push_lines(tracker))
            await wait_for_devices(
                client,
                tracker,
                timeout=wait_timeout,
                emit=lambda _line: None,
                changed=lambda: view.draw(push_lines(tracker)),
            )
        return accepted.sequence, tuple(str(n) for n in plan.devices), tracker

    sequence, device_ids, tracker = _run(ctx, work)
    if as_json:
        document: dict[str, Any] = {
            "sequence": sequence,
            "devices": list(device_ids),
            "cache_check": cache_check,
        }
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
    lines = [
        f"  {t.label}: {t.outcome}" + (f": {t.reason}" if t.reason else "")
        for t in failed[:LARGE_PUSH]
    ]
    if len(failed) > LARGE_PUSH:
        lines.append(
            f"  ... and {len(failed) - LARGE_PUSH} more (`fleetctl status --json` has them all)"
        )
    _fail(
        f"{len(failed)} of {len(tracker.tracks)} devices did not apply sequence {sequence}:\n"
        + "\n".join(lines),
        EXIT_NOT_APPLIED,
    )


def _push_status(ctx: click.Context, sequence: int, as_json: bool) -> None:
    """`push --status SEQ`: exit 0 and what was accepted, or exit 1 if nothing was."""
    reply = _run(ctx, lambda c: c.push_status(sequence))
    record = reply.accepted
    if as_json:
        _print_json(push_record_json(reply))
    elif record is not None:
        click.echo(
            f"sequence {sequence} was accepted {iso_utc(record.accepted_at)}: "
            f"{record.store_path} ({record.action}) to {record.devices} "
            f"device{'s' if record.devices != 1 else ''} ({', '.join(record.targets)}), "
            f"signed by {record.signer.short()}, valid until {iso_utc(record.valid_until)}"
        )
    if record is None:
        _fail(
            f"no push of sequence {sequence} was accepted (the highest accepted is "
            f"{reply.highest or 'none'})",
            1,
        )


def _check_cache(
    store_path: str, cache: CacheSettings, settings: Settings, skip: bool, as_json: bool
) -> dict[str, Any]:
    """The cache check before signing (exit 1 when it fails); its result for --json."""
    if skip:
        click.echo(
            f"notice: --no-cache-check: not checking that the devices can fetch {store_path}",
            err=True,
        )
        return {"result": "skipped"}
    if not cache.caches:
        click.echo(
            "warning: no binary cache configured (--cache URL --trusted-public-key KEY, or "
            f"substituter and trusted-public-key in fleetctl.toml): not checking that the "
            f"devices can fetch {store_path}",
            err=True,
        )
        return {"result": "not-configured"}
    if not cache.trusted_public_keys:
        _fail(
            "checking the binary cache needs the Nix keys the devices trust: give "
            "--trusted-public-key NAME:BASE64 or set trusted-public-key in "
            f"{cache.source} (or --no-cache-check)",
            1,
        )

    async def check() -> CheckReport:
        async with CacheReader(timeout=settings.timeout) as reader:
            return await check_closure(store_path, cache.caches, cache.trusted_public_keys, reader)

    try:
        report = asyncio.run(check())
    except KeyboardInterrupt:
        raise SystemExit(EXIT_INTERRUPTED) from None
    except CacheUnavailable as exc:
        hint = "" if SKIP_HINT in str(exc) else f" ({SKIP_HINT})"
        _fail(f"{exc}; nothing was pushed{hint}", 1)
    except CacheCheckFailed as exc:
        _fail(f"{exc}; nothing was pushed", 1)
    if not as_json:
        click.echo(report.summary())
    return {
        "result": "passed",
        "paths": report.paths,
        "caches": list(report.caches),
        "signed_by": list(report.signers),
    }


# ---------------------------------------------------------------- status


@main.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
@click.option("--watch", is_flag=True, help="Keep showing changes as they happen (Ctrl-C ends).")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([str(s) for s in AgentState]),
    help="Only devices in this state; repeatable (any of them).",
)
@click.option("--tag", "tags", multiple=True, help="Only devices with this tag; repeatable (all).")
@click.option("--offline", is_flag=True, help="Only devices that are not connected.")
@click.option("--summary", "summary_only", is_flag=True, help="Only the counts, no table.")
@click.pass_context
def status_command(
    ctx: click.Context,
    as_json: bool,
    watch: bool,
    states: tuple[str, ...],
    tags: tuple[str, ...],
    offline: bool,
    summary_only: bool,
) -> None:
    """One row per device: link, update state, current and desired system, error.

    A summary line (devices online and offline, and per state) comes first; filters are
    applied by the coordinator, and a large fleet is read page by page.
    """
    if not watch:
        wanted = tuple(AgentState(s) for s in states)
        try:
            tags = normalize_tags(tags)  # `kiosk` and `tag:kiosk` alike
        except InvalidLabel as exc:
            raise click.BadParameter(str(exc), param_hint="--tag") from exc
        rows, summary = _run(
            ctx,
            lambda c: c.status_query(
                states=wanted, tags=tags, offline=offline, rows=not summary_only
            ),
        )
        if as_json:
            if summary_only:
                _print_json(summary_json(summary))
                return
            board = StatusBoard()
            board.load(rows)
            _print_json([status_json(s) for s in board.rows()])
        else:
            click.echo(summary_text(summary))
            if not summary_only:
                click.echo(status_table(rows, time.time()))
        return
    if states or tags or offline or summary_only:
        raise click.UsageError(
            "--watch shows every device: --state, --tag, --offline and "
            "--summary are for a one-off status"
        )
    try:
        _run(ctx, lambda c: _watch(c, as_json=as_json, tty=sys.stdout.isatty()))
    except SystemExit as exc:
        if exc.code != EXIT_INTERRUPTED:
            raise
        # Ctrl-C is how a watch ends: a normal exit


async def _watch(client: AdminClient, *, as_json: bool, tty: bool) -> None:
    board = StatusBoard()
    # A terminal gets the table redrawn in place; anything else a table per change.
    view = InPlace(sys.stdout) if tty and not as_json else None
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
            if view is not None:
                view.draw(status_lines(board.rows(), now))
                continue
            sys.stdout.write(f"-- {iso_utc(now)}\n{status_table(board.rows(), now)}\n\n")
            sys.stdout.flush()


# ---------------------------------------------------------------- organization and grants


@main.group()
def org() -> None:
    """The organization's trust root."""


@org.command("init")
@click.option(
    "--out", "out", required=True, type=click.Path(dir_okay=False), help="Where to write the key."
)
@JSON_OPTION
def org_init(out: str, as_json: bool) -> None:
    """Create a trust root key (keep it offline) and print its node id."""
    try:
        identity = write_new_key(out)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        _print_json({"id": str(identity.node_id), "key_file": out})
        return
    click.echo(str(identity.node_id))
    click.echo(
        f"trust root written to {out} (mode 0600). Configure coordinators and agents with\n"
        f"  --trust-root {identity.node_id}\n"
        "and grant admin keys from it: fleetctl --key ROOT_KEY grant NODEID --allow ... --out "
        "FILE",
        err=True,
    )


def _issuer_authority(identity: Identity, chain: Chain, now: float) -> frozenset[NodeId]:
    """The roots our own chain starts at (checked locally so a bad grant fails early)."""
    roots = roots_of(identity.node_id, chain)
    try:
        authority_of(identity.node_id, chain, roots, now)
    except CapabilityError as exc:
        raise click.ClickException(f"your own certificate chain: {exc}") from exc
    return roots


def _grant_json(chain: Chain, out: str) -> dict[str, Any]:
    """What `grant --json` and `record-grant --json` say about the chain's new certificate."""
    cert_id, cert = certificates_of(chain)[-1]
    return {
        "certificate": format_id(cert_id),
        "issuer": str(cert.issuer),
        "subject": str(cert.subject),
        "actions": list(cert.actions),
        "scope": cert.scope.describe(),
        "not_before": iso_utc(cert.not_before),
        "not_after": iso_utc(cert.not_after),
        "may_delegate": cert.may_delegate,
        "chain_file": out,
    }


@dataclass(frozen=True)
class NotRecorded:
    why: str  # the error line
    maybe: bool  # no send was answered: it may have been recorded after all


def _record(ctx: click.Context, chain: Chain) -> NotRecorded | None:
    """Report a grant to the coordinator; None when recorded, else why not."""
    try:
        _run(ctx, lambda c: c.record_grant(chain))
    except click.ClickException as exc:
        return NotRecorded(exc.format_message(), isinstance(exc.__cause__, OutcomeUnknown))
    return None


def _not_recorded(out: str, cert_id: str, failure: NotRecorded) -> NoReturn:
    """One line: what failed, what is still true, and the command that finishes the job."""
    if failure.maybe:
        _fail(
            f"the grant was perhaps not recorded in the coordinator's audit log "
            f"({failure.why}); `fleetctl audit` shows whether; the chain is valid and was "
            f"written to {out} (certificate {cert_id}), so the subject can use it now",
            EXIT_NOT_RECORDED,
        )
    why = failure.why
    _fail(
        f"the grant was NOT recorded in the coordinator's audit log ({why}); the chain is "
        f"valid and was written to {out} (certificate {cert_id}), so the subject can use it "
        f"now; record it later with the same --key/--cert: fleetctl record-grant {out}",
        EXIT_NOT_RECORDED,
    )


@main.command("grant")
@click.argument("subject")
@click.option(
    "--allow", "allow", required=True, multiple=True, help="Actions: push,devices,grant,read,audit."
)
@click.option(
    "--scope",
    "scope",
    required=True,
    multiple=True,
    help="'*', tag:NAME or a device NODEID; comma-separated or repeated.",
)
@click.option(
    "--expires",
    help="Lifetime (90s, 15m, 12h, 30d, 2w); default 30d, or until your own certificate ends.",
)
@click.option("--delegate", is_flag=True, help="The subject may grant a part of this further.")
@click.option(
    "--out", "out", required=True, type=click.Path(dir_okay=False), help="The subject's chain."
)
@click.option(
    "--record/--no-record",
    default=True,
    show_default=True,
    help="Report the grant to the coordinator for its audit log.",
)
@JSON_OPTION
@click.pass_context
def grant_command(
    ctx: click.Context,
    subject: str,
    allow: tuple[str, ...],
    scope: tuple[str, ...],
    expires: str | None,
    delegate: bool,
    out: str,
    record: bool,
    as_json: bool,
) -> None:
    """Issue SUBJECT a certificate within your own authority; write its whole chain to --out.

    SUBJECT is the full node id of the key being granted (it is signed into the certificate,
    so a short id is not accepted). Exit 4: the chain was written but the coordinator could
    not record the grant (see `fleetctl record-grant`).
    """
    options = ctx.find_object(GlobalOptions)
    assert options is not None
    if is_short_id(subject.strip()):
        raise click.BadParameter(
            f"{subject!r} looks like a short id; a grant is signed for one key, so give its "
            "full node id (52 characters, `fleet id KEYFILE` prints it)",
            param_hint="SUBJECT",
        )
    subject_id = parse_node_id_or_fail(subject, "SUBJECT")
    try:
        actions = parse_permissions(allow)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--allow") from exc
    try:
        granted_scope = Scope.parse(scope)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--scope") from exc
    try:
        lifetime = parse_duration(expires or DEFAULT_GRANT)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires") from exc
    if delegate and "grant" not in actions:
        actions = parse_permissions([*actions, "grant"])
    credentials = _credentials(options)
    identity = load_key_or_fail(credentials.key)
    own = _load_chain(credentials.cert)
    now = time.time()
    roots = _issuer_authority(identity, own, now)
    mine = authority_of(identity.node_id, own, roots, now)
    not_before = now - 300  # tolerate clocks a little behind ours
    if mine.not_before is not None:
        not_before = max(not_before, mine.not_before)
    not_after = now + lifetime
    if expires is None and mine.not_after is not None:
        not_after = min(not_after, mine.not_after)
    if mine.not_after is not None and not_after > mine.not_after:
        raise click.BadParameter(
            f"ends after your own certificate ({iso_utc(mine.not_after)}); "
            "ask for a renewal or choose a shorter --expires",
            param_hint="--expires",
        )
    try:
        chain = issue(
            identity,
            own,
            roots,
            subject_id,
            actions,
            granted_scope,
            not_before=not_before,
            not_after=not_after,
            may_delegate=delegate,
            now=now,
        )
    except CapabilityError as exc:
        raise click.ClickException(f"cannot grant this: {exc}") from exc
    try:
        write_chain(out, chain)
    except OSError as exc:
        raise click.ClickException(f"cannot write the chain to {out}: {exc.strerror}") from exc
    cert_id = format_id(certificate_id(chain.certificates[-1]))
    failure = _record(ctx, chain) if record else None
    if as_json:
        recorded = record and failure is None
        why = failure.why if failure is not None else None
        _print_json({**_grant_json(chain, out), "recorded": recorded, "record_error": why})
    else:
        click.echo(cert_id)
    if failure is not None:
        _not_recorded(out, cert_id, failure)
    if not as_json:
        click.echo(
            f"granted {','.join(actions)} on {granted_scope.describe()} to {subject_id} until "
            f"{iso_utc(not_after)}"
            + (" (may delegate)" if delegate else "")
            + f"; chain in {out}"
            + ("" if record else " (not recorded: --no-record)"),
            err=True,
        )


@main.group("enroll-token")
def enroll_token() -> None:
    """Tokens with which devices enroll themselves (`fleet agent --enroll-token FILE`)."""


@enroll_token.command("create")
@click.option(
    "--tag", "tags", multiple=True, required=True, help="A tag enrolled devices get; repeatable."
)
@click.option("--expires", required=True, help="How long the token is valid: 90m, 12h, 7d, 2w.")
@click.option(
    "--uses",
    type=click.IntRange(1, MAX_TOKEN_USES),
    default=1,
    show_default=True,
    help="How many devices it may enroll.",
)
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="The token file (mode 0600)."
)
@JSON_OPTION
@click.pass_context
def enroll_token_create(
    ctx: click.Context, tags: tuple[str, ...], expires: str, uses: int, out: str, as_json: bool
) -> None:
    """Sign a token that registers and approves up to --uses devices with the tags --tag.

    Needs the `devices` action and every tag in your scope. The file is a bearer
    credential: anyone holding it can enroll a device of their own until it expires.
    """
    options = ctx.find_object(GlobalOptions)
    assert options is not None
    try:
        clean = normalize_tags(tags)
    except InvalidLabel as exc:
        raise click.BadParameter(str(exc), param_hint="--tag") from None
    try:
        lifetime = parse_duration(expires)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires") from exc
    settings = _settings(options)
    identity = load_key_or_fail(settings.key)
    own = _load_chain(settings.cert)
    now = time.time()
    mine = authority_of(identity.node_id, own, _issuer_authority(identity, own, now), now)
    try:
        mine.require(Permission.DEVICES)
        mine.require_tags(clean)
    except CapabilityError as exc:
        raise click.ClickException(f"cannot sign this token: {exc}") from exc
    if mine.not_after is not None and now + lifetime > mine.not_after:
        raise click.BadParameter(
            f"ends after your own certificate ({iso_utc(mine.not_after)})",
            param_hint="--expires",
        )
    envelope = make_enroll_token(
        identity, settings.coordinator.node_id, clean, lifetime=lifetime, uses=uses, chain=own
    )
    token = decode(envelope.payload, EnrollToken)
    try:
        write_token_file(out, format_token_file(envelope, token))
    except OSError as exc:
        raise click.ClickException(f"cannot write the token to {out}: {exc.strerror}") from exc
    if as_json:
        _print_json(
            {
                "token": token.token_id.hex(),
                "tags": list(token.tags),
                "uses": token.uses,
                "expires": iso_utc(token.expires_at),
                "file": out,
            }
        )
    else:
        click.echo(
            f"token {token.token_id.hex()[:12]} enrolls up to {uses} device(s) with tags "
            f"{','.join(clean)} until {iso_utc(token.expires_at)}; written to {out} "
            "(keep it secret)"
        )


@enroll_token.command("revoke")
@click.argument("token")
@JSON_OPTION
@click.pass_context
def enroll_token_revoke(ctx: click.Context, token: str, as_json: bool) -> None:
    """Stop TOKEN (its file, or its id as `create` prints it) from enrolling more devices.

    Devices it enrolled stay registered (remove them with `devices remove`).
    """
    token_id = _token_id(token)
    _run(ctx, lambda client: client.revoke_enroll_token(token_id))
    if as_json:
        _print_json({"token": token_id.hex(), "revoked": True})
    else:
        click.echo(f"revoked token {token_id.hex()[:12]}")


def _token_id(text: str) -> bytes:
    """The id of a token given as its file or as the hex id `enroll-token create` prints."""
    path = Path(text)
    if path.is_file():
        try:
            envelope = parse_token_file(path.read_text(encoding="utf-8"), text)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise click.BadParameter(str(exc), param_hint="TOKEN") from exc
        return decode(envelope.payload, EnrollToken).token_id
    try:
        token_id = bytes.fromhex(text.strip())
    except ValueError:
        token_id = b""
    if len(token_id) != TOKEN_ID_LEN:
        raise click.BadParameter(
            f"{text[:70]!r} is neither a token file nor a token id "
            f"({2 * TOKEN_ID_LEN} hex digits, as `enroll-token create --json` prints it)",
            param_hint="TOKEN",
        )
    return token_id


@main.command("record-grant")
@click.argument("chain_file", type=click.Path(dir_okay=False))
@JSON_OPTION
@click.pass_context
def record_grant_command(ctx: click.Context, chain_file: str, as_json: bool) -> None:
    """Report a grant already written to CHAIN_FILE (by `grant --no-record`, or one whose
    recording failed) to the coordinator's audit log; run it with the issuer's key."""
    options = ctx.find_object(GlobalOptions)
    assert options is not None
    chain = _load_chain(Path(chain_file))
    if not chain.certificates:
        raise click.ClickException(f"{chain_file}: the chain holds no certificate")
    credentials = _credentials(options)
    identity = load_key_or_fail(credentials.key)
    try:
        cert_id, cert = certificates_of(chain)[-1]
        authority_of(cert.subject, chain, roots_of(cert.subject, chain), time.time())
    except CapabilityError as exc:
        raise click.ClickException(f"{chain_file}: {exc}") from exc
    if cert.issuer != identity.node_id:
        raise click.ClickException(
            f"{chain_file}: its certificate was issued by {cert.issuer}, not by your key "
            f"{identity.node_id}; record it with the issuer's key"
        )
    _run(ctx, lambda c: c.record_grant(chain))
    if as_json:
        _print_json({**_grant_json(chain, chain_file), "recorded": True, "record_error": None})
    else:
        click.echo(f"recorded certificate {format_id(cert_id)} for {cert.subject}")


@main.command("revoke")
@click.argument("cert_id")
@click.option("--reason", default="", help="Why (kept in the revocation and the audit log).")
@click.option(
    "--chain",
    "chain_file",
    type=click.Path(dir_okay=False),
    help="The revoked key's chain file (else the coordinator's copy is used).",
)
@JSON_OPTION
@click.pass_context
def revoke_command(
    ctx: click.Context, cert_id: str, reason: str, chain_file: str | None, as_json: bool
) -> None:
    """Revoke the certificate CERT_ID (and every chain through it), for good.

    CERT_ID is the full certificate id (64 hex digits) that `grant` printed.
    """
    try:
        target = parse_id(cert_id)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="CERT_ID") from exc
    options = ctx.find_object(GlobalOptions)
    assert options is not None
    credentials = _credentials(options)
    identity = load_key_or_fail(credentials.key)
    own = _load_chain(credentials.cert)
    revoked_chain = _load_chain(Path(chain_file)) if chain_file else None
    if revoked_chain is not None and (
        not revoked_chain.certificates or certificate_id(revoked_chain.certificates[-1]) != target
    ):
        raise click.BadParameter(f"does not end with certificate {cert_id}", param_hint="--chain")

    async def work(client: AdminClient) -> None:
        chain = revoked_chain
        if chain is None and own.certificates:  # a root needs no proof
            chain = await client.certificate_chain(target)
            if not chain.certificates or certificate_id(chain.certificates[-1]) != target:
                raise ProtocolViolation("the coordinator returned the wrong chain")
            try:
                certificates_of(chain)  # signatures verify: the coordinator cannot forge them
            except CapabilityError as exc:
                raise ProtocolViolation(f"the coordinator's chain does not verify: {exc}") from exc
        signed = revoke(
            identity,
            own,
            target,
            revoked_chain=chain or EMPTY_CHAIN,
            reason=reason,
            now=time.time(),
        )
        await client.revoke(signed)

    _run(ctx, work)
    if as_json:
        _print_json({"certificate": format_id(target), "revoked": True, "reason": reason})
    else:
        click.echo(f"revoked {format_id(target)}")


# ---------------------------------------------------------------- audit


F = TypeVar("F", bound=Callable[..., Any])


def _audit_filters(command: F) -> F:
    """The options of listing the log, shared by `audit` and `audit list`."""
    command = click.option("--actor", help="Only entries of this actor (node id or its prefix).")(
        command
    )
    return click.option(
        "--since", help="Only entries since this time (ISO 8601) or duration ago (2h, 7d)."
    )(command)


def _group_json(ctx: click.Context, as_json: bool) -> bool:
    """`--json` given to the command, or to `audit` before it (`fleetctl audit --json verify`)."""
    parent = ctx.parent.params if ctx.parent is not None else {}
    return as_json or bool(parent.get("as_json"))


@main.group("audit", invoke_without_command=True)
@_audit_filters
@JSON_OPTION
@click.option("--verify", "check", is_flag=True, help="Same as `fleetctl audit verify`.")
@click.pass_context
def audit_group(
    ctx: click.Context, since: str | None, actor: str | None, as_json: bool, check: bool
) -> None:
    """List the audit log (also `audit list`), or verify / export it (see the subcommands)."""
    if ctx.invoked_subcommand is not None:
        return
    if check:
        ctx.invoke(audit_verify, export_file=None, trust_roots=(), as_json=as_json)
        return
    _audit_list(ctx, since, actor, as_json)


@audit_group.command("list")
@_audit_filters
@JSON_OPTION
@click.pass_context
def audit_list(ctx: click.Context, since: str | None, actor: str | None, as_json: bool) -> None:
    """List the audit log: the same as `fleetctl audit`."""
    parent = ctx.parent.params if ctx.parent is not None else {}
    _audit_list(
        ctx, since or parent.get("since"), actor or parent.get("actor"), _group_json(ctx, as_json)
    )


def _audit_list(ctx: click.Context, since: str | None, actor: str | None, as_json: bool) -> None:
    try:
        since_time = parse_since(since, time.time()) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from exc
    fetched = _run(ctx, fetch_log)
    _warn_if_rewritten(ctx, fetched.entries)
    chosen = select(fetched.entries, since_time, actor)
    if as_json:
        _print_json([auditing.as_json(e) for e in chosen])
    else:
        click.echo(table(chosen))


@audit_group.command("verify")
@click.option(
    "--file",
    "export_file",
    type=click.Path(dir_okay=False, exists=True),
    help="Verify an export (fleetctl audit export) offline instead of the coordinator's log.",
)
@click.option(
    "--against",
    "against_file",
    type=click.Path(dir_okay=False, exists=True),
    help="An export kept elsewhere: the log must extend it, hash for hash.",
)
@click.option(
    "--trust-root",
    "trust_roots",
    multiple=True,
    help="Trust root NODEID to check authority against (default: the root of your --cert).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    help="Where the last checkpoint seen is remembered (env FLEET_STATE_DIR; "
    "default $XDG_STATE_HOME/fleet or ~/.local/state/fleet).",
)
@JSON_OPTION
@click.pass_context
def audit_verify(
    ctx: click.Context,
    export_file: str | None,
    trust_roots: tuple[str, ...],
    as_json: bool,
    against_file: str | None = None,
    state_dir: str | None = None,
) -> None:
    """Check the whole log: hash chain, every signature, checkpoints, authority, and that it
    extends every checkpoint seen before (here, by devices, in --against)."""
    as_json = _group_json(ctx, as_json)
    roots = frozenset(parse_node_id_or_fail(r, "--trust-root") for r in trust_roots)
    against = (against_file, _read_export(against_file)) if against_file is not None else None
    memory: CheckpointMemory | None = None
    remembered: SignedEnvelope | None = None
    reported: list[Witness] = []
    if export_file is not None:
        if not roots:
            raise click.UsageError("--file needs --trust-root NODEID (offline, nothing else)")
        exported = _read_export(export_file)
        entries, checkpoints, coordinator = (
            exported.entries,
            exported.checkpoints,
            exported.coordinator,
        )
    else:
        options = ctx.find_object(GlobalOptions)
        assert options is not None
        settings = _settings(options)
        coordinator = settings.coordinator.node_id
        memory = CheckpointMemory(_state_dir(options, state_dir), coordinator)
        try:
            remembered = memory.load()
        except WitnessFileError as exc:
            _fail(str(exc), 1)
        if not roots:
            identity = load_key_or_fail(settings.key)
            roots = roots_of(identity.node_id, _load_chain(settings.cert))

        async def fetch(client: AdminClient) -> tuple[AuditExport, list[Witness]]:
            # Witnesses first: every checkpoint they hold was then signed before the log is
            # read, so a checkpoint taken meanwhile cannot look like deleted entries.
            witnesses = await fetch_witnesses(client)
            return await fetch_log(client), witnesses

        fetched, reported = _run(ctx, fetch)
        entries, checkpoints = fetched.entries, fetched.checkpoints
    source = {
        "source": export_file or "coordinator",
        "coordinator": str(coordinator),
        "trust_roots": sorted(str(r) for r in roots),
    }
    try:
        report = verify(entries, checkpoints, coordinator, roots)
        witnessed = check_witnessed(
            entries, coordinator, remembered=remembered, reported=reported, against=against
        )
    except AuditVerifyError as exc:
        if as_json:
            _print_json({"intact": False, "problem": str(exc), **source})
        _fail(f"audit log is NOT intact: {exc}", 1)
    if memory is not None:
        _remember(memory, remembered, checkpoints)
    if as_json:
        _print_json({"intact": True, **auditing.report_json(report), **witnessed.json(), **source})
    else:
        click.echo(report.summary())
        click.echo(witnessed.summary())


def _warn_if_rewritten(ctx: click.Context, entries: list[AuditEntry]) -> None:
    """`audit` and `audit export` show the log as it is, but say so when it does not extend the
    checkpoint this machine remembered (only `audit verify` fails on it, and updates it)."""
    options = ctx.find_object(GlobalOptions)
    assert options is not None
    coordinator = _settings(options).coordinator.node_id
    try:
        remembered = CheckpointMemory(_state_dir(options, None), coordinator).load()
        if remembered is not None:
            check_extends(entries, Witnessed(auditing.REMEMBERED, remembered), coordinator)
    except WitnessFileError as exc:
        click.echo(f"warning: {exc}", err=True)
    except AuditVerifyError as exc:
        click.echo(f"warning: audit log is NOT intact: {exc} (see fleetctl audit verify)", err=True)


def _read_export(path: str) -> AuditExport:
    try:
        with open(path, encoding="utf-8") as lines:
            return read_export(lines)
    except (OSError, UnicodeDecodeError, ExportError) as exc:
        raise click.ClickException(f"{path}: {exc}") from exc


def _state_dir(options: GlobalOptions, flag: str | None) -> Path:
    try:
        return resolve_state_dir(
            state_dir=flag, config_file=options.config_file, env=os.environ, home=Path.home()
        )
    except SettingsError as exc:
        _fail(str(exc), 1)


def _remember(
    memory: CheckpointMemory, remembered: SignedEnvelope | None, checkpoints: list[SignedEnvelope]
) -> None:
    """After a successful verify: keep the newest checkpoint of the log, if it is newer."""
    best = newest(checkpoints, memory.coordinator)
    if best is None:
        return
    if remembered is not None:
        old = newest([remembered], memory.coordinator)
        if old is not None and newest([old, best], memory.coordinator) is old:
            return
    try:
        memory.save(best)
    except WitnessFileError as exc:
        _fail(f"the log is intact, but {exc}", 1)


@audit_group.command("export")
@click.option("--out", "out", type=click.Path(dir_okay=False), help="File (default stdout).")
@JSON_OPTION
@click.pass_context
def audit_export(ctx: click.Context, out: str | None, as_json: bool) -> None:
    """Write the log and its checkpoints as JSON lines, verifiable offline.

    Without --out the export itself goes to stdout (JSON lines, --json or not); with --out,
    --json prints a summary of what was written.
    """
    as_json = _group_json(ctx, as_json)
    if out is not None and not Path(out).parent.is_dir():
        raise click.BadParameter(f"no directory {Path(out).parent}", param_hint="--out")
    options = ctx.find_object(GlobalOptions)
    assert options is not None
    coordinator = _settings(options).coordinator.node_id
    fetched = _run(ctx, fetch_log)
    _warn_if_rewritten(ctx, fetched.entries)
    lines = export_lines(coordinator, fetched.entries, fetched.checkpoints)
    if out is None:
        for line in lines:
            sys.stdout.write(line)
        sys.stdout.flush()
        return
    try:
        with open(out, "w", encoding="utf-8") as f:
            f.writelines(lines)
    except OSError as exc:
        raise click.ClickException(f"cannot write {out}: {exc.strerror}") from exc
    if as_json:
        _print_json(
            {
                "file": out,
                "coordinator": str(coordinator),
                "entries": len(fetched.entries),
                "checkpoints": len(fetched.checkpoints),
            }
        )
    else:
        click.echo(f"exported {len(fetched.entries)} entries to {out}", err=True)


if __name__ == "__main__":
    main()
