"""`fleet relay`: run a relay server (TLS by default) until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import ipaddress
import signal
from typing import Any

import click

from fleet.cli.common import ConfigurationError, bad_settings_exit_config, load_key_or_fail
from fleet.config import ConfigError, merge_settings
from fleet.identity import Identity
from fleet.log import get_logger, setup_logging
from fleet.relay.protocol import ServerSessionConfig
from fleet.relay.server import RelayServer, RelayServerConfig

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
    "stun_listen",
    "log_level",
)


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    """HOST:PORT or [IPV6]:PORT; port 0 means any free port."""
    if not isinstance(text, str):
        raise click.BadParameter(f"expected HOST:PORT, got {text!r}", param_hint=what)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":")
    if not host or not port_text.isdigit() or int(port_text) > 65535:
        raise click.BadParameter(f"expected HOST:PORT, got {text!r}", param_hint=what)
    return host, int(port_text)


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
    help="UDP HOST:PORT to answer STUN Binding requests on (off unless given; usually :3478).",
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
    host, port = parse_host_port(settings["listen"], "listen")
    insecure = bool(settings.get("insecure_no_tls", False))
    if insecure and not _is_loopback(host):
        raise click.UsageError(
            f"--insecure-no-tls only listens on loopback addresses; refusing {host!r}"
        )
    metrics_listen = None
    if settings.get("metrics_listen"):
        metrics_listen = parse_host_port(settings["metrics_listen"], "metrics-listen")
    stun_listen = None
    if settings.get("stun_listen"):
        stun_listen = parse_host_port(settings["stun_listen"], "stun-listen")
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
    log = get_logger("fleet.relay")
    server = RelayServer(identity, config)
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await server.run(host, port, metrics_listen=metrics_listen, stun_listen=stun_listen)
    except asyncio.CancelledError:
        log.info("relay_signal", action="shutdown")
    except OSError as exc:
        raise click.ClickException(f"cannot start the relay: {exc.strerror or exc}") from exc
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
