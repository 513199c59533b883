"""Coordinator settings: required values, node ids and relay URLs checked before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.coordinator.settings import SettingsError, from_mapping
from fleet.identity import Identity

ADMIN = str(Identity.generate().node_id)
RELAY = f"fleet-relay://{Identity.generate().node_id}@127.0.0.1:3340"


def base(**over: object) -> dict[str, object]:
    settings: dict[str, object] = {
        "key": "/k",
        "listen": "127.0.0.1:0",
        "state_dir": "/s",
        "admin": [ADMIN],
    }
    settings.update(over)
    return settings


def test_valid_settings() -> None:
    s = from_mapping(base(relay=RELAY, admin=[ADMIN, ADMIN], listen="[::1]:7000"))
    assert s.listen == ("::1", 7000)
    assert [str(r) for r in s.relays] == [RELAY]
    assert [str(a) for a in s.admins] == [ADMIN]  # duplicates collapse
    assert s.database == Path("/s/coordinator.db")


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"state_dir": None}, "--state-dir"),
        ({"admin": []}, "--admin"),
        ({"admin": ["nope"]}, "admin: 'nope'"),
        ({"relay": ["http://x"]}, "relay:"),
        ({"listen": "example.org:7000"}, "IP:PORT"),
        ({"listen": "127.0.0.1:70000"}, "port"),
        ({"admin": 7}, "list of strings"),
        ({"log_level": "loud"}, "log-level"),
    ],
)
def test_bad_settings_are_named(over: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        from_mapping(base(**over))
