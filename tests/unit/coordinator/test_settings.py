"""Coordinator settings: required values, node ids and relay URLs checked before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.config import SettingsError
from fleet.coordinator.settings import from_mapping
from fleet.identity import Identity

ADMIN = str(Identity.generate().node_id)
RELAY = f"fleet-relay://{Identity.generate().node_id}@127.0.0.1:3340"


def base(**over: object) -> dict[str, object]:
    settings: dict[str, object] = {
        "key": "/k",
        "listen": "127.0.0.1:0",
        "state_dir": "/s",
        "trust_root": [ADMIN],
    }
    settings.update(over)
    return settings


def test_valid_settings() -> None:
    s = from_mapping(base(relay=RELAY, trust_root=[ADMIN, ADMIN], listen="[::1]:7000"))
    assert s.listen == ("::1", 7000)
    assert [str(r) for r in s.relays] == [RELAY]
    assert [str(a) for a in s.trust_roots] == [ADMIN]  # duplicates collapse
    assert s.database == Path("/s/coordinator.db")
    assert s.max_connections == 12_288  # 10,000 agents with headroom
    assert from_mapping(base(max_connections=30_000)).max_connections == 30_000


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"state_dir": None}, "--state-dir"),
        ({"trust_root": []}, "--trust-root"),
        ({"trust_root": ["nope"]}, "trust-root: 'nope'"),
        ({"relay": ["http://x"]}, "relay:"),
        ({"listen": "example.org:7000"}, "IP:PORT"),
        ({"listen": "127.0.0.1:70000"}, "port"),
        ({"trust_root": 7}, "list of strings"),
        ({"checkpoint_interval": 0}, "checkpoint-interval"),
        ({"log_level": "loud"}, "log-level"),
        ({"max_connections": 0}, "max-connections must be at least 1"),
        ({"max_connections": "many"}, "max-connections: 'many' is not a whole number"),
        ({"max_connections": 1.5}, "max-connections"),
    ],
)
def test_bad_settings_are_named(over: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        from_mapping(base(**over))
