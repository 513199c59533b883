"""Where fleetctl finds its coordinator, key and relays: flags, then environment, then file.

Precedence is flag > environment (FLEET_COORDINATOR, FLEET_KEY, FLEET_CERT, FLEET_RELAY) >
config file
(`--config FILE`, else `$XDG_CONFIG_HOME/fleet/fleetctl.toml` or ~/.config/fleet/fleetctl.toml
when it exists). Pure: the caller passes the environment and the home directory in.

The shape of every role's settings module (see fleet/config.py): `KNOWN` (the flags),
`load(config_file, flags, env=..., home=...)`, and fleet.config.SettingsError for a setting
that cannot be used; fleetctl has a third source, the environment, and no daemon to stop, so
it reports the error with its own exit codes (docs/fleetctl.md).

The binary caches and Nix keys `push` checks a closure against are spelled as in the agent's
TOML (`substituter`, `trusted-public-key` or `trusted_public_key`), so the lines can be
copied from a device's configuration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.config import SettingsError, load_toml
from fleet.mesh.peer_addr import InvalidPeerAddr, PeerAddr
from fleet.nix.keys import NixPublicKey
from fleet.nix.narinfo import NarInfoError, parse_public_key
from fleet.relay.url import InvalidRelayUrl, RelayUrl

ENV_COORDINATOR = "FLEET_COORDINATOR"
ENV_KEY = "FLEET_KEY"
ENV_CERT = "FLEET_CERT"
ENV_RELAY = "FLEET_RELAY"  # several relays: separated by commas or whitespace
ENV_STATE_DIR = "FLEET_STATE_DIR"
DEFAULT_TIMEOUT = 10.0
KNOWN = ("coordinator", "key", "cert", "relay", "timeout")  # the flags `load` takes
FILE_KEYS = (
    "coordinator", "key", "cert", "relay", "timeout", "substituter", "trusted-public-key",
    "state-dir",
)  # fmt: skip
_FILE_ALIASES = {"trusted_public_key": "trusted-public-key"}  # the agent accepts both
_LISTS = ("relay", "substituter", "trusted-public-key")


@dataclass(frozen=True, slots=True)
class Settings:
    coordinator: PeerAddr
    key: Path
    relays: tuple[RelayUrl, ...]
    timeout: float  # connecting, and each request/reply
    cert: Path | None = None  # the admin's capability chain file (None: the key is a root)


@dataclass(frozen=True, slots=True)
class Credentials:
    key: Path
    cert: Path | None


def default_config_path(env: Mapping[str, str], home: Path) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(home / ".config")
    return Path(base) / "fleet" / "fleetctl.toml"


def _file_values(path: Path) -> dict[str, Any]:
    raw = load_toml(path)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = _FILE_ALIASES.get(key, key)
        if name not in FILE_KEYS:
            raise SettingsError(f"{path}: unknown setting {key!r}; known: {', '.join(FILE_KEYS)}")
        if name in values:
            raise SettingsError(f"{path}: {name} is set twice")
        values[name] = value
    for key in ("coordinator", "key", "cert", "state-dir"):
        if key in values and not isinstance(values[key], str):
            raise SettingsError(f"{path}: {key} must be a string")
    for key in _LISTS:
        if isinstance(values.get(key), str):
            values[key] = [values[key]]
        items = values.get(key, [])
        if not isinstance(items, list) or not all(isinstance(r, str) for r in items):
            raise SettingsError(f"{path}: {key} must be a string or a list of strings")
    timeout = values.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)):
        raise SettingsError(f"{path}: timeout must be a number of seconds")
    return values


def _file_of(
    config_file: str | None, env: Mapping[str, str], home: Path
) -> tuple[dict[str, Any], str]:
    if config_file is not None:
        return _file_values(Path(config_file)), str(config_file)
    default = default_config_path(env, home)
    return (_file_values(default) if default.is_file() else {}), str(default)


def resolve_credentials(
    *,
    key: str | None,
    cert: str | None,
    config_file: str | None,
    env: Mapping[str, str],
    home: Path,
) -> Credentials:
    """Just the key and the chain file (for commands that need no coordinator)."""
    file_values, source = _file_of(config_file, env, home)
    key_text = key or env.get(ENV_KEY) or file_values.get("key")
    if not key_text:
        raise SettingsError(f"no admin key: give --key PATH, set {ENV_KEY}, or set key in {source}")
    cert_text = cert or env.get(ENV_CERT) or file_values.get("cert")
    return Credentials(
        key=Path(key_text).expanduser(),
        cert=Path(cert_text).expanduser() if cert_text else None,
    )


def load(
    config_file: str | None,
    flags: Mapping[str, Any],
    *,
    env: Mapping[str, str],
    home: Path,
) -> Settings:
    """Merge the three sources (`flags` by the names in KNOWN; None or empty: not given);
    raises SettingsError naming what is missing or malformed."""
    unknown = set(flags) - set(KNOWN)
    if unknown:
        raise ValueError(f"not fleetctl settings: {sorted(unknown)}")  # a caller's bug
    coordinator: str | None = flags.get("coordinator")
    key: str | None = flags.get("key")
    cert: str | None = flags.get("cert")
    relays: Sequence[str] = flags.get("relay") or ()
    timeout: float | None = flags.get("timeout")
    file_values, source = _file_of(config_file, env, home)

    coord_text = coordinator or env.get(ENV_COORDINATOR) or file_values.get("coordinator")
    if not coord_text:
        raise SettingsError(
            f"no coordinator: give --coordinator NODEID[@HOST:PORT], set {ENV_COORDINATOR}, "
            f"or set coordinator in {source}"
        )
    try:
        peer = PeerAddr.parse(coord_text)
    except InvalidPeerAddr as exc:
        raise SettingsError(f"coordinator: {exc}") from exc

    credentials = resolve_credentials(
        key=key, cert=cert, config_file=config_file, env=env, home=home
    )

    relay_texts: list[str]
    if relays:
        relay_texts = list(relays)
    elif env.get(ENV_RELAY, "").strip():
        relay_texts = env[ENV_RELAY].replace(",", " ").split()
    else:
        relay_texts = list(file_values.get("relay", []))
    try:
        relay_urls = tuple(RelayUrl.parse(r) for r in relay_texts)
    except InvalidRelayUrl as exc:
        raise SettingsError(f"relay: {exc}") from exc

    if not peer.addrs and not relay_urls:
        raise SettingsError(
            f"coordinator {peer.node_id.short()}: no address and no relay to reach it; "
            "give NODEID@HOST:PORT or --relay URL"
        )
    final_timeout = float(
        timeout if timeout is not None else file_values.get("timeout", DEFAULT_TIMEOUT)
    )
    if final_timeout <= 0:
        raise SettingsError(f"timeout must be positive, got {final_timeout}")
    return Settings(
        coordinator=peer,
        key=credentials.key,
        relays=relay_urls,
        timeout=final_timeout,
        cert=credentials.cert,
    )


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """Where `push` checks that the closure is, and whose Nix signatures count."""

    caches: tuple[str, ...]  # empty: nothing configured (push warns and does not check)
    trusted_public_keys: tuple[NixPublicKey, ...]
    source: str = ""  # the config file consulted, for messages


def resolve_cache_settings(
    *,
    caches: Sequence[str],
    trusted_public_keys: Sequence[str],
    config_file: str | None,
    env: Mapping[str, str],
    home: Path,
) -> CacheSettings:
    """Flags (`--cache`, `--trusted-public-key`) over the file's `substituter` and
    `trusted-public-key`; every key must parse."""
    file_values, source = _file_of(config_file, env, home)
    cache_texts = list(caches) or list(file_values.get("substituter", []))
    key_texts = list(trusted_public_keys) or list(file_values.get("trusted-public-key", []))
    keys = []
    for text in key_texts:
        try:
            keys.append(parse_public_key(text))
        except NarInfoError as exc:
            raise SettingsError(f"trusted-public-key: {exc}") from exc
    return CacheSettings(
        tuple(dict.fromkeys(cache_texts)), tuple(dict.fromkeys(keys)), source=source
    )


def resolve_state_dir(
    *, state_dir: str | None, config_file: str | None, env: Mapping[str, str], home: Path
) -> Path:
    """Where fleetctl keeps what it must remember (audit checkpoints it saw): `--state-dir`,
    then FLEET_STATE_DIR, then the file's `state-dir`, then $XDG_STATE_HOME/fleet, then
    ~/.local/state/fleet."""
    file_values, _ = _file_of(config_file, env, home)
    text = state_dir or env.get(ENV_STATE_DIR) or file_values.get("state-dir")
    if text:
        return Path(text).expanduser()
    base = env.get("XDG_STATE_HOME") or str(home / ".local" / "state")
    return Path(base) / "fleet"
