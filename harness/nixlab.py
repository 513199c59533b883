"""A Nix lab for tests: fake NixOS systems, signed binary caches over HTTP, agent stores.

Everything runs against chroot stores under a temporary directory with a hermetic nix.conf,
so the host's /nix/store is never touched and tests never reach the internet.

A fake system is a derivation built with /bin/sh whose `bin/switch-to-configuration`
appends "ACTION STOREPATH" to the file named by $FLEET_SWITCH_LOG (and prints a line);
the broken variant does the same, prints an error on stderr and exits 3. Each system
references a second store path (with a random payload), so closures have two paths.
"""

from __future__ import annotations

import contextlib
import http.server
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from fleet.nix import NixEnv, NixStore, copy_to_cache

SWITCH_LOG_VAR = "FLEET_SWITCH_LOG"
BROKEN_EXIT_CODE = 3

SYSTEM_NIX = r"""
{ version, fail ? false, payloadBytes ? 65536 }:
let
  dep = derivation {
    name = "fleet-test-payload-${version}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    PATH = "/bin";
    args = [ "-c" "mkdir $out && head -c ${toString payloadBytes} /dev/urandom > $out/payload" ];
  };
  tail = if fail then ''
    echo "activating ${version}: starting units"
    echo "error: unit fleet-test.service failed to start" >&2
    exit 3
  '' else ''
    echo "activating ${version}: done"
  '';
in derivation {
  name = "nixos-system-fleet-test-${version}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/bin";
  inherit tail;
  passAsFile = [ "tail" ];
  args = [ "-c" ''
    mkdir -p $out/bin
    echo ${dep} > $out/payload-path
    echo ${version} > $out/nixos-version
    {
      echo '#!/bin/sh'
      echo 'echo "$1 '"$out"'" >> "''${FLEET_SWITCH_LOG:-/dev/null}"'
      cat "$tailPath"
    } > $out/bin/switch-to-configuration
    chmod +x $out/bin/switch-to-configuration
  '' ];
}
"""


def require_nix() -> None:
    """Fail (never skip) with a clear message when Nix is missing."""
    missing = [p for p in ("nix", "nix-build", "nix-store", "nix-env") if not shutil.which(p)]
    if missing:
        pytest.fail(
            f"Nix is not installed ({', '.join(missing)} not on PATH): "
            "run scripts/test as root (it installs nix-bin) or apt-get install nix-bin",
            pytrace=False,
        )


@dataclass(frozen=True)
class FakeSystem:
    version: str
    path: str  # /nix/store/...-nixos-system-fleet-test-VERSION
    payload: str  # the second path of the closure
    broken: bool

    @property
    def closure(self) -> list[str]:
        return sorted([self.path, self.payload])


@dataclass(frozen=True)
class Key:
    name: str
    secret_file: Path
    public_key: str


def _run(argv: list[str], env: NixEnv) -> str:
    done = subprocess.run(
        argv, env=env.environ(), capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr}")
    return done.stdout.strip()


def make_key(name: str, directory: Path, env: NixEnv) -> Key:
    directory.mkdir(parents=True, exist_ok=True)
    secret, public = directory / f"{name}.secret", directory / f"{name}.public"
    _run(["nix-store", "--generate-binary-cache-key", name, str(secret), str(public)], env)
    return Key(name, secret, public.read_text().strip())


class Builder:
    """A chroot store where fake systems are built (and signed), as CI would."""

    def __init__(self, root: Path) -> None:
        require_nix()
        self.root = root
        self.env = NixEnv.hermetic(root / "nix-env")
        self.store = NixStore.chroot(root / "store", self.env)
        self.expression = root / "system.nix"
        self.expression.write_text(SYSTEM_NIX)
        self.key = make_key("fleet-test-1", root / "keys", self.env)
        self.wrong_key = make_key("fleet-test-wrong-1", root / "keys", self.env)

    def build(self, version: str, *, broken: bool = False, sign: bool = True) -> FakeSystem:
        """Build (about 0.1 s) and, unless sign=False, sign the closure with self.key."""
        store = str(self.store.root)
        argv = ["nix-build", "--store", store, str(self.expression), "--no-out-link"]
        argv += ["--argstr", "version", version]
        if broken:
            argv += ["--arg", "fail", "true"]
        path = _run(argv, self.env)
        payload = (self.store.real_path(path) / "payload-path").read_text().strip()
        if sign:
            _run(
                [
                    "nix", "store", "sign", "--store", store,
                    "--key-file", str(self.key.secret_file), "--recursive", path,
                ],
                self.env,
            )  # fmt: skip
        return FakeSystem(version, path, payload, broken)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve `directory` over HTTP on 127.0.0.1 (a free port); yield the base URL."""
    handler = partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="nix-cache-http", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def unreachable_url() -> str:
    """An http URL on loopback where nothing listens (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def fill_cache(builder: Builder, directory: Path, *systems: FakeSystem) -> None:
    """Copy the closures into a zstd binary cache directory (signatures as in the builder)."""
    paths = [system.path for system in systems]
    await copy_to_cache(builder.store, paths, directory, compression="zstd")


def agent_store(directory: Path) -> NixStore:
    """A fresh chroot store with its own hermetic config, as one test agent would have."""
    return NixStore.chroot(directory / "store", NixEnv.hermetic(directory / "nix-env"))


def switch_log_lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []
