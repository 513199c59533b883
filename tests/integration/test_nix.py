"""The nix layer against real Nix: chroot stores, a signed zstd cache over HTTP, profiles."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from fleet.nix import (
    CacheUnreachable,
    FetchProgress,
    HashMismatch,
    NixStore,
    PathNotFound,
    ProfileError,
    SignatureError,
    closure_paths,
    copy_to_cache,
    current_system,
    fetch_closure,
    generate_signing_key,
    invalid_paths,
    is_valid,
    list_generations,
    path_info,
    rollback,
    run_switch,
    set_profile,
    sign_paths,
    switch_generation,
)
from fleet.vocabulary import Action, InvalidStorePath
from harness.nixlab import (
    BROKEN_EXIT_CODE,
    SWITCH_LOG_VAR,
    Builder,
    agent_store,
    serve_directory,
    unreachable_url,
)
from harness.nixlab import switch_log_lines as read_log
from tests.conftest import NixCache, Systems

pytestmark = pytest.mark.nix

MISSING = "/nix/store/" + "0" * 32 + "-nixos-system-fleet-test-missing"


async def fetch(agent: NixStore, builder: Builder, cache: NixCache, path: str) -> None:
    """Fetch as a correctly configured agent: the test cache, the builder's key."""
    await fetch_closure(agent, path, [cache.url], [builder.key.public_key])


