"""Verified download of a system closure from binary caches.

The caches and the keys always come from the caller's own configuration, never from an
announcement: an announcement only names the store path. `--option` on the command line
replaces (not extends) nix.conf's `substituters` and `trusted-public-keys`, so exactly the
caller's keys decide, and `require-sigs` is forced on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fleet.log import get_logger
from fleet.nix.closure import is_valid
from fleet.nix.errors import NixError, PathNotFound, classify
from fleet.nix.keys import NixPublicKey
from fleet.nix.process import run_nix
from fleet.nix.progress import FetchProgress, ProgressParser
from fleet.nix.store import NixStore
from fleet.nix.substituters import check_substituter
from fleet.vocabulary import check_store_path

log = get_logger("fleet.nix.fetch")

ProgressCallback = Callable[[FetchProgress], None]


@dataclass(frozen=True)
class FetchResult:
    path: str
    progress: FetchProgress  # the final snapshot: what was downloaded
    seconds: float


def _check_config(substituters: Sequence[str], keys: Sequence[str]) -> None:
    if not substituters:
        raise ValueError("fetch_closure needs at least one substituter")
    if not keys:
        raise ValueError("fetch_closure needs at least one trusted public key")
    for url in substituters:
        check_substituter(url)  # InvalidSubstituter is a ValueError
    for key in keys:
        NixPublicKey.parse(key)  # InvalidNixPublicKey is a ValueError


async def fetch_closure(
    store: NixStore,
    path: str,
    substituters: Sequence[str],
    trusted_public_keys: Sequence[str],
    *,
    on_progress: ProgressCallback | None = None,
    timeout: float = 3600.0,
    download_attempts: int | None = None,
    connect_timeout: int | None = None,
) -> FetchResult:
    """Make `path` and its closure valid in `store`, substituting only from `substituters`.

    Every path must carry a signature by one of `trusted_public_keys`. Nothing is built
    (`--max-jobs 0`). Raises SignatureError, HashMismatch, PathNotFound, CacheUnreachable,
    NixTimeout or NixError, each with Nix's reason and stderr tail. On a signature failure
    Nix checks the narinfo before downloading, so the path does not become valid.
    """
    check_store_path(path)
    _check_config(substituters, trusted_public_keys)
    args = [
        *store.store_args(),
        "--realise",
        "--max-jobs", "0",
        "--log-format", "internal-json",
        "--option", "substituters", " ".join(substituters),
        "--option", "trusted-public-keys", " ".join(trusted_public_keys),
        "--option", "require-sigs", "true",
        "--option", "substitute", "true",
        "--option", "builders", "",
        "--option", "narinfo-cache-negative-ttl", "0",
    ]  # fmt: skip
    if download_attempts is not None:
        args += ["--option", "download-attempts", str(download_attempts)]
    if connect_timeout is not None:
        args += ["--option", "connect-timeout", str(connect_timeout)]
    args += ["--", path]

    parser = ProgressParser()

    def on_line(line: str) -> None:
        snap = parser.feed(line)
        if snap is not None and on_progress is not None:
            on_progress(snap)

    started = time.monotonic()
    log.info("nix.fetch.start", path=path, substituters=list(substituters))
    done = await run_nix(store, "nix-store", args, timeout=timeout, on_line=on_line, check=False)
    if done.returncode != 0:
        error = classify(list(parser.messages), command=done.argv, returncode=done.returncode)
        log.warning("nix.fetch.failed", path=path, error=type(error).__name__, reason=error.reason)
        raise error
    if not await is_valid(store, path):
        raise PathNotFound(
            f"nix-store --realise succeeded but '{path}' is not valid",
            command=done.argv,
            stderr_tail=tuple(parser.messages),
        )
    final = parser.snapshot()
    if final.bytes_total and final.bytes_done < final.bytes_total:
        # file:// caches are read directly, without transfer events: all bytes are in.
        final = FetchProgress(
            final.paths_done, final.paths_total, final.bytes_total, final.bytes_total,
            final.nar_bytes_total,
        )  # fmt: skip
    seconds = time.monotonic() - started
    log.info(
        "nix.fetch.done", path=path, paths=final.paths_done, bytes=final.bytes_done,
        seconds=round(seconds, 3),
    )  # fmt: skip
    if on_progress is not None and final != parser.snapshot():
        on_progress(final)
    return FetchResult(path=path, progress=final, seconds=seconds)


__all__ = ["FetchProgress", "FetchResult", "NixError", "ProgressCallback", "fetch_closure"]
