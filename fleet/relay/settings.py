"""Settings of `fleet relay`, checked once at start-up: `load(config_file, flags)`.

The same shape as every role's settings module (fleet/agent/settings.py,
fleet/coordinator/settings.py): `KNOWN` names the settings, `from_mapping` checks merged
values, `load` merges TOML and flags (flags win) and checks them; a setting that cannot be
used raises fleet.config.SettingsError, which the daemon turns into exit status 78.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.config import SettingsError, merge_settings
from fleet.netaddr import InvalidAddress, parse_host_port
from fleet.relay.protocol import ServerSessionConfig
from fleet.relay.server import RelayServerConfig

KNOWN = (
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


@dataclass(frozen=True)
class RelaySettings:
    key: Path
    listen: tuple[str, int]  # TCP address (port 0: any free port)
    server: RelayServerConfig
    metrics_listen: tuple[str, int] | None = None
    stun_listen: tuple[str, int] | None = None  # None: no STUN (`--no-stun`)
    log_level: str = "info"


def load(config_file: str | Path | None, flags: Mapping[str, Any]) -> RelaySettings:
    """TOML overlaid by the flags that were given, checked. Raises SettingsError."""
    settings = merge_settings(config_file, flags, KNOWN)
    # A flag wins over the file in either direction, for STUN as for anything else.
    if flags.get("stun") is False and flags.get("stun_listen") is None:
        settings.pop("stun_listen", None)  # --no-stun beats the file's stun-listen
    if flags.get("stun_listen") is not None and flags.get("stun") is None:
        settings["stun"] = True  # --stun-listen beats the file's stun = false
    return from_mapping(settings)


def from_mapping(settings: Mapping[str, Any]) -> RelaySettings:
    """Check merged settings; raises SettingsError naming the first one that is wrong."""
    if "listen" not in settings or "key" not in settings:
        raise SettingsError("--listen and --key are required (as flags or in --config)")
    host, port = _bind_address(settings["listen"], "listen")
    insecure = bool(settings.get("insecure_no_tls", False))
    if insecure and not _is_loopback(host):
        raise SettingsError(
            f"--insecure-no-tls only listens on loopback addresses; refusing {host!r}"
        )
    metrics_listen = None
    if settings.get("metrics_listen"):
        metrics_listen = _bind_address(settings["metrics_listen"], "metrics-listen")
    stun_listen = _stun_listen(settings, host)
    defaults = ServerSessionConfig()
    burst = _number(settings, "rate_burst", float, defaults.rate_burst)
    session = ServerSessionConfig(
        handshake_timeout=_number(settings, "handshake_timeout", float, defaults.handshake_timeout),
        ping_interval=_number(settings, "ping_interval", float, defaults.ping_interval),
        ping_timeout=_number(settings, "ping_timeout", float, defaults.ping_timeout),
        rate_limit=_number(settings, "rate_limit", float, defaults.rate_limit),
        rate_burst=burst,
        abuse_limit=2 * burst,
    )
    server = RelayServerConfig(
        session=session,
        max_clients=_number(settings, "max_clients", int, RelayServerConfig().max_clients),
        tls=not insecure,
    )
    return RelaySettings(
        key=Path(str(settings["key"])),
        listen=(host, port),
        server=server,
        metrics_listen=metrics_listen,
        stun_listen=stun_listen,
        log_level=str(settings.get("log_level", "info")),
    )


def _invalid(name: str, message: str) -> SettingsError:
    return SettingsError(f"Invalid value for {name}: {message}")


def _bind_address(text: object, name: str) -> tuple[str, int]:
    """An address to listen on (HOST:PORT, [IPV6]:PORT; port 0: any free port)."""
    try:
        return parse_host_port(text, any_port=True)
    except InvalidAddress as exc:
        raise _invalid(name, str(exc)) from None


def _number(settings: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = settings.get(key, default)
    try:
        result = kind(value)
    except (TypeError, ValueError):
        raise _invalid(key, f"{value!r} is not a {kind.__name__}") from None
    if result < 0:
        raise _invalid(key, f"{value!r} must not be negative")
    return result


def _stun_listen(settings: Mapping[str, Any], host: str) -> tuple[str, int] | None:
    """Where to answer STUN, or None for `--no-stun` / `stun = false`.

    On by default at the --listen host, UDP 3478, because that is where nodes ask; both
    settings in one place contradict.
    """
    enabled = settings.get("stun", True)
    if not isinstance(enabled, bool):
        raise _invalid("stun", f"expected true or false, got {enabled!r}")
    listen = settings.get("stun_listen")
    if not enabled:
        if listen is not None:
            raise SettingsError(
                "--no-stun (stun = false) and --stun-listen contradict each other; give one"
            )
        return None
    if listen is None:
        return host, STUN_PORT
    return _bind_address(listen, "stun-listen")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
