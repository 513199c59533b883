"""Narinfo files made and signed in Python, for tests of the cache check without Nix.

The fingerprint here is written out by hand (not taken from fleet.nix.narinfo), so a test
that signs with it and verifies with fleet's code checks the two against each other; the
real-Nix sample in tests/unit/nix/test_narinfo.py checks both against Nix.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nacl.signing

from fleet.nix.narinfo import nix32_encode

STORE = "/nix/store"


def store_path(name: str) -> str:
    """A valid store path whose hash part is derived from `name`."""
    digest = hashlib.sha256(name.encode()).digest()[:20]
    return f"{STORE}/{nix32_encode(digest)}-{name}"


@dataclass(frozen=True)
class CacheKey:
    name: str
    signing: nacl.signing.SigningKey

    @classmethod
    def generate(cls, name: str) -> CacheKey:
        return cls(name, nacl.signing.SigningKey.generate())

    @property
    def public(self) -> str:
        return f"{self.name}:{base64.b64encode(bytes(self.signing.verify_key)).decode()}"

    def sign(self, message: str) -> str:
        signature = self.signing.sign(message.encode()).signature
        return f"{self.name}:{base64.b64encode(signature).decode()}"


def narinfo(
    path: str,
    references: Sequence[str] = (),
    *,
    key: CacheKey | None = None,
    nar_size: int = 1160,
    nar_hash: str | None = None,
    signed_hash: str | None = None,
    extra: str = "",
) -> str:
    """A narinfo as Nix writes one; `signed_hash` signs another NarHash (a tampered file)."""
    nar_hash = nar_hash or "sha256:" + nix32_encode(hashlib.sha256(path.encode()).digest())
    refs = " ".join(r.removeprefix(STORE + "/") for r in references)
    lines = [
        f"StorePath: {path}",
        "URL: nar/0nfs8fzacx4zh3kdjwyfzj4c0arjpy08yzdljh1a426hdn76lg96.nar.zst",
        "Compression: zstd",
        f"NarHash: {nar_hash}",
        f"NarSize: {nar_size}",
        f"References: {refs}",
    ]
    if key is not None:
        fingerprint = f"1;{path};{signed_hash or nar_hash};{nar_size};{','.join(references)}"
        lines.append(f"Sig: {key.sign(fingerprint)}")
    return "\n".join(lines) + "\n" + extra


def write_narinfo(cache: Path, path: str, text: str) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "nix-cache-info").write_text("StoreDir: /nix/store\n")
    (cache / f"{path.removeprefix(STORE + '/')[:32]}.narinfo").write_text(text)
