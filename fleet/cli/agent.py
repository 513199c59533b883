"""`fleet agent`: keep a device at the system its admins announce (see docs/agent.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from fleet.agent.apply import ApplyConfig
from fleet.agent.daemon import AgentSettings, run_agent
from fleet.agent.state import StateError
from fleet.cli.common import load_key_or_fail, parse_node_id_or_fail
from fleet.cli.relay import parse_host_port
from fleet.config import ConfigError, merge_settings
from fleet.identity import InvalidLabel, normalize_tags
from fleet.log import setup_logging
from fleet.mesh.peer_addr import InvalidPeerAddr, PeerAddr
from fleet.nix import NixStore
from fleet.relay.url import RelayUrl

SETTINGS = (
    "key",
    "coordinator",
    "relay",
    "state_dir",
    "trust_root",
    "tag",
    "substituter",
    "trusted_public_key",
    "nix_store",
    "profile",
    "listen",
    "log_level",
)

DEFAULT_KEY = "/etc/ssh/ssh_host_ed25519_key"
DEFAULT_STATE_DIR = "/var/lib/fleet-agent"


def _list(settings: dict[str, Any], key: str) -> list[str]:
    """A repeatable setting: several flags, a TOML list, or a single TOML string."""
    value = settings.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise click.BadParameter(f"expected a list of strings, got {value!r}", param_hint=key)
    return value


def _text(settings: dict[str, Any], key: str, default: str | None = None) -> str | None:
    value = settings.get(key, default)
    if value is not None and not isinstance(value, str):
        raise click.BadParameter(f"expected a string, got {value!r}", param_hint=key)
    return value


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
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
def agent(config_file: str | None, **flags: Any) -> None:
    """Apply admin-signed system announcements from the coordinator and report status."""
    try:
        settings = merge_settings(config_file, flags, SETTINGS)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    coordinator_text = _text(settings, "coordinator")
    if not coordinator_text:
        raise click.UsageError("--coordinator is required (as a flag or in --config)")
    try:
        coordinator = PeerAddr.parse(coordinator_text)
    except InvalidPeerAddr as exc:
        raise click.BadParameter(str(exc), param_hint="coordinator") from exc
    roots = tuple(
        dict.fromkeys(parse_node_id_or_fail(a, "trust-root") for a in _list(settings, "trust_root"))
    )
    if not roots:
        raise click.UsageError(
            "at least one --trust-root NODEID is required (whose certificates count)"
        )
    try:  # the same spelling as `fleetctl devices add --tag`: kiosk or tag:kiosk
        tags = normalize_tags(_list(settings, "tag"))
    except InvalidLabel as exc:
        raise click.BadParameter(str(exc), param_hint="tag") from exc
    substituters = tuple(_list(settings, "substituter"))
    keys = tuple(_list(settings, "trusted_public_key"))
    if not substituters or not keys:
        raise click.UsageError(
            "--substituter and --trusted-public-key are required: the agent fetches only "
            "from caches and with keys of its own configuration"
        )
    relays = []
    for url in _list(settings, "relay"):
        try:
            relays.append(str(RelayUrl.parse(url)))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="relay") from exc
    listen = parse_host_port(_text(settings, "listen", "0.0.0.0:0") or "", "listen")  # port 0 ok
    nix_store = _text(settings, "nix_store")
    store = NixStore.chroot(Path(nix_store)) if nix_store else NixStore()
    profile_text = _text(settings, "profile")
    profile = Path(profile_text) if profile_text else store.system_profile
    setup_logging(str(settings.get("log_level", "info")))
    identity = load_key_or_fail(_text(settings, "key", DEFAULT_KEY) or DEFAULT_KEY)
    config = ApplyConfig(
        store=store, profile=profile, substituters=substituters, trusted_public_keys=keys
    )
    state_dir = Path(_text(settings, "state_dir", DEFAULT_STATE_DIR) or DEFAULT_STATE_DIR)
    try:
        asyncio.run(
            run_agent(
                AgentSettings(
                    identity=identity,
                    coordinator=coordinator,
                    relays=tuple(relays),
                    state_dir=state_dir,
                    trust_roots=roots,
                    apply=config,
                    listen=listen,
                    tags=tags,
                )
            )
        )
    except StateError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot start the agent: {exc}") from exc
