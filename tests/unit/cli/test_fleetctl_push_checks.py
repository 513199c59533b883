"""`fleetctl push` input checks and the binary-cache check, over the in-memory stand-in.

The caches here are file:// directories of narinfos signed in Python (harness/narinfos.py);
tests/integration/test_push_cache_check.py does the same with real Nix, HTTP and processes.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleet.admin.client import AdminClient
from fleet.admin.settings import Settings
from fleet.cli import fleetctl
from fleet.identity import Identity
from harness.narinfos import CacheKey, narinfo, store_path, write_narinfo
from harness.nixlab import unreachable_url
from tests.admin_standin import memory_client
from tests.unit.cli.test_fleetctl import Harness

SYSTEM, DEP = store_path("nixos-system-kiosk"), store_path("glibc")
KEY = CacheKey.generate("cache.example.org-1")


@pytest.fixture
def h(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Harness:
    harness = Harness(tmp_path)

    @contextlib.asynccontextmanager
    async def fake_open(identity: Identity, settings: Settings) -> AsyncIterator[AdminClient]:
        harness.settings.append(settings)
        async with memory_client(harness.standin, identity, timeout=settings.timeout) as client:
            yield client

    monkeypatch.setattr(fleetctl, "_open_client", fake_open)
    return harness


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A file:// cache holding SYSTEM and DEP, signed by KEY."""
    directory = tmp_path / "cache"
    write_narinfo(directory, SYSTEM, narinfo(SYSTEM, [SYSTEM, DEP], key=KEY))
    write_narinfo(directory, DEP, narinfo(DEP, key=KEY))
    return directory


def check_args(cache: Path, key: CacheKey = KEY) -> list[str]:
    return ["--cache", f"file://{cache}", "--trusted-public-key", key.public]


def test_a_checked_push_says_so_and_sends_the_caches_as_hints(h: Harness, cache: Path) -> None:
    result = h.run("push", SYSTEM, "--to", "kiosk-1", *check_args(cache))
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        f"cache check: all 2 paths of the closure are in file://{cache}, signed by "
        "cache.example.org-1",
        f"pushed sequence 1: {SYSTEM} (switch) to 1 device: kiosk-1",
    ]
    [(_, announcement)] = h.standin.pushes
    assert announcement.substituters == (f"file://{cache}",)


def test_json_says_what_was_checked(h: Harness, cache: Path) -> None:
    result = h.run("push", SYSTEM, "--to", "kiosk-1", *check_args(cache), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["cache_check"] == {
        "result": "passed",
        "paths": 2,
        "caches": [f"file://{cache}"],
        "signed_by": ["cache.example.org-1"],
    }


@pytest.mark.parametrize(
    ("path", "key", "match"),
    [
        (store_path("nixos-system-other"), KEY, "is not in the binary cache"),
        (SYSTEM[:11] + ("0" if SYSTEM[11] != "0" else "1") + SYSTEM[12:], KEY, "a typo"),
        (SYSTEM, CacheKey.generate("cache.example.org-1"), "does not verify"),
        (SYSTEM, CacheKey.generate("elsewhere-1"), "signed only by cache.example.org-1"),
    ],
    ids=["missing", "typo", "same-name-other-key", "other-key"],
)
def test_a_refused_check_sends_nothing_to_the_coordinator(
    h: Harness, cache: Path, path: str, key: CacheKey, match: str
) -> None:
    result = h.run("push", path, "--to", "kiosk-1", *check_args(cache, key))
    assert result.exit_code == 1, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ")
    assert match in line
    assert line.endswith("; nothing was pushed")
    assert result.stdout == ""
    assert h.standin.received == []  # not even a device list: no sequence was asked for
    assert h.settings == []  # never connected


def test_a_missing_dependency_is_refused_naming_it(h: Harness, cache: Path) -> None:
    (cache / f"{DEP.removeprefix('/nix/store/')[:32]}.narinfo").unlink()
    result = h.run("push", SYSTEM, "--to", "kiosk-1", *check_args(cache))
    assert result.exit_code == 1
    assert f"{DEP} (in the closure of {SYSTEM}) is not in the binary cache" in result.stderr
    assert h.standin.received == []


def test_an_unreachable_cache_is_refused_saying_how_to_skip(h: Harness) -> None:
    nowhere = unreachable_url()
    result = h.run("push", SYSTEM, "--to", "kiosk-1", "--cache", nowhere,
                   "--trusted-public-key", KEY.public)  # fmt: skip
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"Error: cannot reach the cache {nowhere}: ")
    assert line.endswith("; nothing was pushed (--no-cache-check pushes without this check)")
    assert h.standin.received == []


