"""Settings of `fleet coordinator`, checked once at start-up: `load(config_file, flags)`.

The shape of every role's settings module (see fleet/config.py): `KNOWN`, `from_mapping`,
`load`, and fleet.config.SettingsError for a setting that cannot be used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.config import SettingsError, merge_settings
from fleet.identity import InvalidNodeId, NodeId
from fleet.mesh.config import DEFAULT_MAX_CONNECTIONS
from fleet.netaddr import InvalidAddress, parse_host_port
from fleet.relay.url import InvalidRelayUrl, RelayUrl

KNOWN = (
    "key",
    "listen",
    "relay",
    "state_dir",
    "trust_root",
    "checkpoint_interval",
    "max_connections",
    "log_level",
)
DEFAULT_CHECKPOINT_INTERVAL = 60.0
DB_NAME = "coordinator.db"


@dataclass(frozen=True)
class CoordinatorSettings:
    key: Path
    listen: tuple[str, int]  # UDP address of the mesh endpoint (port 0: any free port)
    relays: tuple[RelayUrl, ...]
    state_dir: Path
    trust_roots: tuple[NodeId, ...]
    log_level: str = "info"
    checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL  # seconds between audit checkpoints
    # Mesh connections from agents and unknown nodes; known admins have a reserve beyond it.
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    @property
    def database(self) -> Path:
        return self.state_dir / DB_NAME


def _as_list(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    raise SettingsError(f"{name}: expected a string or a list of strings, got {value!r}")


def parse_listen(text: Any) -> tuple[str, int]:
    """IP:PORT or [IPV6]:PORT; a UDP socket binds to an address, not a host name."""
    try:
        return parse_host_port(text, any_port=True, ip_only=True)
    except InvalidAddress as exc:
        raise SettingsError(f"listen: {exc}") from None


def load(config_file: str | Path | None, flags: Mapping[str, Any]) -> CoordinatorSettings:
    """TOML overlaid by the flags that were given, checked. Raises SettingsError."""
    return from_mapping(merge_settings(config_file, flags, KNOWN))


def from_mapping(settings: Mapping[str, Any]) -> CoordinatorSettings:
    missing = [k for k in ("key", "listen", "state_dir") if not settings.get(k)]
    if missing:
        raise SettingsError(
            "required: "
            + ", ".join("--" + m.replace("_", "-") for m in missing)
            + " (as flags or in --config)"
        )
    roots = []
    for text in _as_list(settings.get("trust_root", []), "trust-root"):
        try:
            roots.append(NodeId.parse(text))
        except InvalidNodeId as exc:
            raise SettingsError(f"trust-root: {text!r}: {exc}") from None
    if not roots:
        raise SettingsError(
            "at least one --trust-root NODEID is required (the organization's root key, "
            "from `fleetctl org init`)"
        )
    interval = settings.get("checkpoint_interval", DEFAULT_CHECKPOINT_INTERVAL)
    try:
        interval = float(interval)
    except (TypeError, ValueError):
        raise SettingsError(f"checkpoint-interval: {interval!r} is not seconds") from None
    if not interval > 0:
        raise SettingsError("checkpoint-interval must be positive")
    max_connections = settings.get("max_connections", DEFAULT_MAX_CONNECTIONS)
    if isinstance(max_connections, bool) or not isinstance(max_connections, int):
        raise SettingsError(f"max-connections: {max_connections!r} is not a whole number")
    if max_connections < 1:
        raise SettingsError("max-connections must be at least 1")
    relays = []
    for text in _as_list(settings.get("relay", []), "relay"):
        try:
            relays.append(RelayUrl.parse(text))
        except InvalidRelayUrl as exc:
            raise SettingsError(f"relay: {exc}") from None
    level = str(settings.get("log_level", "info"))
    if level not in ("debug", "info", "warning", "error"):
        raise SettingsError(f"log-level: {level!r} is not debug, info, warning or error")
    return CoordinatorSettings(
        key=Path(str(settings["key"])),
        listen=parse_listen(settings["listen"]),
        relays=tuple(relays),
        state_dir=Path(str(settings["state_dir"])),
        trust_roots=tuple(dict.fromkeys(roots)),
        log_level=level,
        checkpoint_interval=interval,
        max_connections=max_connections,
    )
