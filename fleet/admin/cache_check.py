"""Before a push is signed: is the whole closure in the caches the devices use, signed by a
key they trust?

A device that gets a push for a path it cannot fetch fails it, usually far away and days
later. The same question, asked here, turns that into an error at the admin's terminal:
every path of the closure (the narinfo References, walked from the pushed path) must be
present in one of the caches, in the caches' order as Nix asks them, with a valid signature
by one of the trusted keys. The walk is bounded (MAX_PATHS, DEADLINE), runs CONCURRENCY
requests at a time, and stops at the first path that fails.

The walk is independent of how narinfos are read (`NarinfoSource`); `CacheReader` reads
them over http(s):// (urllib in a small thread pool, each request with a timeout) and from
file:// directories.
"""

from __future__ import annotations

import asyncio
import gzip
import lzma
import os
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

from fleet import __version__
from fleet.admin.errors import AdminError, unwrap_group
from fleet.nix.narinfo import (
    MAX_NARINFO_BYTES,
    NarInfoError,
    PublicKey,
    UntrustedNarInfo,
    parse_narinfo,
    verify_narinfo,
)
from fleet.nix.store import STORE_DIR

CONCURRENCY = 16
MAX_PATHS = 100_000
DEADLINE = 300.0  # seconds for the whole walk
CHECKABLE_SCHEMES = ("http", "https", "file")
SKIP_HINT = "--no-cache-check pushes without this check"
_MISSING_STATUS = (403, 404, 410)  # Nix, too, reads 403 (S3 without listing) as "not there"
_DECODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.decompress,
    "x-gzip": gzip.decompress,
    "xz": lzma.decompress,
    "deflate": zlib.decompress,
}


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
    """Refuse, before any request, a cache this check cannot read."""
    for cache in caches:
        scheme = urllib.parse.urlsplit(cache).scheme
        if scheme not in CHECKABLE_SCHEMES:
            raise CacheUnavailable(
                f"cannot check the cache {cache}: fleetctl reads narinfo files over "
                "http(s):// and file:// only; give the URL the devices fetch from "
                f"(--cache https://...), or {SKIP_HINT}"
            )


def _hash_part(path: str) -> str:
    return path.removeprefix(STORE_DIR + "/")[:32]


@dataclass
class _Walk:
    root: str
    caches: tuple[str, ...]
    keys: tuple[PublicKey, ...]
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
    keys: Sequence[PublicKey],
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
        async with asyncio.timeout(deadline), asyncio.TaskGroup() as group:
            group.create_task(walk.visit(root, group))
    except TimeoutError:
        raise CacheCheckFailed(
            f"checking the closure of {root} took longer than {deadline:.0f}s "
            f"({len(walk.seen)} paths so far); {SKIP_HINT}"
        ) from None
    except BaseExceptionGroup as group_error:
        first = unwrap_group(group_error)
        if isinstance(first, BaseExceptionGroup):  # several failed at once: report one
            failed = [e for e in first.exceptions if isinstance(e, CacheCheckFailed)]
            if not failed:
                raise
            first = failed[0]
        raise first from None
    return CheckReport(root, len(walk.seen), tuple(caches), tuple(sorted(walk.signers)))


# ---------------------------------------------------------------- reading narinfo files


def _narinfo_url(cache: str, hash_part: str) -> str:
    parts = urllib.parse.urlsplit(cache)  # store parameters (?priority=...) are not a path
    return urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc, parts.path.rstrip("/") + f"/{hash_part}.narinfo", "", "")
    )


def _read_file(cache: str, hash_part: str) -> bytes | None:
    path = urllib.parse.unquote(urllib.parse.urlsplit(_narinfo_url(cache, hash_part)).path)
    try:
        with open(path, "rb") as f:
            return f.read(MAX_NARINFO_BYTES + 1)
    except FileNotFoundError:
        if not os.path.isdir(os.path.dirname(path)):
            raise CacheUnavailable(
                f"cannot read the cache {cache}: {os.path.dirname(path)} is not a directory"
            ) from None
        return None
    except OSError as exc:
        raise CacheUnavailable(f"cannot read the cache {cache}: {exc.strerror}") from None


def _get(cache: str, hash_part: str, timeout: float) -> bytes | None:
    if urllib.parse.urlsplit(cache).scheme == "file":
        return _read_file(cache, hash_part)
    url = _narinfo_url(cache, hash_part)
    agent = {"User-Agent": f"fleetctl/{__version__}"}
    request = urllib.request.Request(url, headers=agent)  # noqa: S310 (http/https only here)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body: bytes = response.read(MAX_NARINFO_BYTES + 1)
            encoding = (response.headers.get("Content-Encoding") or "identity").lower()
    except urllib.error.HTTPError as exc:
        if exc.code in _MISSING_STATUS:
            return None
        raise CacheUnavailable(f"the cache {cache} answered HTTP {exc.code} for {url}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CacheUnavailable(f"cannot reach the cache {cache}: {reason}") from None
    if encoding in ("identity", ""):
        return body
    decode = _DECODERS.get(encoding)
    if decode is None:
        raise CacheUnavailable(f"the cache {cache} sent {url} with Content-Encoding {encoding}")
    try:
        return decode(body)
    except (OSError, EOFError, lzma.LZMAError, zlib.error):
        raise CacheUnavailable(f"the cache {cache} sent a corrupt {encoding} body") from None


class CacheReader:
    """Reads narinfos over http(s):// and file://, `CONCURRENCY` at a time, each within
    `timeout` seconds (a thread that runs past a cancelled walk ends by its own timeout)."""

    def __init__(self, *, timeout: float, concurrency: int = CONCURRENCY) -> None:
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="narinfo")

    async def __aenter__(self) -> CacheReader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def narinfo(self, cache: str, hash_part: str) -> bytes | None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout * 2):  # connect, then read
                return await loop.run_in_executor(self._pool, _get, cache, hash_part, self.timeout)
        except TimeoutError:
            raise CacheUnavailable(
                f"the cache {cache} did not answer within {self.timeout:.0f}s"
            ) from None


async def check_pushed_path(
    root: str, caches: Sequence[str], keys: Sequence[PublicKey], *, timeout: float
) -> CheckReport:
    """`check_closure` against the real caches."""
    async with CacheReader(timeout=timeout) as reader:
        return await check_closure(root, caches, keys, reader)
