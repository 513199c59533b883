"""No committed key, nor any id or public key derived from one, appears in what users copy.

Every private key in this repository (the NixOS VM test's under nix/tests/keys/, and any
other) is public by being here. A device configured with one of their node ids, or trusting
their Nix cache key, trusts everyone who has a clone. README.md, docs/ and the modules'
`example` values use placeholders (`<TRUST-ROOT-ID>`, `cache.example.org-1:<BASE64>`) or
the output of a command the reader runs. Any complete node id in them is refused as well:
a real one has no business there, and an invented one looks like something to copy.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet.identity import Identity, InvalidNodeId, KeyFileError, NodeId, decode_key, encode_key

REPO = Path(__file__).resolve().parents[3]
KEY_DIR = REPO / "nix" / "tests" / "keys"
PUBLISHED = ("README.md", "docs", "nixos-modules")
# Not searched for committed keys: tool state, virtualenvs, build results.
SKIP_DIRS = frozenset(
    {".git", ".venv", "venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
)
MAX_FILE = 1024 * 1024

PRIVATE_BLOCK = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----[ \t]*\r?\n"
    r"((?:[ \t]*[A-Za-z0-9+/=:-][^\n]*\r?\n)+?)"
    r"[ \t]*-----END \1PRIVATE KEY-----"
)
# A Nix signing key is NAME:base64 of the 64-byte Ed25519 secret (seed, then public key).
NIX_SECRET = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9._+-]+:([A-Za-z0-9+/]{86}==)")
NODE_ID = re.compile(r"(?<![a-z2-7])[a-z2-7]{52}(?![a-z2-7])")
SHORTEST_SECRET = 10  # a node id's short form; anything shorter is not worth flagging


@dataclass(frozen=True)
class Secret:
    """A string that must not be published, and which committed key it comes from."""

    text: str
    what: str


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def derived(identity: Identity, source: str) -> Iterator[Secret]:
    """Every spelling of a key that could end up in a configuration or a doc."""
    public = identity.node_id.raw
    seed = identity.seed
    yield Secret(str(identity.node_id), f"the node id of {source}")
    yield Secret(identity.node_id.short(), f"the short node id of {source}")
    yield Secret(_b64(public), f"the public key of {source} in base64 (a Nix key's value)")
    yield Secret(_b64(public).rstrip("="), f"the public key of {source} in base64")
    yield Secret(public.hex(), f"the public key of {source} in hex")
    yield Secret(_b64(seed).rstrip("="), f"the private key of {source}")
    yield Secret(_b64(seed + public).rstrip("="), f"the private key of {source} (Nix form)")
    yield Secret(seed.hex(), f"the private key of {source} in hex")


def secrets_in(text: str, source: str) -> Iterator[Secret]:
    """The key material a file holds: private key blocks and Nix signing keys."""
    for block in PRIVATE_BLOCK.finditer(text):
        body = block.group(2)
        for line in body.split():
            if len(line) >= SHORTEST_SECRET and ":" not in line:
                yield Secret(line, f"a line of the private key in {source}")
        try:
            identity = decode_key(block.group(0))
        except (KeyFileError, ValueError):
            continue  # not Ed25519 (or not a key at all): its lines are covered above
        yield from derived(identity, source)
    for match in NIX_SECRET.finditer(text):
        try:
            raw = base64.b64decode(match.group(1), validate=True)
        except binascii.Error:
            continue
        yield Secret(match.group(1).rstrip("="), f"the Nix signing key in {source}")
        yield from derived(Identity.from_seed(raw[:32]), source)


def text_files(root: Path) -> Iterator[tuple[Path, str]]:
    """(path, text) of each UTF-8 file at or under `root`, in a stable order."""
    if root.is_file():
        paths = [root]
    else:
        paths = []
        for directory, subdirs, names in os.walk(root):
            subdirs[:] = sorted(d for d in subdirs if d not in SKIP_DIRS)
            paths += [Path(directory) / name for name in sorted(names)]
    for path in paths:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_FILE:
            continue
        try:
            yield path, path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue


@functools.cache
def committed_secrets(root: Path = REPO) -> dict[str, Secret]:
    """Key material in any file under `root`, keyed by the text that must not appear."""
    found: dict[str, Secret] = {}
    for path, text in text_files(root):
        for secret in secrets_in(text, str(path.relative_to(root))):
            found.setdefault(secret.text, secret)
    return found


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def leaks(path: Path, text: str, secrets: dict[str, Secret], root: Path = REPO) -> list[str]:
    """Each published use of key material, as `file:line: what`, in line order."""
    where = str(path.relative_to(root))
    found: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        hits = [s for text_, s in secrets.items() if text_ in line]
        # A node id also contains its short form: name the longest match only.
        for secret in hits:
            if not any(secret.text in other.text and secret != other for other in hits):
                found.append((number, secret.what))
        for match in NODE_ID.finditer(line):
            try:
                NodeId.parse(match.group(0))
            except InvalidNodeId:
                continue
            if match.group(0) not in secrets:
                found.append(
                    (
                        number,
                        f"a complete node id ({match.group(0)[:10]}...); write a placeholder "
                        "such as <DEVICE-ID> or the command that prints it",
                    )
                )
        for _ in NIX_SECRET.finditer(line):
            found.append((number, "a Nix signing key (NAME:base64 secret)"))
    for block in PRIVATE_BLOCK.finditer(text):
        found.append(
            (_line_of(text, block.start()), f"a private key ({block.group(1)}PRIVATE KEY)")
        )
    return [f"{where}:{number}: {what}" for number, what in sorted(found)]


def published_leaks(location: Path, secrets: dict[str, Secret], root: Path = REPO) -> list[str]:
    return [
        problem
        for path, text in text_files(location)
        for problem in leaks(path, text, secrets, root)
    ]


def test_the_committed_test_keys_are_found() -> None:
    if not KEY_DIR.is_dir():
        pytest.skip("nix/tests/keys is not part of this source tree (the package's check phase)")
    secrets = committed_secrets()
    for key_file in sorted(KEY_DIR.glob("*.key")):
        node_id = str(decode_key(key_file.read_text()).node_id)
        assert node_id in secrets, key_file
    nix_public = (KEY_DIR / "cache.public").read_text().strip().split(":", 1)[1]
    assert nix_public in secrets
    # The README next to the keys lists their ids: the scanner must see every one of them.
    listed = leaks(KEY_DIR / "README.md", (KEY_DIR / "README.md").read_text(), secrets)
    assert len(listed) >= 4, listed


@pytest.mark.parametrize("location", PUBLISHED)
def test_published_text_holds_no_key_material(location: str) -> None:
    path = REPO / location
    if not path.exists():
        pytest.skip(f"{location} is not part of this source tree (the package's check phase)")
    problems = published_leaks(path, committed_secrets())
    assert not problems, (
        "key material in published text (these keys are in the repository, so anyone can "
        "sign with them): use placeholders such as <TRUST-ROOT-ID>, <COORDINATOR-ID>, "
        "<RELAY-ID>, <DEVICE-ID>, cache.example.org-1:<BASE64>, or the command that prints "
        "the value\n" + "\n".join(problems)
    )


# --- The scanner itself --------------------------------------------------------------------


def _fake_repo(tmp_path: Path) -> tuple[Identity, Identity, str]:
    fleet_key = Identity.generate()
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "node.key").write_text(encode_key(fleet_key))
    cache_key = Identity.generate()
    public = _b64(cache_key.node_id.raw)
    nix_secret = "test-cache-1:" + _b64(cache_key.seed + cache_key.node_id.raw)
    (tmp_path / "keys" / "cache.secret").write_text(nix_secret)
    return fleet_key, cache_key, public


def test_scanner_names_file_and_line_of_each_leak(tmp_path: Path) -> None:
    fleet_key, cache_key, public = _fake_repo(tmp_path)
    secrets = committed_secrets(tmp_path)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "guide.md").write_text(
        "# Guide\n\n"
        f'trustRoots = [ "{fleet_key.node_id}" ];\n'
        f'trusted-public-keys = [ "cache.example.org-1:{public}" ];  # renamed, same key\n'
        f"a table cell: {fleet_key.node_id.short()}\n"
        f"some invented id: {Identity.generate().node_id}\n"
    )
    (docs / "secret.md").write_text(
        "```\n" + (tmp_path / "keys" / "node.key").read_text() + "```\n"
        "test-cache-1:" + _b64(cache_key.seed + cache_key.node_id.raw) + "\n"
    )
    problems = published_leaks(docs, secrets, tmp_path)
    text = "\n".join(problems)
    assert "docs/guide.md:3: the node id of keys/node.key" in text
    assert "docs/guide.md:4: the public key of keys/cache.secret in base64" in text
    assert "docs/guide.md:5: the short node id of keys/node.key" in text
    assert "docs/guide.md:6: a complete node id" in text
    assert "docs/secret.md:2: a private key (FLEET ED25519 PRIVATE KEY)" in text
    assert "docs/secret.md:3: a line of the private key in keys/node.key" in text
    assert "docs/secret.md:6: a Nix signing key" in text
    assert "docs/secret.md:6: the Nix signing key in keys/cache.secret" in text
    assert str(fleet_key.node_id) not in text  # the report names the source, not the secret


def test_scanner_accepts_placeholders_and_other_public_keys(tmp_path: Path) -> None:
    _fake_repo(tmp_path)
    doc = tmp_path / "README.md"
    doc.write_text(
        'coordinator = "<COORDINATOR-ID>@vps.example.org:7443"\n'
        'relays = [ "fleet-relay://<RELAY-ID>@vps.example.org:4433" ];\n'
        'trusted-public-keys = [ "cache.example.org-1:<BASE64>" ];\n'
        # Real public keys of someone else's cache are fine: nobody here has their secret.
        'extra = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];\n'
        "system=$(readlink -f result)  # /nix/store/bfjfx9wh33i70s2zls876qnp1k4d2sn9-x\n"
        "fleet id /etc/ssh/ssh_host_ed25519_key\n"
        "The header of a key file is -----BEGIN FLEET ED25519 PRIVATE KEY-----.\n"
    )
    assert published_leaks(doc, committed_secrets(tmp_path), tmp_path) == []