def test_no_cache_check_skips_it_and_says_so(h: Harness) -> None:
    nowhere = "https://127.0.0.1:9/unreachable"
    result = h.run(
        "push", SYSTEM, "--to", "kiosk-1", "--cache", nowhere, "--no-cache-check", "--json"
    )
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (
        f"notice: --no-cache-check: not checking that the devices can fetch {SYSTEM}\n"
    )
    assert json.loads(result.stdout)["cache_check"] == {"result": "skipped"}


def test_without_any_cache_it_warns_once_and_pushes(h: Harness) -> None:
    result = h.run("push", SYSTEM, "--to", "kiosk-1")
    assert result.exit_code == 0, result.stderr
    [warning] = result.stderr.splitlines()
    assert warning.startswith("warning: no binary cache configured (--cache URL")
    assert len(h.standin.pushes) == 1


def test_a_cache_without_trusted_keys_is_an_error(h: Harness, cache: Path) -> None:
    result = h.run("push", SYSTEM, "--to", "kiosk-1", "--cache", f"file://{cache}")
    assert result.exit_code == 1
    assert "needs the Nix keys the devices trust: give --trusted-public-key" in result.stderr
    assert h.standin.received == []


def test_an_s3_cache_says_the_check_cannot_be_done_and_how_to_skip(h: Harness) -> None:
    result = h.run(
        "push", SYSTEM, "--to", "kiosk-1", "--cache", "s3://bucket", "--trusted-public-key",
        KEY.public,
    )  # fmt: skip
    assert result.exit_code == 1
    assert "cannot check the cache s3://bucket" in result.stderr
    assert "--no-cache-check" in result.stderr


def test_a_malformed_trusted_key_is_an_error(h: Harness, cache: Path) -> None:
    result = h.run(
        "push", SYSTEM, "--to", "kiosk-1", "--cache", f"file://{cache}",
        "--trusted-public-key", "cache.example.org-1:nope",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "trusted-public-key: 'cache.example.org-1:nope': the key is 3 bytes" in (result.stderr)


def test_the_agents_setting_names_work_in_fleetctl_toml(h: Harness, cache: Path) -> None:
    config = Path(h.env["XDG_CONFIG_HOME"]) / "fleet" / "fleetctl.toml"
    config.parent.mkdir(parents=True)
    config.write_text(
        f'substituter = ["file://{cache}"]\ntrusted_public_key = "{KEY.public}"\n'
    )  # as in the agent's TOML (the NixOS module writes trusted_public_key)
    result = h.run("push", SYSTEM, "--to", "kiosk-1")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("cache check: all 2 paths")
    config.write_text(f'substituter = ["file://{cache}"]\n')
    result = h.run("push", SYSTEM, "--to", "kiosk-1")  # flags would win; the file lacks keys
    assert result.exit_code == 1
    assert f"set trusted-public-key in {config}" in result.stderr


def test_a_result_link_is_pushed_as_its_store_path(
    h: Harness, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.symlink(SYSTEM, tmp_path / "result")
    monkeypatch.chdir(tmp_path)
    result = h.run("push", "./result", "--to", "kiosk-1", *check_args(cache))
    assert result.exit_code == 0, result.stderr
    assert f"pushed sequence 1: {SYSTEM} (switch)" in result.stdout
    [(_, announcement)] = h.standin.pushes
    assert announcement.store_path == SYSTEM


@pytest.mark.parametrize(
    ("arg", "match"),
    [
        (SYSTEM + "/bin", f"is inside the store path {SYSTEM}; pass that path itself"),
        (SYSTEM + ".drv", "is a derivation, not a system: build it first"),
        ("./nothing-here", "not a store path, and no such file"),
    ],
)
def test_what_is_not_a_system_path_is_one_line_and_exit_2(h: Harness, arg: str, match: str) -> None:
    result = h.run("push", arg, "--to", "kiosk-1")
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ")
    assert match in line
    assert h.standin.received == []
