"""Admin / CI side: signing keys, signing paths, pushing closures into a binary cache.

A binary cache is just files (`nix-cache-info`, `*.narinfo`, `nar/*`); any static HTTP
server can serve one. zstd is the default compression: xz took 63 s for 100 MB here, zstd
well under a second, and every Nix that fleet targets reads it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from fleet.nix.process import run_nix
from fleet.nix.store import NixStore
from fleet.vocabulary import check_store_path

_KEY_NAME = re.compile(r"[A-Za-z0-9._+-]{1,64}")
_COMPRESSIONS = frozenset({"zstd", "xz", "bzip2", "gzip", "none"})


@dataclass(frozen=True)
class SigningKey:
    name: str
    secret_file: Path  # mode 0600: "NAME:base64(64-byte ed25519 secret)"
    public_key: str  # "NAME:base64(32-byte ed25519 public key)", for trusted-public-keys


async def generate_signing_key(
    name: str, directory: Path, *, store: NixStore | None = None, timeout: float = 30.0
) -> SigningKey:
    """Write DIR/NAME.secret (0600) and DIR/NAME.public with nix-store's key generator."""
    if not _KEY_NAME.fullmatch(name):
        raise ValueError(f"bad key name {name!r}")
    directory.mkdir(parents=True, exist_ok=True)
    secret = directory / f"{name}.secret"
    public = directory / f"{name}.public"
    # Create the secret file 0600 first: Nix truncates and writes it, keeping the mode.
    os.close(os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    await run_nix(
        store or NixStore(),
        "nix-store",
        ["--generate-binary-cache-key", name, str(secret), str(public)],
        timeout=timeout,
    )
    os.chmod(secret, 0o600)
    return SigningKey(name, secret, public.read_text().strip())


async def sign_paths(
    store: NixStore,
    key_file: Path,
    path: str | Sequence[str],
    *,
    recursive: bool = True,
    timeout: float = 300.0,
) -> None:
    """Add a signature by `key_file` to `path` (or several, with closures) in `store`."""
    args = [*store.store_args(), "store", "sign", "--key-file", str(key_file)]
    if recursive:
        args.append("--recursive")
    paths = [path] if isinstance(path, str) else list(path)
    await run_nix(store, "nix", [*args, "--", *map(check_store_path, paths)], timeout=timeout)


def cache_uri(
    destination: Path | str, *, compression: str = "zstd", secret_key: Path | None = None
) -> str:
    """A `file://` (for a directory) or given URL with Nix store parameters appended."""
    if compression not in _COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}")
    base = f"file://{Path(destination).resolve()}" if isinstance(destination, Path) else destination
    params = [f"compression={compression}"]
    if secret_key is not None:
        params.append(f"secret-key={quote(str(secret_key), safe='/')}")
    return base + ("&" if "?" in base else "?") + "&".join(params)


async def copy_to_cache(
    store: NixStore,
    path: str | Sequence[str],
    destination: Path | str,
    *,
    compression: str = "zstd",
    secret_key: Path | None = None,
    timeout: float = 1800.0,
) -> None:
    """Copy the closure of `path` (or of several) from `store` into a binary cache.

    `destination` is a directory (becomes `file://DIR`) or a store URL.

    Paths keep the signatures they have in `store`; `secret_key` also signs on upload.
    """
    args = ["copy"]
    if store.spec is not None:
        args += ["--from", store.spec]
    args += ["--to", cache_uri(destination, compression=compression, secret_key=secret_key)]
    paths = [path] if isinstance(path, str) else list(path)
    await run_nix(store, "nix", [*args, "--", *map(check_store_path, paths)], timeout=timeout)
