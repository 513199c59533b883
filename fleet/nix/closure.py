"""What a store knows about paths: validity, closure, narinfo-like metadata."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fleet.nix.errors import NixError, PathNotFound
from fleet.nix.process import run_nix
from fleet.nix.store import NixStore
from fleet.vocabulary import check_store_path


@dataclass(frozen=True)
class PathInfo:
    """One path as `nix path-info --json` describes it (download fields only for caches)."""

    path: str
    nar_hash: str
    nar_size: int
    references: tuple[str, ...]
    signatures: tuple[str, ...]
    deriver: str | None = None
    download_size: int | None = None
    url: str | None = None

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> PathInfo:
        download = obj.get("downloadSize")
        return cls(
            path=str(obj["path"]),
            nar_hash=str(obj["narHash"]),
            nar_size=int(obj["narSize"]),
            references=tuple(str(r) for r in obj.get("references", ())),
            signatures=tuple(str(s) for s in obj.get("signatures", ())),
            deriver=obj.get("deriver"),
            download_size=int(download) if download is not None else None,
            url=obj.get("url"),
        )


def _entries(data: Any) -> list[dict[str, Any]]:
    """Nix 2.8 prints a list of objects with "path"; Nix >= 2.19 an object keyed by path
    (null for an invalid path). Devices run the newer one, so accept both."""
    if isinstance(data, dict):
        return [
            {"path": path, **info} if isinstance(info, dict) else {"path": path, "valid": False}
            for path, info in data.items()
        ]
    if isinstance(data, list):
        return [entry for entry in data if isinstance(entry, dict)]
    raise ValueError("neither a list nor an object")


async def path_info(
    store: NixStore, paths: Sequence[str], *, recursive: bool = False, timeout: float = 60.0
) -> list[PathInfo]:
    """Metadata of `paths` (and their closure if recursive). Raises PathNotFound if invalid."""
    args = [*store.store_args(), "path-info", "--json"]
    if recursive:
        args.append("--recursive")
    args += ["--", *(check_store_path(p) for p in paths)]
    done = await run_nix(store, "nix", args, timeout=timeout)
    try:
        entries = _entries(json.loads(done.stdout))
        missing = [str(e["path"]) for e in entries if e.get("valid", True) is False]
        infos = [PathInfo.from_json(e) for e in entries if e.get("valid", True) is not False]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise NixError(f"unexpected nix path-info output: {exc}", command=done.argv) from exc
    if missing:
        # Nix exits 0 here and marks the entry {"valid": false}.
        where = store.spec or "the system store"
        raise PathNotFound(
            f"path '{missing[0]}' is not valid in {where}",
            command=done.argv,
            stderr_tail=done.tail,
        )
    return infos


async def closure_paths(store: NixStore, path: str, *, timeout: float = 60.0) -> list[str]:
    """Every path in the closure of `path` (which must be valid in `store`), sorted."""
    args = [*store.store_args(), "--query", "--requisites", "--", check_store_path(path)]
    done = await run_nix(store, "nix-store", args, timeout=timeout)
    return sorted(line for line in done.stdout.decode().splitlines() if line)


async def invalid_paths(
    store: NixStore, paths: Iterable[str], *, timeout: float = 60.0
) -> list[str]:
    """The subset of `paths` that is not valid in `store`."""
    checked = [check_store_path(p) for p in paths]
    if not checked:
        return []
    args = [*store.store_args(), "--check-validity", "--print-invalid", "--", *checked]
    done = await run_nix(store, "nix-store", args, timeout=timeout)
    return [line for line in done.stdout.decode().splitlines() if line]


async def is_valid(store: NixStore, path: str, *, timeout: float = 60.0) -> bool:
    """Whether `path` is registered valid in `store` (its closure then is, too)."""
    return not await invalid_paths(store, [path], timeout=timeout)
