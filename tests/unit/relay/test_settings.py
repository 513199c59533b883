"""Relay settings: one loader of the roles' shape; flags win over TOML, for STUN too."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.config import EXIT_CONFIG, SettingsError
from fleet.relay.settings import STUN_PORT, from_mapping, load

BASE = {"listen": "127.0.0.1:3340", "key": "/k"}


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return path


def test_defaults_answer_stun_at_the_listen_host() -> None:
    s = from_mapping(BASE)
    assert s.listen == ("127.0.0.1", 3340)
    assert s.stun_listen == ("127.0.0.1", STUN_PORT)
    assert s.server.tls
    assert s.server.session.abuse_limit == 2 * s.server.session.rate_burst
    assert s.metrics_listen is None


def test_flags_win_over_the_file(tmp_path: Path) -> None:
    config = toml(tmp_path, 'listen = "127.0.0.1:1"\nkey = "/k"\nrate-limit = 5\nstun = false\n')
    s = load(config, {"listen": "127.0.0.1:2", "rate_limit": 7.0, "stun_listen": "127.0.0.1:9"})
    assert s.listen == ("127.0.0.1", 2)
    assert s.server.session.rate_limit == 7.0
    assert s.stun_listen == ("127.0.0.1", 9)  # --stun-listen beats the file's stun = false
    off = load(toml(tmp_path, 'stun-listen = "127.0.0.1:9"\n'), {**BASE, "stun": False})
    assert off.stun_listen is None  # --no-stun beats the file's stun-listen


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"key": "/k"}, "--listen and --key are required"),
        ({**BASE, "listen": "nowhere"}, "Invalid value for listen: "),
        ({**BASE, "listen": "192.0.2.1:1", "insecure_no_tls": True}, "only listens on loopback"),
        ({**BASE, "rate_limit": "fast"}, "Invalid value for rate_limit: 'fast' is not a float"),
        ({**BASE, "max_clients": -1}, "Invalid value for max_clients: -1 must not be negative"),
        ({**BASE, "stun": "yes"}, "Invalid value for stun: expected true or false"),
        ({**BASE, "stun": False, "stun_listen": "127.0.0.1:9"}, "contradict each other"),
        ({**BASE, "metrics_listen": "x"}, "Invalid value for metrics-listen: "),
    ],
)
def test_a_bad_setting_is_one_settings_error_with_exit_code_78(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        from_mapping(values)
    assert caught.value.exit_code == EXIT_CONFIG == 78


def test_an_unknown_key_in_the_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="unknown setting 'rate-limmit'"):
        load(toml(tmp_path, "rate-limmit = 1\n"), BASE)
