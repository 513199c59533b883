"""The system profile: generations, setting a new one, rolling back.

A profile P is a symlink `P -> P-N-link`, and each `P-N-link` points at a store path; that
layout is Nix's on-disk contract, so reading it needs no process. Changing it goes through
`nix-env`, which also registers the GC roots.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fleet.nix.errors import NixError
from fleet.nix.process import run_nix
from fleet.nix.store import NixStore
from fleet.vocabulary import check_store_path


@dataclass(frozen=True)
class Generation:
    number: int
    path: str  # the logical /nix/store path of the system
    created: datetime
    current: bool


def _generation_number(profile: Path, link_name: str) -> int | None:
    match = re.fullmatch(re.escape(profile.name) + r"-(\d+)-link", link_name)
    return int(match.group(1)) if match else None


def list_generations_sync(profile: Path) -> list[Generation]:
    """Generations of `profile`, oldest first (reads the symlinks; no Nix process)."""
    directory = profile.parent
    try:
        current_target = os.readlink(profile)
    except FileNotFoundError:
        current_target = None
    except OSError as exc:
        raise NixError(f"cannot read profile {profile}: {exc}") from exc
    current = _generation_number(profile, os.path.basename(current_target or ""))
    generations = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        number = _generation_number(profile, name)
        if number is None:
            continue
        link = directory / name
        try:
            target = os.readlink(link)
            created = datetime.fromtimestamp(link.lstat().st_mtime, UTC)
        except OSError:
            continue  # deleted concurrently
        generations.append(Generation(number, target, created, number == current))
    generations.sort(key=lambda g: g.number)
    return generations


async def list_generations(store: NixStore, profile: Path | None = None) -> list[Generation]:
    return list_generations_sync(profile or store.system_profile)


async def current_system(store: NixStore, profile: Path | None = None) -> Generation | None:
    """The profile's current generation, or None if the profile does not exist yet."""
    for generation in list_generations_sync(profile or store.system_profile):
        if generation.current:
            return generation
    return None


async def _nix_env(store: NixStore, profile: Path, args: list[str], timeout: float) -> Generation:
    profile.parent.mkdir(parents=True, exist_ok=True)
    await run_nix(
        store, "nix-env", [*store.store_args(), "--profile", str(profile), *args], timeout=timeout
    )
    generation = await current_system(store, profile)
    if generation is None:
        raise NixError(f"nix-env {args[0]} left no current generation in {profile}")
    return generation


async def set_profile(
    store: NixStore, path: str, profile: Path | None = None, *, timeout: float = 60.0
) -> Generation:
    """Make `path` (valid in `store`) the profile's new current generation."""
    check_store_path(path)
    return await _nix_env(store, profile or store.system_profile, ["--set", path], timeout)


async def rollback(
    store: NixStore, profile: Path | None = None, *, timeout: float = 60.0
) -> Generation:
    """Point the profile at the generation before the current one; return it.

    Raises ProfileError ("no profile version older than the current ...") if there is none.
    """
    return await _nix_env(store, profile or store.system_profile, ["--rollback"], timeout)


async def switch_generation(
    store: NixStore, number: int, profile: Path | None = None, *, timeout: float = 60.0
) -> Generation:
    """Point the profile at generation `number`. Raises ProfileError if it does not exist."""
    return await _nix_env(
        store, profile or store.system_profile, ["--switch-generation", str(int(number))], timeout
    )


async def delete_generations(
    store: NixStore, spec: str = "old", profile: Path | None = None, *, timeout: float = 60.0
) -> None:
    """`nix-env --delete-generations SPEC` ("old", "+5", "14d", or numbers)."""
    if not re.fullmatch(r"old|\+\d+|\d+d|\d+( \d+)*", spec):
        raise ValueError(f"bad generation spec {spec!r}")
    target = profile or store.system_profile
    await run_nix(
        store,
        "nix-env",
        [*store.store_args(), "--profile", str(target), "--delete-generations", *spec.split()],
        timeout=timeout,
    )
