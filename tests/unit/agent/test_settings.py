"""Agent settings: every value checked at start-up, the message naming the setting."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from fleet.agent.settings import from_mapping
from fleet.config import SettingsError
from fleet.identity import Identity

ROOT = str(Identity.generate().node_id)
COORDINATOR = str(Identity.generate().node_id)
KEY = "cache.example.org-1:" + base64.b64encode(bytes(32)).decode()
RELAY = f"fleet-relay://{Identity.generate().node_id}@relay.example.org:4433"


def base(**over: object) -> dict[str, object]:
    settings: dict[str, object] = {
        "coordinator": f"{COORDINATOR}@203.0.113.1:7443",
        "trust_root": [ROOT],
        "substituter": ["https://cache.example.org"],
        "trusted_public_key": [KEY],
    }
    settings.update(over)
    return {k: v for k, v in settings.items() if v is not None}


def test_valid_settings_and_defaults() -> None:
    s = from_mapping(base(relay=RELAY, tag=["kiosk", "tag:lobby"], trust_root=[ROOT, ROOT]))
    assert str(s.coordinator.node_id) == COORDINATOR
    assert s.coordinator.addrs == (("203.0.113.1", 7443),)
    assert [str(r) for r in s.trust_roots] == [ROOT]  # duplicates collapse
    assert s.relays == (RELAY,)
    assert s.tags == ("kiosk", "lobby")
    assert s.trusted_public_keys == (KEY,)
    assert s.listen == ("0.0.0.0", 0)
    assert s.key == Path("/etc/ssh/ssh_host_ed25519_key")
    assert s.state_dir == Path("/var/lib/fleet-agent")
    assert s.log_level == "info"
    assert s.welcome_timeout == 30.0
    assert s.reconnect_spread == 10.0
    timed = from_mapping(base(welcome_timeout=45, reconnect_spread=0))
    assert (timed.welcome_timeout, timed.reconnect_spread) == (45.0, 0.0)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"coordinator": None}, "--coordinator is required"),
        ({"coordinator": "nope@1.2.3.4:5"}, "--coordinator: 'nope@1.2.3.4:5': bad node id"),
        ({"coordinator": f"{COORDINATOR}@host"}, "--coordinator: .*HOST:PORT"),
        ({"trust_root": []}, "--trust-root is required"),
        ({"trust_root": [ROOT, "abc"]}, "--trust-root: 'abc'"),
        ({"trust_root": 7}, "--trust-root: expected a list of strings"),
        ({"substituter": []}, "--substituter and --trusted-public-key are required"),
        ({"substituter": ["cache.example.org"]}, "--substituter: 'cache.example.org'"),
        ({"trusted_public_key": []}, "are required"),
        ({"trusted_public_key": ["cache.example.org-1"]}, "--trusted-public-key: .*NAME:BASE64"),
        ({"trusted_public_key": [KEY[:-4] + "="]}, "--trusted-public-key: .*bytes"),
        ({"relay": ["https://relay.example.org"]}, "--relay: .*unknown scheme"),
        ({"listen": "0.0.0.0"}, "--listen: .*HOST:PORT"),
        ({"log_level": "loud"}, "--log-level: 'loud'"),
        ({"key": 5}, "--key: expected a string"),
        ({"welcome_timeout": 0}, "--welcome-timeout: 0 seconds; must be positive"),
        ({"welcome_timeout": "10s"}, "--welcome-timeout: expected seconds"),
        ({"reconnect_spread": -1}, "--reconnect-spread: -1 seconds; must be at least 0"),
        ({"reconnect_spread": float("inf")}, "--reconnect-spread: inf"),
    ],
)
def test_bad_settings_are_named(over: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        from_mapping(base(**over))
