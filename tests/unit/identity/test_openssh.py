"""OpenSSH host keys as identities: ed25519 loads as the same key, others are named."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fleet.identity import KeyFileError, load_identity


def _ssh_keygen(path: Path, *args: str) -> None:
    # openssh-client is installed by scripts/test and is in nix/package.nix's check inputs: a
    # missing ssh-keygen is a failure, not a skip. Tests calling this are marked `openssh`
    # (scripts/sandbox-unit-tests checks that they are the only ones needing it).
    program = shutil.which("ssh-keygen")
    if program is None:
        pytest.fail("ssh-keygen is not on PATH: install OpenSSH (Debian: openssh-client)")
    subprocess.run(
        [program, "-q", "-f", str(path), "-C", "test", *args],
        check=True,
        capture_output=True,
    )


@pytest.mark.openssh
def test_openssh_ed25519_host_key(tmp_path: Path) -> None:
    key = tmp_path / "ssh_host_ed25519_key"
    _ssh_keygen(key, "-t", "ed25519", "-N", "")
    ident = load_identity(key)
    # The node id must be the same key that OpenSSH publishes in the .pub file.
    import base64

    pub_blob = base64.b64decode((tmp_path / "ssh_host_ed25519_key.pub").read_text().split()[1])
    assert pub_blob.endswith(ident.node_id.raw)


@pytest.mark.openssh
def test_openssh_encrypted_key_is_named(tmp_path: Path) -> None:
    key = tmp_path / "enc"
    _ssh_keygen(key, "-t", "ed25519", "-N", "secret-passphrase")
    with pytest.raises(KeyFileError, match="encrypted"):
        load_identity(key)


@pytest.mark.openssh
def test_openssh_rsa_key_is_named(tmp_path: Path) -> None:
    key = tmp_path / "rsa"
    _ssh_keygen(key, "-t", "rsa", "-b", "2048", "-N", "")
    with pytest.raises(KeyFileError, match="ssh-rsa; fleet needs ssh-ed25519"):
        load_identity(key)
