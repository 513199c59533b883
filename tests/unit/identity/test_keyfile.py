"""Key files: written 0600, never overwritten, load errors named; the `fleet keygen/id` CLI."""

from __future__ import annotations

import contextlib
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.identity import KeyFileError, NodeId, decode_key, load_identity, write_new_key
from harness.cli import run_fleet


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
