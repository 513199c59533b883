"""Before a push is signed: is the whole closure in the caches the devices use, signed by a
key they trust?

A device that gets a push for a path it cannot fetch fails it, usually far away and days
later. The same question, asked here, turns that into an error at the admin's terminal:
every path of the closure (the narinfo References, walked from the pushed path) must be
present in one of the caches, in the caches' order as Nix asks them, with a valid signature
by one of the trusted keys. The walk is bounded (MAX_PATHS, DEADLINE), runs CONCURRENCY
requests at a time, and stops at the first path that fails.

The walk is independent of how narinfos are read (`NarinfoSource`); the real one is
fleet/admin/cache_reader.py.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fleet.admin.errors import AdminError
from fleet.nix.keys import NixPublicKey
from fleet.nix.narinfo import (
    NarInfoError,
    UntrustedNarInfo,
    parse_narinfo,
    verify_narinfo,
)
from fleet.vocabulary import STORE_DIR

CONCURRENCY = 25  # Nix's own http-connections default
MAX_PATHS = 100_000
DEADLINE = 300.0  # seconds for the whole walk
CHECKABLE_SCHEMES = ("http", "https", "file")
SKIP_HINT = "--no-cache-check pushes without this check"


class CacheCheckFailed(AdminError):
    """The closure is not (all) in the caches, signed by a trusted key; nothing was pushed."""


class CacheUnavailable(CacheCheckFailed):
    """A cache could not be asked (unreachable, an HTTP error, an uncheckable URL)."""


class NarinfoSource(Protocol):
    async def narinfo(self, cache: str, hash_part: str) -> bytes | None:
        """The narinfo's bytes, None when the cache does not have it; CacheUnavailable else."""
        ...


@dataclass(frozen=True, slots=True)
class CheckReport:
    root: str
    paths: int  # the closure's size, every one present and signed
    caches: tuple[str, ...]
    signers: tuple[str, ...]  # names of the keys whose signatures counted

    def summary(self) -> str:
        signed = ", ".join(self.signers)
        where = ", ".join(self.caches)
        return (
            f"cache check: all {self.paths} paths of the closure are in {where}, signed by {signed}"
        )


def check_cache_urls(caches: Sequence[str]) -> None:
    """Refuse, before any request, a cache this check cannot read or a malformed URL."""
    for cache in caches:
        try:
            parts = urllib.parse.urlsplit(cache)
            parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
        except ValueError as exc:
            raise CacheUnavailable(f"not a cache URL: {cache!r} ({exc})") from None
        if parts.scheme not in CHECKABLE_SCHEMES:
            raise CacheUnavailable(
                f"cannot check the cache {cache}: fleetctl reads narinfo files over "
                "http(s):// and file:// only; give the URL the devices fetch from "
                f"(--cache https://...), or {SKIP_HINT}"
            )
        if (parts.scheme == "file") != (not parts.hostname) or any(c.isspace() for c in cache):
            raise CacheUnavailable(
                f"not a cache URL: {cache!r} (http(s)://HOST[:PORT][/PATH] or file:///DIR)"
            )


def _hash_part(path: str) -> str:
    return path.removeprefix(STORE_DIR + "/")[:32]


@dataclass
class _Walk:
    root: str
    caches: tuple[str, ...]
    keys: tuple[NixPublicKey, ...]
    source: NarinfoSource
    max_paths: int
    limit: asyncio.Semaphore
    seen: set[str] = field(default_factory=set)
    signers: set[str] = field(default_factory=set)

    def where(self, path: str) -> str:
        return "" if path == self.root else f" (in the closure of {self.root})"

    async def visit(self, path: str, group: asyncio.TaskGroup) -> None:
        async with self.limit:
            references = await self.check_one(path)
        for reference in references:
            if reference not in self.seen:
                self.seen.add(reference)
                if len(self.seen) > self.max_paths:
                    raise CacheCheckFailed(
                        f"the closure of {self.root} has more than {self.max_paths} paths; "
                        f"not checking it ({SKIP_HINT})"
                    )
                group.create_task(self.visit(reference, group))

    async def check_one(self, path: str) -> tuple[str, ...]:
        """The path's references, once one cache has it signed by a trusted key."""
        problems: list[str] = []
        for cache in self.caches:
            data = await self.source.narinfo(cache, _hash_part(path))
            if data is None:
                continue
            try:
                info = parse_narinfo(data)
                if info.store_path != path:
                    raise NarInfoError(f"it describes {info.store_path}")
                self.signers.add(verify_narinfo(info, self.keys))
            except NarInfoError as exc:
                problems.append(f"{cache} has a broken narinfo for it ({exc})")
                continue
            except UntrustedNarInfo as exc:
                problems.append(f"{cache} has it, but {exc}")
                continue
            return info.references
        if problems:
            raise CacheCheckFailed(f"{path}{self.where(path)}: " + "; ".join(problems))
        caches = ", ".join(self.caches)
        if path == self.root:
            raise CacheCheckFailed(
                f"{path} is not in the binary cache ({caches}): upload its closure first "
                "(nix copy --to URL PATH), or check the path for a typo"
            )
        raise CacheCheckFailed(
            f"{path}{self.where(path)} is not in the binary cache ({caches}): the devices "
            "could not fetch it; upload the whole closure (nix copy --to URL PATH)"
        )


async def check_closure(
    root: str,
    caches: Sequence[str],
    keys: Sequence[NixPublicKey],
    source: NarinfoSource,
    *,
    concurrency: int = CONCURRENCY,
    max_paths: int = MAX_PATHS,
    deadline: float = DEADLINE,
) -> CheckReport:
    """Check every path of `root`'s closure (see the module docstring); CacheCheckFailed if not."""
    if not caches or not keys:
        raise ValueError("check_closure needs caches and trusted keys")
    check_cache_urls(caches)
    walk = _Walk(
        root, tuple(caches), tuple(keys), source, max_paths, asyncio.Semaphore(concurrency)
    )
    walk.seen.add(root)
    try:
        async with asyncio.timeout(deadline):
            await _walk_all(walk, root)
    except TimeoutError:
        raise CacheCheckFailed(
            f"checking the closure of {root} took longer than {deadline:.0f}s "
            f"({len(walk.seen)} paths so far); {SKIP_HINT}"
        ) from None
    return CheckReport(root, len(walk.seen), tuple(caches), tuple(sorted(walk.signers)))


async def _walk_all(walk: _Walk, root: str) -> None:
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(walk.visit(root, group))
    except* CacheCheckFailed as failed:  # several may fail at once: report one
        raise failed.exceptions[0] from None
