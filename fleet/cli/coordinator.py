"""`fleet coordinator`: the registry, announcement store and status hub, until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from fleet.cli.common import ConfigurationError, load_key_or_fail
from fleet.config import SettingsError, prepare_state_dir
from fleet.coordinator import daemon
from fleet.coordinator import settings as coordinator_settings
from fleet.coordinator.database import DatabaseError
from fleet.coordinator.settings import CoordinatorSettings
from fleet.daemon import run_until_signal
from fleet.identity import Identity
from fleet.log import setup_logging


@click.command("coordinator")
@click.option("--key", type=click.Path(dir_okay=False), help="The coordinator's key file.")
@click.option("--listen", help="IP:PORT for the mesh endpoint (UDP; port 0: any free port).")
@click.option("--relay", multiple=True, help="Relay URL (fleet-relay://NODEID@HOST:PORT).")
@click.option("--state-dir", type=click.Path(file_okay=False), help="Where the database lives.")
@click.option(
    "--trust-root",
    multiple=True,
    help="Organization trust root NODEID; admins need a chain from one (repeatable).",
)
@click.option(
    "--checkpoint-interval",
    type=float,
    help="Seconds between signed checkpoints of the audit head (default 60).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    help="Mesh connections from agents before new ones are refused (default 12288; known "
    "admins have a reserve beyond it).",
)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML settings.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
def coordinator(config_file: str | None, **flags: Any) -> None:
    """Keep the device registry, store signed pushes durably and deliver them to agents."""
    try:
        settings = coordinator_settings.load(config_file, flags)
        prepare_state_dir(settings.state_dir)
    except SettingsError as exc:
        raise ConfigurationError(str(exc)) from exc
    setup_logging(settings.log_level)
    identity = load_key_or_fail(settings.key)
    asyncio.run(_serve(settings, identity))


async def _serve(settings: CoordinatorSettings, identity: Identity) -> None:
    try:
        await run_until_signal(daemon.run(settings, identity), "coordinator")
    except DatabaseError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(
            f"cannot start: {exc.strerror or exc} ({settings.listen[0]}:{settings.listen[1]}, "
            f"{settings.state_dir})"
        ) from exc
