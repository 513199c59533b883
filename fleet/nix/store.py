"""Which Nix store to act on, and with which configuration.

`NixStore()` is the machine's own store (/nix/store, through the daemon if one runs), what an
agent on a NixOS device uses. `NixStore.chroot(DIR)` is a store whose files live under DIR
(Nix's `local?root=DIR`, passed as `--store DIR`): logical paths stay /nix/store/..., so a
test agent gets a full store of its own and the host store is never touched.

`NixEnv` is the environment Nix runs with. Production leaves it empty (the system nix.conf);
tests and lab agents use `NixEnv.hermetic(dir)`, a nix.conf of their own that never reaches
out to cache.nixos.org.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fleet.vocabulary.store_paths import check_store_path

SYSTEM_PROFILE = "nix/var/nix/profiles/system"

HERMETIC_NIX_CONF = """\
# Written by fleet for a hermetic Nix: no daemon, no build users, no public cache.
build-users-group =
sandbox = false
sandbox-paths = /bin=/usr/bin /usr /lib=/usr/lib /lib64=/usr/lib64
substituters =
experimental-features = nix-command
require-sigs = true
narinfo-cache-negative-ttl = 0
"""


@dataclass(frozen=True)
class NixEnv:
    """Environment for Nix processes; only the fields given override the inherited ones."""

    conf_dir: Path | None = None
    cache_dir: Path | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def hermetic(cls, directory: Path, *, extra_conf: str = "") -> NixEnv:
        """Create DIR/conf/nix.conf and DIR/cache; return an env that uses only them."""
        conf_dir = directory / "conf"
        cache_dir = directory / "cache"
        conf_dir.mkdir(parents=True, exist_ok=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        (conf_dir / "nix.conf").write_text(HERMETIC_NIX_CONF + extra_conf)
        return cls(conf_dir=conf_dir, cache_dir=cache_dir)

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.conf_dir is not None:
            env["NIX_CONF_DIR"] = str(self.conf_dir)
            env.pop("NIX_USER_CONF_FILES", None)
            env.pop("NIX_CONFIG", None)
        if self.cache_dir is not None:
            env["XDG_CACHE_HOME"] = str(self.cache_dir)
        env.update(self.extra)
        return env


@dataclass(frozen=True)
class NixStore:
    """A store to act on: the system store (default), a chroot store DIR, or a store URI."""

    root: Path | None = None
    uri: str | None = None
    env: NixEnv = field(default_factory=NixEnv)

    def __post_init__(self) -> None:
        if self.root is not None and self.uri is not None:
            raise ValueError("a NixStore has either a root directory or a URI, not both")

    @classmethod
    def chroot(cls, root: Path, env: NixEnv | None = None) -> NixStore:
        return cls(root=Path(root), env=env or NixEnv())

    @classmethod
    def at_uri(cls, uri: str, env: NixEnv | None = None) -> NixStore:
        """A store by URI, e.g. a binary cache (`file:///srv/cache`, `http://host:port`)."""
        return cls(uri=uri, env=env or NixEnv())

    @property
    def spec(self) -> str | None:
        """What `--store` / `--from` get, or None for the default store."""
        if self.root is not None:
            return str(self.root)
        return self.uri

    def store_args(self) -> list[str]:
        spec = self.spec
        return ["--store", spec] if spec is not None else []

    def real_path(self, store_path: str) -> Path:
        """Where the files of a logical /nix/store path are on this machine."""
        check_store_path(store_path)
        if self.uri is not None:
            raise ValueError(f"store {self.uri} has no local files")
        if self.root is None:
            return Path(store_path)
        return self.root / store_path.lstrip("/")

    @property
    def system_profile(self) -> Path:
        """The NixOS system profile of this store (a host path)."""
        if self.uri is not None:
            raise ValueError(f"store {self.uri} has no profiles")
        return (self.root or Path("/")) / SYSTEM_PROFILE
