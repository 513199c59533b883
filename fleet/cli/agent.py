"""`fleet agent`: keep a device at the system its admins announce (see docs/agent.md).

A setting that cannot be used stops the agent before it starts, with exit status 78
(EX_CONFIG); a key file that cannot be read exits 1 (it may appear later, e.g. sshd's host key).
"""

from __future__ import annotations

import asyncio
from typing import Any

import click

from fleet.agent import settings as agent_settings
from fleet.agent.daemon import AgentSettings, run_agent
from fleet.agent.enroll import read_token_file
from fleet.agent.session import SessionConfig
from fleet.agent.settings import DEFAULT_KEY, DEFAULT_STATE_DIR
from fleet.agent.state import StateError
from fleet.agent.updater import ApplyConfig
from fleet.cli.common import ConfigurationError, load_key_or_fail
from fleet.config import SettingsError, prepare_state_dir
from fleet.log import setup_logging
from fleet.netaddr import format_host_port
from fleet.nix import NixStore


@click.command("agent")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML settings.")
@click.option("--key", help=f"The device key (default {DEFAULT_KEY}; OpenSSH ed25519 works).")
@click.option("--coordinator", help="NODEID[@HOST:PORT...] of the coordinator.")
@click.option("--relay", multiple=True, help="Relay URL (repeatable).")
@click.option("--state-dir", help=f"Local state directory (default {DEFAULT_STATE_DIR}).")
@click.option(
    "--trust-root",
    multiple=True,
    help="Organization trust root NODEID; announcements need a chain from one (repeatable).",
)
@click.option(
    "--tag",
    multiple=True,
    help="A tag of this device, for scoped certificates (tag:NAME scopes; repeatable).",
)
@click.option("--substituter", multiple=True, help="Binary cache URL to fetch from (repeatable).")
@click.option(
    "--trusted-public-key", multiple=True, help="Nix signing key NAME:BASE64 (repeatable)."
)
@click.option("--nix-store", help="A chroot store directory (default: the system store).")
@click.option("--profile", help="System profile (default /nix/var/nix/profiles/system).")
@click.option("--listen", help="UDP HOST:PORT for the mesh (default 0.0.0.0:0).")
@click.option(
    "--welcome-timeout",
    type=float,
    help="Seconds to wait for the coordinator's Welcome after the Hello (default 30).",
)
@click.option(
    "--reconnect-spread",
    type=float,
    help="After a session ends, the first redial waits a random 0..SECONDS (default 10), so "
    "a fleet does not redial a restarted coordinator all at once.",
)
@click.option(
    "--enroll-token",
    type=click.Path(dir_okay=False),
    help="An enrollment token file (fleetctl enroll-token create): registers this device.",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
def agent(config_file: str | None, **flags: Any) -> None:
    """Apply admin-signed system announcements from the coordinator and report status."""
    try:
        checked = agent_settings.load(config_file, flags)
        prepare_state_dir(checked.state_dir)
    except SettingsError as exc:
        raise ConfigurationError(str(exc)) from exc
    store = NixStore.chroot(checked.nix_store) if checked.nix_store else NixStore()
    setup_logging(checked.log_level)
    identity = load_key_or_fail(checked.key)
    if checked.coordinator.node_id == identity.node_id:
        raise ConfigurationError(
            f"--coordinator: {identity.node_id.short()} is this device's own node id "
            f"(of {checked.key}); give the coordinator's"
        )
    enroll_token = None
    if checked.enroll_token is not None:
        try:
            enroll_token = read_token_file(checked.enroll_token)
        except ValueError as exc:
            raise ConfigurationError(f"--enroll-token: {exc}") from exc
    config = ApplyConfig(
        store=store,
        profile=checked.profile or store.system_profile,
        substituters=checked.substituters,
        trusted_public_keys=checked.trusted_public_keys,
    )
    try:
        asyncio.run(
            run_agent(
                AgentSettings(
                    identity=identity,
                    coordinator=checked.coordinator,
                    relays=checked.relays,
                    state_dir=checked.state_dir,
                    trust_roots=checked.trust_roots,
                    apply=config,
                    listen=checked.listen,
                    tags=checked.tags,
                    session=SessionConfig(
                        welcome_timeout=checked.welcome_timeout,
                        reconnect_spread=checked.reconnect_spread,
                    ),
                    enroll_token=enroll_token,
                )
            )
        )
    except StateError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        where = format_host_port(*checked.listen)
        raise click.ClickException(
            f"cannot start the agent (--listen {where}): {exc.strerror or exc}"
        ) from exc