def switch_env(log: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", SWITCH_LOG_VAR: str(log)}


async def assert_nothing_valid(agent: NixStore, paths: list[str]) -> None:
    assert sorted(await invalid_paths(agent, paths)) == sorted(paths)


async def test_fetch_verifies_and_reports_progress(
    nix_agent: NixStore, nix_builder: Builder, nix_systems: Systems, nix_cache: NixCache
) -> None:
    v1 = nix_systems.v1
    seen: list[FetchProgress] = []
    result = await fetch_closure(
        nix_agent, v1.path, [nix_cache.url], [nix_builder.key.public_key], on_progress=seen.append
    )

    assert await is_valid(nix_agent, v1.path)
    assert await closure_paths(nix_agent, v1.path) == v1.closure
    infos = await path_info(nix_agent, [v1.path], recursive=True)
    assert sorted(i.path for i in infos) == v1.closure
    assert all(any(s.startswith("fleet-test-1:") for s in i.signatures) for i in infos)

    final = result.progress
    assert (final.paths_done, final.paths_total) == (2, 2)
    assert final.bytes_total > 60_000  # the random 64 KiB payload does not compress
    assert final.bytes_done == final.bytes_total
    assert final.nar_bytes_total >= sum(i.nar_size for i in infos)
    assert seen[-1] == final
    assert [p.paths_done for p in seen] == sorted(p.paths_done for p in seen)
    assert any(0 < p.bytes_done < final.bytes_total or p.paths_done == 1 for p in seen)


async def test_fetch_is_a_noop_when_already_valid(
    nix_agent: NixStore, nix_builder: Builder, nix_systems: Systems, nix_cache: NixCache
) -> None:
    await fetch(nix_agent, nix_builder, nix_cache, nix_systems.v1.path)
    again = await fetch_closure(
        nix_agent, nix_systems.v1.path, [nix_cache.url], [nix_builder.key.public_key]
    )
    assert again.progress.paths_done == 0


async def test_unsigned_closure_is_refused(
    nix_agent: NixStore, nix_builder: Builder, nix_systems: Systems, nix_cache: NixCache
) -> None:
    unsigned = nix_systems.unsigned
    with pytest.raises(SignatureError) as caught:
        await fetch(nix_agent, nix_builder, nix_cache, unsigned.path)
    assert "not signed by any of the keys" in caught.value.reason
    assert unsigned.path.split("/")[-1] in caught.value.reason
    await assert_nothing_valid(nix_agent, unsigned.closure)


async def test_wrong_key_is_refused(
    nix_agent: NixStore, nix_builder: Builder, nix_systems: Systems, nix_cache: NixCache
) -> None:
    v1 = nix_systems.v1
    with pytest.raises(SignatureError) as caught:
        await fetch_closure(nix_agent, v1.path, [nix_cache.url], [nix_builder.wrong_key.public_key])
    assert "trusted-public-keys" in caught.value.reason
    assert any("error:" in line for line in caught.value.stderr_tail)
    await assert_nothing_valid(nix_agent, v1.closure)


async def test_missing_path(nix_agent: NixStore, nix_builder: Builder, nix_cache: NixCache) -> None:
    with pytest.raises(PathNotFound) as caught:
        await fetch(nix_agent, nix_builder, nix_cache, MISSING)
    assert "don't know how to build" in caught.value.reason
    assert not await is_valid(nix_agent, MISSING)


async def test_cache_down(nix_agent: NixStore, nix_builder: Builder, nix_systems: Systems) -> None:
    v1 = nix_systems.v1
    with pytest.raises(CacheUnreachable) as caught:
        await fetch_closure(
            nix_agent,
            v1.path,
            [unreachable_url()],
            [nix_builder.key.public_key],
            download_attempts=1,
        )
    assert "Couldn't connect to server" in caught.value.reason
    await assert_nothing_valid(nix_agent, v1.closure)


async def test_swapped_nar_is_a_hash_mismatch(
    nix_agent: NixStore, nix_builder: Builder, nix_systems: Systems, nix_cache: NixCache
) -> None:
    """A cache that serves the wrong NAR under a correctly signed narinfo."""
    v1, v2 = nix_systems.v1, nix_systems.v2

    def nar_file(path: str) -> Path:
        narinfo = nix_cache.directory / (path.split("/")[-1][:32] + ".narinfo")
        url = next(line for line in narinfo.read_text().splitlines() if line.startswith("URL:"))
        return nix_cache.directory / url.split(": ", 1)[1]

    shutil.copyfile(nar_file(v2.path), nar_file(v1.path))
    with pytest.raises(HashMismatch) as caught:
        await fetch(nix_agent, nix_builder, nix_cache, v1.path)
    assert "hash mismatch importing path" in caught.value.reason
    assert not await is_valid(nix_agent, v1.path)


async def test_bad_input_never_reaches_nix(nix_agent: NixStore, nix_builder: Builder) -> None:
    key = nix_builder.key.public_key
    for bad in ("--option", "/nix/store/short-x", MISSING + "/bin/sh", "/etc/passwd"):
        with pytest.raises(InvalidStorePath):
            await fetch_closure(nix_agent, bad, ["http://127.0.0.1:1"], [key])
    with pytest.raises(ValueError, match="public key"):
        await fetch_closure(nix_agent, MISSING, ["http://127.0.0.1:1"], ["not a key"])
    with pytest.raises(ValueError, match="substituter"):
        await fetch_closure(nix_agent, MISSING, ["http://a b"], [key])


async def test_set_profile_and_switch_runs_the_script_once(
    tmp_path: Path,
    nix_agent: NixStore,
    nix_builder: Builder,
    nix_systems: Systems,
    nix_cache: NixCache,
) -> None:
    v1 = nix_systems.v1
    log = tmp_path / "switch.log"
    assert await current_system(nix_agent) is None
    await fetch(nix_agent, nix_builder, nix_cache, v1.path)

    generation = await set_profile(nix_agent, v1.path)
    assert (generation.number, generation.path, generation.current) == (1, v1.path, True)
    assert await current_system(nix_agent) == generation

    lines: list[str] = []
    result = await run_switch(
        nix_agent, generation.path, Action.SWITCH, env=switch_env(log), on_line=lines.append
    )
    assert result.ok
    assert result.exit_code == 0
    assert read_log(log) == [f"switch {v1.path}"]
    assert lines == ["activating 1: done"]
    assert result.output_tail == "activating 1: done"


async def test_failing_switch_returns_exit_code_and_tail(
    tmp_path: Path,
    nix_agent: NixStore,
    nix_builder: Builder,
    nix_systems: Systems,
    nix_cache: NixCache,
) -> None:
    broken = nix_systems.broken
    log = tmp_path / "switch.log"
    await fetch(nix_agent, nix_builder, nix_cache, broken.path)
    await set_profile(nix_agent, broken.path)

    result = await run_switch(nix_agent, broken.path, "test", env=switch_env(log))
    assert not result.ok
    assert result.exit_code == BROKEN_EXIT_CODE
    assert "activating broken: starting units" in result.output_tail
    assert "error: unit fleet-test.service failed to start" in result.output_tail
    assert read_log(log) == [f"test {broken.path}"]


async def test_rollback_restores_and_reactivates_previous_generation(
    tmp_path: Path,
    nix_agent: NixStore,
    nix_builder: Builder,
    nix_systems: Systems,
    nix_cache: NixCache,
) -> None:
    """The agent's failure path: new generation fails, roll back, re-run the old switch."""
    v1, broken = nix_systems.v1, nix_systems.broken
    log = tmp_path / "switch.log"
    env = switch_env(log)
    with pytest.raises(ProfileError, match="no profile version older"):
        await rollback(nix_agent)  # no profile yet

    await fetch(nix_agent, nix_builder, nix_cache, v1.path)
    await set_profile(nix_agent, v1.path)
    assert (await run_switch(nix_agent, v1.path, Action.SWITCH, env=env)).ok
    with pytest.raises(ProfileError, match="no profile version older"):
        await rollback(nix_agent)

    await fetch(nix_agent, nix_builder, nix_cache, broken.path)
    second = await set_profile(nix_agent, broken.path)
    assert second.number == 2
    failed = await run_switch(nix_agent, second.path, Action.SWITCH, env=env)
    assert failed.exit_code == BROKEN_EXIT_CODE

    previous = await rollback(nix_agent)
    assert (previous.number, previous.path) == (1, v1.path)
    assert (await current_system(nix_agent)) == previous
    assert (await run_switch(nix_agent, previous.path, Action.SWITCH, env=env)).ok
    assert read_log(log) == [f"switch {v1.path}", f"switch {broken.path}", f"switch {v1.path}"]

    generations = await list_generations(nix_agent)
    assert [(g.number, g.path, g.current) for g in generations] == [
        (1, v1.path, True),
        (2, broken.path, False),
    ]
    assert (await switch_generation(nix_agent, 2)).path == broken.path
    with pytest.raises(ProfileError, match="does not exist"):
        await switch_generation(nix_agent, 7)
    assert (await current_system(nix_agent)).number == 2  # type: ignore[union-attr]


async def test_admin_side_key_sign_and_push(
    tmp_path: Path,
    nix_agent: NixStore,
    nix_builder: Builder,
    nix_systems: Systems,
    nix_cache: NixCache,
) -> None:
    """An admin re-signs a closure with a fresh key and pushes it; a device trusting only
    that key can fetch it."""
    v2 = nix_systems.v2
    await fetch(nix_agent, nix_builder, nix_cache, v2.path)
    key = await generate_signing_key("fleet-admin-1", tmp_path / "keys", store=nix_agent)
    assert stat.S_IMODE(key.secret_file.stat().st_mode) == 0o600
    assert key.public_key.startswith("fleet-admin-1:")

    await sign_paths(nix_agent, key.secret_file, v2.path)
    second_cache = tmp_path / "admin-cache"
    await copy_to_cache(nix_agent, v2.path, second_cache)
    narinfo = next(second_cache.glob("*.narinfo")).read_text()
    assert "Compression: zstd" in narinfo

    device = agent_store(tmp_path / "device")
    with serve_directory(second_cache) as url:
        await fetch_closure(device, v2.path, [url], [key.public_key])
    assert await closure_paths(device, v2.path) == v2.closure
