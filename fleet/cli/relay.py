"""`fleet relay`: run a relay server (TLS by default) until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import click

from fleet.cli.common import (
    ConfigurationError,
    bad_settings_exit_config,
    load_key_or_fail,
    parse_bind_address_or_fail,
)
from fleet.config import ConfigError, merge_settings
from fleet.daemon import run_until_signal
from fleet.identity import Identity
from fleet.log import setup_logging
from fleet.netaddr import format_host_port
from fleet.relay.protocol import ServerSessionConfig
from fleet.relay.server import RelayServer, RelayServerConfig
from fleet.relay.stun_responder import StunListenError

SETTINGS = (
    "listen",
    "key",
    "insecure_no_tls",
    "max_clients",
    "rate_limit",
    "rate_burst",
    "handshake_timeout",
    "ping_interval",
    "ping_timeout",
    "metrics_listen",
    "stun",
    "stun_listen",
    "log_level",
)

STUN_PORT = 3478  # where nodes look for STUN: the relay URL's host (MeshConfig.relay_stun_port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _number(settings: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = settings.get(key, default)
    try:
        result = kind(value)
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(f"{value!r} is not a {kind.__name__}", param_hint=key) from exc
    if result < 0:
        raise click.BadParameter(f"{value!r} must not be negative", param_hint=key)
    return result


def _stun_listen(
    settings: dict[str, Any], flags: dict[str, Any], host: str
) -> tuple[str, int] | None:
    """Where to answer STUN, or None for `--no-stun` / `stun = false`.

    On by default at the --listen host, UDP 3478, because that is where nodes ask; a flag
    wins over the file in either direction, and both settings in one place contradict.
    """
    if flags.get("stun") is False and flags.get("stun_listen") is None:
        settings.pop("stun_listen", None)  # --no-stun beats the file's stun-listen
    if flags.get("stun_listen") is not None and flags.get("stun") is None:
        settings["stun"] = True  # --stun-listen beats the file's stun = false
    enabled = settings.get("stun", True)
    if not isinstance(enabled, bool):
        raise click.BadParameter(f"expected true or false, got {enabled!r}", param_hint="stun")
    listen = settings.get("stun_listen")
    if not enabled:
        if listen is not None:
            raise click.UsageError(
                "--no-stun (stun = false) and --stun-listen contradict each other; give one"
            )
        return None
    if listen is None:
        return host, STUN_PORT
    return parse_bind_address_or_fail(listen, "stun-listen")


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
        settings = merge_settings(config_file, flags, SETTINGS)
    except ConfigError as exc:
        raise ConfigurationError(str(exc)) from exc
    if "listen" not in settings or "key" not in settings:
        raise click.UsageError("--listen and --key are required (as flags or in --config)")
    host, port = parse_bind_address_or_fail(settings["listen"], "listen")
    insecure = bool(settings.get("insecure_no_tls", False))
    if insecure and not _is_loopback(host):
        raise click.UsageError(
            f"--insecure-no-tls only listens on loopback addresses; refusing {host!r}"
        )
    metrics_listen = None
    if settings.get("metrics_listen"):
        metrics_listen = parse_bind_address_or_fail(settings["metrics_listen"], "metrics-listen")
    stun_listen = _stun_listen(settings, flags, host)
    defaults = ServerSessionConfig()
    session = ServerSessionConfig(
        handshake_timeout=_number(settings, "handshake_timeout", float, defaults.handshake_timeout),
        ping_interval=_number(settings, "ping_interval", float, defaults.ping_interval),
        ping_timeout=_number(settings, "ping_timeout", float, defaults.ping_timeout),
        rate_limit=_number(settings, "rate_limit", float, defaults.rate_limit),
        rate_burst=_number(settings, "rate_burst", float, defaults.rate_burst),
        abuse_limit=2 * _number(settings, "rate_burst", float, defaults.rate_burst),
    )
    config = RelayServerConfig(
        session=session,
        max_clients=_number(settings, "max_clients", int, RelayServerConfig().max_clients),
        tls=not insecure,
    )
    setup_logging(str(settings.get("log_level", "info")))
    identity = load_key_or_fail(settings["key"])
    asyncio.run(_serve(identity, config, host, port, metrics_listen, stun_listen))


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
