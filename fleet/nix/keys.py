"""Nix public keys as `trusted-public-keys` writes them: `NAME:BASE64` of a 32-byte Ed25519 key.

One parser for every place that reads such a key (agent settings, narinfo signatures), with
Nix's own rule: a name without whitespace or `:`, then exactly 32 bytes of standard base64.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

_NAME = re.compile(r"[^\s:]+")
_KEY_BYTES = 32


class InvalidNixPublicKey(ValueError):
    """Text that is not a Nix public key; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class NixPublicKey:
    name: str  # e.g. cache.nixos.org-1: the name a narinfo signature carries
    key: bytes  # the raw 32-byte Ed25519 public key

    @classmethod
    def parse(cls, text: str) -> NixPublicKey:
        name, sep, encoded = text.partition(":")
        if not sep or not _NAME.fullmatch(name):
            raise InvalidNixPublicKey(
                f"{text!r} is not a Nix public key: expected NAME:BASE64, as in the .public "
                "file of nix-store --generate-binary-cache-key"
            )
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidNixPublicKey(f"{text!r}: the part after {name}: is not base64") from None
        if len(key) != _KEY_BYTES:
            raise InvalidNixPublicKey(
                f"{text!r}: the key is {len(key)} bytes, an Ed25519 public key is {_KEY_BYTES}"
            )
        return cls(name, key)

    def __str__(self) -> str:
        return f"{self.name}:{base64.b64encode(self.key).decode('ascii')}"
