"""`fleet relay`: run a relay server (TLS by default) until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from fleet.cli.common import ConfigurationError, bad_settings_exit_config, load_key_or_fail
from fleet.config import SettingsError
from fleet.daemon import run_until_signal
from fleet.identity import Identity
from fleet.log import setup_logging
from fleet.netaddr import format_host_port
from fleet.relay import settings as relay_settings
from fleet.relay.server import RelayServer, RelayServerConfig
from fleet.relay.settings import STUN_PORT
from fleet.relay.stun_responder import StunListenError


@click.command("relay")
@click.option("--listen", help="HOST:PORT to listen on (port 0: any free port).")
@click.option("--key", type=click.Path(dir_okay=False), help="The relay's key file.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML settings.")
@click.option(
    "--insecure-no-tls",
    is_flag=True,
    default=None,
    help="Plain TCP, no TLS (loopback addresses only; for tests).",
)
@click.option("--max-clients", type=int, help="Concurrent connections (default 10000).")
@click.option("--rate-limit", type=float, help="Per-client bytes/s (default 32 MiB/s; 0: off).")
@click.option("--rate-burst", type=float, help="Per-client burst in bytes (default 4 MiB).")
@click.option("--handshake-timeout", type=float, help="Seconds to log in (default 5).")
@click.option("--ping-interval", type=float, help="Seconds between pings (default 15).")
@click.option("--ping-timeout", type=float, help="Seconds to answer a ping (default 10).")
@click.option("--metrics-listen", help="HOST:PORT for Prometheus GET /metrics.")
@click.option(
    "--stun-listen",
    help=f"UDP HOST:PORT to answer STUN on (default: the --listen host, port {STUN_PORT}).",
)
@click.option(
    "--stun/--no-stun",
    default=None,
    help="Answer STUN (default), or not: nodes behind NAT then never punch holes.",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@bad_settings_exit_config
def relay(config_file: str | None, **flags: Any) -> None:
    """Forward packets between authenticated nodes (the mesh's fallback path)."""
    try:
        settings = relay_settings.load(config_file, flags)
    except SettingsError as exc:
        raise ConfigurationError(str(exc)) from exc
    setup_logging(settings.log_level)
    identity = load_key_or_fail(settings.key)
    host, port = settings.listen
    asyncio.run(
        _serve(identity, settings.server, host, port, settings.metrics_listen, settings.stun_listen)
    )


async def _serve(
    identity: Identity,
    config: RelayServerConfig,
    host: str,
    port: int,
    metrics_listen: tuple[str, int] | None,
    stun_listen: tuple[str, int] | None,
) -> None:
    server = RelayServer(identity, config)
    try:
        await run_until_signal(
            server.run(host, port, metrics_listen=metrics_listen, stun_listen=stun_listen),
            "relay",
        )
    except StunListenError as exc:
        raise click.ClickException(
            f"{exc}; give --stun-listen HOST:PORT for another address, or --no-stun to run "
            "without STUN (nodes behind NAT then stay on the relay path)"
        ) from exc
    except OSError as exc:
        where = f"TCP {format_host_port(host, port)}"
        if metrics_listen is not None:
            where += f" or metrics {format_host_port(*metrics_listen)}"
        raise click.ClickException(
            f"cannot start the relay on {where}: {exc.strerror or exc}"
        ) from exc
