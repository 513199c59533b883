"""Settings of `fleet agent`, checked once at start-up: `load(config_file, flags)`.

The shape of every role's settings module (see fleet/config.py): `KNOWN`, `from_mapping`,
`load`, and fleet.config.SettingsError for a setting that cannot be used.

Everything that can be checked without the network is checked here, so a typo in a key, a
cache URL, a node id or a relay URL stops the agent at once with a message naming the
setting, instead of surfacing as a failed download at the first push days later.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fleet.agent.session import DEFAULT_RECONNECT_SPREAD, DEFAULT_WELCOME_TIMEOUT
from fleet.config import SettingsError, merge_settings
from fleet.identity import InvalidNodeId, NodeId, normalize_tag, normalize_tags
from fleet.mesh.peer_addr import InvalidPeerAddr, PeerAddr
from fleet.netaddr import InvalidAddress, parse_host_port
from fleet.nix.keys import NixPublicKey
from fleet.nix.substituters import check_substituter
from fleet.relay.url import RelayUrl

KNOWN = (
    "key",
    "coordinator",
    "relay",
    "state_dir",
    "trust_root",
    "tag",
    "enroll_token",
    "substituter",
    "trusted_public_key",
    "nix_store",
    "profile",
    "listen",
    "welcome_timeout",
    "reconnect_spread",
    "log_level",
)
DEFAULT_KEY = Path("/etc/ssh/ssh_host_ed25519_key")
DEFAULT_STATE_DIR = Path("/var/lib/fleet-agent")
DEFAULT_LISTEN = "0.0.0.0:0"
LOG_LEVELS = ("debug", "info", "warning", "error")

T = TypeVar("T")


@dataclass(frozen=True)
class AgentConfig:
    """The agent's settings as text was turned into values; the key file is not read yet."""

    key: Path
    coordinator: PeerAddr
    relays: tuple[str, ...]
    state_dir: Path
    trust_roots: tuple[NodeId, ...]
    tags: tuple[str, ...]
    substituters: tuple[str, ...]
    trusted_public_keys: tuple[str, ...]
    nix_store: Path | None
    profile: Path | None
    listen: tuple[str, int]
    log_level: str
    welcome_timeout: float = DEFAULT_WELCOME_TIMEOUT  # seconds from Hello to Welcome (or Busy)
    reconnect_spread: float = DEFAULT_RECONNECT_SPREAD  # first redial after a session ended
    enroll_token: Path | None = None  # a token file for the first connection (read at start)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _list(settings: Mapping[str, Any], name: str) -> list[str]:
    """A repeatable setting: several flags, a TOML list, or a single TOML string."""
    value = settings.get(name, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise SettingsError(f"{_flag(name)}: expected a list of strings, got {value!r}")
    return list(value)


def _text(settings: Mapping[str, Any], name: str) -> str | None:
    value = settings.get(name)
    if value is not None and not isinstance(value, str):
        raise SettingsError(f"{_flag(name)}: expected a string, got {value!r}")
    return value or None


def _each(settings: Mapping[str, Any], name: str, parse: Callable[[str], T]) -> list[T]:
    """Every value of a repeatable setting through `parse` (which raises ValueErrors)."""
    parsed: list[T] = []
    for text in _list(settings, name):
        try:
            parsed.append(parse(text))
        except ValueError as exc:
            raise SettingsError(f"{_flag(name)}: {exc}") from None
    return parsed


def _seconds(settings: Mapping[str, Any], name: str, default: float, *, zero: bool) -> float:
    """A duration in seconds (a TOML integer or float); positive, or also 0 if `zero`."""
    value = settings.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingsError(f"{_flag(name)}: expected seconds, got {value!r}")
    if not (value >= 0 if zero else value > 0) or value == float("inf"):
        bound = "at least 0" if zero else "positive"
        raise SettingsError(f"{_flag(name)}: {value!r} seconds; must be {bound} and finite")
    return float(value)


def _node_id(text: str) -> NodeId:
    try:
        return NodeId.parse(text)
    except InvalidNodeId as exc:
        raise InvalidNodeId(f"{text!r}: {exc}") from None


def load(config_file: str | Path | None, flags: Mapping[str, Any]) -> AgentConfig:
    """TOML overlaid by the flags that were given, checked. Raises SettingsError."""
    return from_mapping(merge_settings(config_file, flags, KNOWN))


def from_mapping(settings: Mapping[str, Any]) -> AgentConfig:
    """Check every setting; raises SettingsError naming the first one that is wrong."""
    coordinator_text = _text(settings, "coordinator")
    if coordinator_text is None:
        raise SettingsError("--coordinator is required (NODEID[@HOST:PORT...], flag or config)")
    try:
        coordinator = PeerAddr.parse(coordinator_text)
    except InvalidPeerAddr as exc:
        raise SettingsError(f"--coordinator: {exc}") from None
    roots = tuple(dict.fromkeys(_each(settings, "trust_root", _node_id)))
    if not roots:
        raise SettingsError(
            "--trust-root is required: the organization's root NODEID, whose certificates count"
        )
    substituters = tuple(_each(settings, "substituter", check_substituter))
    _each(settings, "trusted_public_key", NixPublicKey.parse)
    keys = tuple(_list(settings, "trusted_public_key"))  # as written: Nix reads them itself
    if not substituters or not keys:
        raise SettingsError(
            "--substituter and --trusted-public-key are required: the agent fetches only "
            "from caches and with keys of its own configuration"
        )
    relays = tuple(str(r) for r in _each(settings, "relay", RelayUrl.parse))
    listen_text = _text(settings, "listen") or DEFAULT_LISTEN
    try:
        listen = parse_host_port(listen_text, any_port=True)
    except InvalidAddress as exc:
        raise SettingsError(f"--listen: {exc}") from None
    level = _text(settings, "log_level") or "info"
    if level not in LOG_LEVELS:
        raise SettingsError(f"--log-level: {level!r} is not one of {', '.join(LOG_LEVELS)}")
    nix_store = _text(settings, "nix_store")
    profile = _text(settings, "profile")
    return AgentConfig(
        key=Path(_text(settings, "key") or DEFAULT_KEY),
        coordinator=coordinator,
        relays=relays,
        state_dir=Path(_text(settings, "state_dir") or DEFAULT_STATE_DIR),
        trust_roots=roots,
        tags=normalize_tags(_each(settings, "tag", normalize_tag)),  # as `devices add --tag`
        substituters=substituters,
        trusted_public_keys=keys,
        nix_store=Path(nix_store) if nix_store else None,
        profile=Path(profile) if profile else None,
        listen=listen,
        log_level=level,
        welcome_timeout=_seconds(settings, "welcome_timeout", DEFAULT_WELCOME_TIMEOUT, zero=False),
        reconnect_spread=_seconds(
            settings, "reconnect_spread", DEFAULT_RECONNECT_SPREAD, zero=True
        ),
        enroll_token=Path(token) if (token := _text(settings, "enroll_token")) else None,
    )
