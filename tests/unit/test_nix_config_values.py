"""Nix public keys and substituter URLs: what Nix accepts passes, a typo is named."""

from __future__ import annotations

import base64

import pytest

from fleet.nix.keys import InvalidNixPublicKey, NixPublicKey
from fleet.nix.substituters import InvalidSubstituter, check_substituter

KEY = "cache.example.org-1:" + base64.b64encode(bytes(range(32))).decode()


def test_a_public_key_parses_to_its_name_and_bytes() -> None:
    parsed = NixPublicKey.parse(KEY)
    assert parsed.name == "cache.example.org-1"
    assert parsed.key == bytes(range(32))
    assert str(parsed) == KEY


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no-colon", "NAME:BASE64"),
        (":" + KEY.split(":")[1], "NAME:BASE64"),
        ("a b:" + KEY.split(":")[1], "NAME:BASE64"),
        ("name:not base64!", "not base64"),
        ("name:" + base64.b64encode(bytes(31)).decode(), "31 bytes"),
        ("name:" + base64.b64encode(bytes(64)).decode(), "64 bytes"),  # a secret key
    ],
)
def test_malformed_public_keys_are_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidNixPublicKey, match=message):
        NixPublicKey.parse(text)


@pytest.mark.parametrize(
    "url",
    [
        "https://cache.nixos.org",
        "http://127.0.0.1:8080/cache",
        "file:///var/cache/fleet",
        "s3://bucket?region=eu-west-1",
        "ssh://builder@host",
        "ssh-ng://host",
        "local",
        "local?root=/tmp/store",
        "/var/lib/chroot-store",
    ],
)
def test_substituters_nix_knows(url: str) -> None:
    assert check_substituter(url) == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("http://a b", "whitespace"),
        ("cache.nixos.org", "expected one of"),
        ("htps://cache.nixos.org", "unknown scheme 'htps'"),
        ("https://", "no host"),
        ("file://relative/dir", "absolute path"),
    ],
)
def test_malformed_substituters_are_refused(url: str, message: str) -> None:
    with pytest.raises(InvalidSubstituter, match=message):
        check_substituter(url)
