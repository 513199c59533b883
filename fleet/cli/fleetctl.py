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
from fleet.admin import auditing
from fleet.admin.auditing import (
    fetch_log,
    parse_since,
    roots_of,
    select,
    table,
    verify,
)
from fleet.admin.client import AdminClient
from fleet.admin.duration import parse_duration
from fleet.admin.errors import AdminError, unwrap_group
from fleet.admin.push import PushPlan, push, wait_for_devices
from fleet.admin.settings import Credentials, Settings, resolve_credentials, resolve_settings
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
from fleet.audit import AuditVerifyError, ExportError, export_lines, read_export
from fleet.capability import (
    EMPTY_CHAIN,
    CapabilityError,
    Chain,
    ChainFileError,
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
from fleet.identity import Identity, KeyFileError, NodeId, write_new_key
from fleet.log import setup_logging
from fleet.nix.errors import InvalidStorePath
from fleet.nix.store import check_store_path
from fleet.nix.substituters import InvalidSubstituter, check_substituter
from fleet.protocol.messages import Action, StatusSnapshot

T = TypeVar("T")

EXIT_NOT_APPLIED = 3
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it
DEFAULT_WAIT = 600.0
DEFAULT_GRANT = "30d"
CLEAR_SCREEN = "\x1b[H\x1b[2J"


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
        return resolve_settings(
            coordinator=options.coordinator,
            key=options.key,
            cert=options.cert,
            relays=options.relays,
            timeout=options.timeout,
            config_file=options.config_file,
            env=os.environ,
            home=Path.home(),
        )
    except AdminError as exc:
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
    except AdminError as exc:
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


@click.group(cls=FleetGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    for url in substituters:
        try:
            check_substituter(url)
        except InvalidSubstituter as exc:
            raise click.BadParameter(str(exc), param_hint="--substituter") from exc
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


# ---------------------------------------------------------------- organization and grants


@main.group()
def org() -> None:
    """The organization's trust root."""


@org.command("init")
@click.option(
    "--out", "out", required=True, type=click.Path(dir_okay=False), help="Where to write the key."
)
def org_init(out: str) -> None:
    """Create a trust root key (keep it offline) and print its node id."""
    try:
        identity = write_new_key(out)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from exc
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
) -> None:
    """Issue SUBJECT a certificate within your own authority; write its whole chain to --out."""
    options = ctx.find_object(GlobalOptions)
    assert options is not None
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
    click.echo(cert_id)
    click.echo(
        f"granted {','.join(actions)} on {granted_scope.describe()} to {subject_id} until "
        f"{iso_utc(not_after)}" + (" (may delegate)" if delegate else "") + f"; chain in {out}",
        err=True,
    )
    if record:
        _run(ctx, lambda c: c.record_grant(chain))


@main.command("revoke")
@click.argument("cert_id")
@click.option("--reason", default="", help="Why (kept in the revocation and the audit log).")
@click.option(
    "--chain",
    "chain_file",
    type=click.Path(dir_okay=False),
    help="The revoked key's chain file (else the coordinator's copy is used).",
)
@click.pass_context
def revoke_command(ctx: click.Context, cert_id: str, reason: str, chain_file: str | None) -> None:
    """Revoke the certificate CERT_ID (and every chain through it), for good."""
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
            if certificate_id(chain.certificates[-1]) != target:
                raise click.ClickException("the coordinator returned the wrong chain")
            certificates_of(chain)  # signatures verify: the coordinator cannot forge them
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
    click.echo(f"revoked {cert_id}")


# ---------------------------------------------------------------- audit


@main.group("audit", invoke_without_command=True)
@click.option("--since", help="Only entries since this time (ISO 8601) or duration ago (2h, 7d).")
@click.option("--actor", help="Only entries of this actor (node id or its prefix).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
@click.option("--verify", "check", is_flag=True, help="Same as `fleetctl audit verify`.")
@click.pass_context
def audit_group(
    ctx: click.Context, since: str | None, actor: str | None, as_json: bool, check: bool
) -> None:
    """List the audit log (or verify / export it, see the subcommands)."""
    if ctx.invoked_subcommand is not None:
        return
    if check:
        ctx.invoke(audit_verify, export_file=None, trust_roots=())
        return
    try:
        since_time = parse_since(since, time.time()) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from exc
    fetched = _run(ctx, fetch_log)
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
    "--trust-root",
    "trust_roots",
    multiple=True,
    help="Trust root NODEID to check authority against (default: the root of your --cert).",
)
@click.pass_context
def audit_verify(ctx: click.Context, export_file: str | None, trust_roots: tuple[str, ...]) -> None:
    """Check the whole log: hash chain, every signature, checkpoints, authority."""
    roots = frozenset(parse_node_id_or_fail(r, "--trust-root") for r in trust_roots)
    if export_file is not None:
        if not roots:
            raise click.UsageError("--file needs --trust-root NODEID (offline, nothing else)")
        try:
            with open(export_file, encoding="utf-8") as lines:
                exported = read_export(lines)
        except (OSError, UnicodeDecodeError, ExportError) as exc:
            raise click.ClickException(f"{export_file}: {exc}") from exc
        entries, checkpoints, coordinator = (
            exported.entries,
            exported.checkpoints,
            exported.coordinator,
        )
    else:
        options = ctx.find_object(GlobalOptions)
        assert options is not None
        settings = _settings(options)
        if not roots:
            identity = load_key_or_fail(settings.key)
            roots = roots_of(identity.node_id, _load_chain(settings.cert))
        fetched = _run(ctx, fetch_log)
        entries, checkpoints = fetched.entries, fetched.checkpoints
        coordinator = settings.coordinator.node_id
    try:
        report = verify(entries, checkpoints, coordinator, roots)
    except AuditVerifyError as exc:
        _fail(f"audit log is NOT intact: {exc}", 1)
    click.echo(report.summary())


@audit_group.command("export")
@click.option("--out", "out", type=click.Path(dir_okay=False), help="File (default stdout).")
@click.pass_context
def audit_export(ctx: click.Context, out: str | None) -> None:
    """Write the log and its checkpoints as JSON lines, verifiable offline."""
    if out is not None and not Path(out).parent.is_dir():
        raise click.BadParameter(f"no directory {Path(out).parent}", param_hint="--out")
    options = ctx.find_object(GlobalOptions)
    assert options is not None
    coordinator = _settings(options).coordinator.node_id
    fetched = _run(ctx, fetch_log)
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
    click.echo(f"exported {len(fetched.entries)} entries to {out}", err=True)


if __name__ == "__main__":
    main()
