"""Identity: node id text form, key files, OpenSSH host keys, and the `fleet keygen/id` CLI."""

from __future__ import annotations

import contextlib
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.identity import (
    BadSignature,
    Identity,
    InvalidNodeId,
    KeyFileError,
    NodeId,
    decode_key,
    load_identity,
    write_new_key,
)
from tests.cli import run_fleet


@given(st.binary(min_size=32, max_size=32))
def test_node_id_text_round_trip(raw: bytes) -> None:
    node_id = NodeId(raw)
    text = str(node_id)
    assert len(text) == 52
    assert text == text.lower()
    assert "=" not in text
    assert NodeId.parse(text) == node_id


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "52 characters"),
        ("a" * 51, "52 characters"),
        ("a" * 53, "52 characters"),
        ("A" * 52, "lowercase"),
        ("1" * 52, "lowercase"),
        ("a" * 51 + "=", "lowercase"),
    ],
)
def test_node_id_parse_rejects_with_reason(text: str, fragment: str) -> None:
    with pytest.raises(InvalidNodeId, match=fragment):
        NodeId.parse(text)


def test_node_id_rejects_second_spelling() -> None:
    text = str(Identity.generate().node_id)
    # The last character carries 4 unused bits; setting them must not give another valid id.
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    idx = alphabet.index(text[-1])
    variant = text[:-1] + alphabet[idx ^ 1]
    with pytest.raises(InvalidNodeId):
        NodeId.parse(variant)


def test_sign_and_verify() -> None:
    ident = Identity.generate()
    sig = ident.sign(b"message")
    ident.node_id.verify(b"message", sig)
    with pytest.raises(BadSignature):
        ident.node_id.verify(b"messagE", sig)
    with pytest.raises(BadSignature):
        Identity.generate().node_id.verify(b"message", sig)
    with pytest.raises(BadSignature):
        ident.node_id.verify(b"message", sig[:10])


def test_identity_repr_hides_secret() -> None:
    ident = Identity.generate()
    assert ident.seed.hex() not in repr(ident)
    assert ident.node_id.short() in repr(ident)


def test_keygen_writes_0600_and_refuses_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    ident = write_new_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_identity(path).node_id == ident.node_id
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        write_new_key(path)
    assert load_identity(path).node_id == ident.node_id


def test_load_errors_name_problem(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no such key file"):
        load_identity(tmp_path / "missing")
    garbage = tmp_path / "garbage"
    garbage.write_text("hello\n")
    with pytest.raises(KeyFileError, match="not a key file"):
        load_identity(garbage)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(KeyFileError, match="not a text key file"):
        load_identity(binary)
    short = tmp_path / "short"
    short.write_text(
        "-----BEGIN FLEET ED25519 PRIVATE KEY-----\nAAAA\n-----END FLEET ED25519 PRIVATE KEY-----\n"
    )
    with pytest.raises(KeyFileError, match="3 bytes, expected 32"):
        load_identity(short)


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


@given(st.text(max_size=300))
def test_decode_key_never_crashes(text: str) -> None:
    with contextlib.suppress(KeyFileError):
        decode_key(text)


def test_cli_keygen_and_id(tmp_path: Path) -> None:
    path = tmp_path / "k"
    res = run_fleet("keygen", str(path))
    assert res.returncode == 0, res.stderr
    node_id = res.stdout.strip()
    NodeId.parse(node_id)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    res = run_fleet("id", str(path))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == node_id
    res = run_fleet("keygen", str(path))
    assert res.returncode != 0
    assert "refusing to overwrite" in res.stderr
    res = run_fleet("id", str(tmp_path / "nope"))
    assert res.returncode != 0
    assert "no such key file" in res.stderr
