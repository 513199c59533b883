"""Substituter URLs: what Nix accepts passes, a typo is named."""

from __future__ import annotations

import pytest

from fleet.nix.substituters import InvalidSubstituter, check_substituter


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
