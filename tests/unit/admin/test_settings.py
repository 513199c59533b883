"""Where fleetctl's settings come from: flag > environment > config file; clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.admin.errors import SettingsError
from fleet.admin.settings import (
    DEFAULT_TIMEOUT,
    CacheSettings,
    Settings,
    default_config_path,
    load,
    resolve_cache_settings,
)
from fleet.identity import Identity

C_FLAG, C_ENV, C_FILE = (Identity.generate().node_id for _ in range(3))
RELAY_ID = Identity.generate().node_id


def _resolve(
    tmp_path: Path,
    *,
    coordinator: str | None = None,
    key: str | None = None,
    relays: tuple[str, ...] = (),
    timeout: float | None = None,
    config_file: str | None = None,
    env: dict[str, str] | None = None,
) -> Settings:
    flags = {"coordinator": coordinator, "key": key, "relay": relays, "timeout": timeout}
    return load(config_file, flags, env=env or {}, home=tmp_path / "home")


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


@pytest.fixture
def config(tmp_path: Path) -> str:
    return _write(
        tmp_path / "fleetctl.toml",
        f'coordinator = "{C_FILE}@10.0.0.1:7000"\n'
        'key = "/file/admin.key"\n'
        f'relay = "fleet-relay://{RELAY_ID}@10.0.0.2:443"\n'
        "timeout = 3\n",
    )


def test_config_file_alone(tmp_path: Path, config: str) -> None:
    s = _resolve(tmp_path, config_file=config)
    assert s.coordinator.node_id == C_FILE
    assert s.coordinator.addrs == (("10.0.0.1", 7000),)
    assert s.key == Path("/file/admin.key")
    assert [str(r) for r in s.relays] == [f"fleet-relay://{RELAY_ID}@10.0.0.2:443"]
    assert s.timeout == 3


def test_env_beats_config_file(tmp_path: Path, config: str) -> None:
    env = {
        "FLEET_COORDINATOR": f"{C_ENV}@127.0.0.1:9",
        "FLEET_KEY": "/env/admin.key",
        "FLEET_RELAY": f"fleet-relay+insecure://{RELAY_ID}@127.0.0.1:1, "
        f"fleet-relay+insecure://{RELAY_ID}@127.0.0.1:2",
    }
    s = _resolve(tmp_path, config_file=config, env=env)
    assert s.coordinator.node_id == C_ENV
    assert s.key == Path("/env/admin.key")
    assert [r.port for r in s.relays] == [1, 2]
    assert s.timeout == 3  # not set in env: the file's value stays


def test_flags_beat_env_and_file(tmp_path: Path, config: str) -> None:
    env = {"FLEET_COORDINATOR": f"{C_ENV}@127.0.0.1:9", "FLEET_KEY": "/env/admin.key"}
    s = _resolve(
        tmp_path,
        coordinator=f"{C_FLAG}@127.0.0.1:8",
        key="/flag/admin.key",
        relays=(f"fleet-relay://{RELAY_ID}@127.0.0.1:3",),
        timeout=1.5,
        config_file=config,
        env=env,
    )
    assert s.coordinator.node_id == C_FLAG
    assert s.key == Path("/flag/admin.key")
    assert [r.port for r in s.relays] == [3]
    assert s.timeout == 1.5


def test_default_config_path_is_used_when_it_exists(tmp_path: Path) -> None:
    path = default_config_path({}, tmp_path / "home")
    assert path == tmp_path / "home" / ".config" / "fleet" / "fleetctl.toml"
    _write(path, f'coordinator = "{C_FILE}@127.0.0.1:1"\nkey = "k"\n')
    s = _resolve(tmp_path)
    assert s.coordinator.node_id == C_FILE
    assert s.timeout == DEFAULT_TIMEOUT
    xdg = default_config_path({"XDG_CONFIG_HOME": "/xdg"}, tmp_path)
    assert xdg == Path("/xdg/fleet/fleetctl.toml")


def test_missing_coordinator_says_where_to_set_it(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"no coordinator.*FLEET_COORDINATOR"):
        _resolve(tmp_path, key="k")


def test_missing_key_says_where_to_set_it(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"no admin key.*FLEET_KEY"):
        _resolve(tmp_path, coordinator=f"{C_FLAG}@127.0.0.1:1")


def test_coordinator_without_address_or_relay_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no address and no relay"):
        _resolve(tmp_path, coordinator=str(C_FLAG), key="k")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('coordinatr = "x"\n', "unknown setting 'coordinatr'"),
        ("coordinator = 5\n", "coordinator must be a string"),
        ("relay = [1]\n", "relay must be a string or a list"),
        ('timeout = "soon"\n', "timeout must be a number"),
        ("coordinator = \n", "invalid TOML"),
    ],
)
def test_bad_config_file_names_the_problem(tmp_path: Path, text: str, match: str) -> None:
    path = _write(tmp_path / "bad.toml", text)
    with pytest.raises(SettingsError, match=match):
        _resolve(tmp_path, config_file=path)


def test_bad_values_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"coordinator: .*bad node id"):
        _resolve(tmp_path, coordinator="nonsense@127.0.0.1:1", key="k")
    with pytest.raises(SettingsError, match="relay: "):
        _resolve(tmp_path, coordinator=str(C_FLAG), key="k", relays=("http://x",))
    with pytest.raises(SettingsError, match="no such configuration file"):
        _resolve(tmp_path, config_file=str(tmp_path / "missing.toml"))


# ---------------------------------------------------------------- push's cache check settings

CACHE_KEY = "cache.example.org-1:" + "A" * 43 + "="


def _caches(
    tmp_path: Path, text: str, *, caches: tuple[str, ...] = (), keys: tuple[str, ...] = ()
) -> CacheSettings:
    config = tmp_path / "fleetctl.toml"
    config.write_text(text)
    return resolve_cache_settings(
        caches=caches,
        trusted_public_keys=keys,
        config_file=str(config),
        env={},
        home=tmp_path / "home",
    )


def test_cache_settings_use_the_agents_names_as_strings_or_lists(tmp_path: Path) -> None:
    for text in (
        f'substituter = "https://c"\ntrusted-public-key = "{CACHE_KEY}"\n',
        f'substituter = ["https://c"]\ntrusted_public_key = ["{CACHE_KEY}"]\n',
    ):
        got = _caches(tmp_path, text)
        assert got.caches == ("https://c",)
        assert [str(k) for k in got.trusted_public_keys] == [CACHE_KEY]


def test_cache_flags_replace_the_files_lists(tmp_path: Path) -> None:
    other = "other-1:" + "B" * 42 + "A="
    got = _caches(
        tmp_path,
        f'substituter = ["https://file"]\ntrusted-public-key = ["{CACHE_KEY}"]\n',
        caches=("https://flag", "https://flag"),
        keys=(other,),
    )
    assert got.caches == ("https://flag",)
    assert [str(k) for k in got.trusted_public_keys] == [other]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("substituter = 3\n", "substituter must be a string or a list of strings"),
        ('trusted-public-key = "nope"\n', "not a Nix public key"),
        (
            f'trusted-public-key = "{CACHE_KEY}"\ntrusted_public_key = "{CACHE_KEY}"\n',
            "trusted-public-key is set twice",
        ),
        ('substituters = ["https://c"]\n', "unknown setting 'substituters'"),
    ],
)
def test_bad_cache_settings_name_the_setting(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(SettingsError, match=match):
        _caches(tmp_path, text)
