"""Nix public keys: what Nix accepts passes, a typo is named."""

from __future__ import annotations

import base64

import pytest

from fleet.nix.keys import InvalidNixPublicKey, NixPublicKey

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
