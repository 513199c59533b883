"""Binary-cache narinfo files: strict parsing and Nix's signature check, without I/O.

A narinfo is what a Nix binary cache says about one store path (`<hash>.narinfo`): its NAR
hash and size, its references and signatures. Nix signs the *fingerprint*
`1;<StorePath>;<NarHash as sha256:nix32>;<NarSize>;<full reference paths, comma-separated>`
with Ed25519; a signature is `KEYNAME:base64(64 bytes)` and a trusted key
`KEYNAME:base64(32 bytes)`, matched by name as Nix does. fleetctl uses this to check, before
it signs a push, that the devices will find the closure signed by a key they trust.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from fleet.nix.keys import InvalidNixPublicKey, NixPublicKey
from fleet.vocabulary import STORE_DIR, InvalidStorePath, check_store_path

NIX32_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"  # Nix's base32: no e, o, u, t
_SHA256_BYTES = hashlib.sha256().digest_size
_NIX32_SHA256 = len("0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73")  # 52
_NAME = re.compile(r"[^\s:]{1,128}")  # a key name: anything but blanks and ':'
_SINGLE_FIELDS = frozenset(
    {"StorePath", "URL", "Compression", "FileHash", "FileSize", "NarHash", "NarSize",
     "References", "Deriver", "System", "CA"}
)  # fmt: skip
MAX_NARINFO_BYTES = 4 << 20  # a path with ~60,000 references; anything larger is garbage


class NarInfoError(ValueError):
    """A narinfo, signature or public key that is malformed (the message says what)."""


class UntrustedNarInfo(Exception):
    """A well-formed narinfo without a valid signature by any of the trusted keys."""


@dataclass(frozen=True, slots=True)
class NarInfo:
    store_path: str
    url: str
    nar_hash: str  # normalized to sha256:<nix32>, the form the fingerprint uses
    nar_size: int
    references: tuple[str, ...]  # full store paths
    signatures: tuple[str, ...]  # KEYNAME:base64, as written
    compression: str | None = None
    deriver: str | None = None

    @property
    def fingerprint(self) -> bytes:
        return fingerprint(self.store_path, self.nar_hash, self.nar_size, self.references)


def nix32_encode(data: bytes) -> str:
    """Nix's base32 (its own alphabet, least significant bits last)."""
    length = (len(data) * 8 - 1) // 5 + 1
    chars = []
    for n in range(length - 1, -1, -1):
        bit = n * 5
        i, j = divmod(bit, 8)
        value = data[i] >> j
        if i + 1 < len(data):
            value |= data[i + 1] << (8 - j)
        chars.append(NIX32_ALPHABET[value & 0x1F])
    return "".join(chars)


def nix32_decode(text: str, size: int) -> bytes:
    """The `size` bytes that `text` encodes; NarInfoError if it is not exactly that."""
    if len(text) != (size * 8 - 1) // 5 + 1:
        raise NarInfoError(f"nix32 text of {len(text)} characters cannot hold {size} bytes")
    out = bytearray(size)
    for n, char in enumerate(reversed(text)):
        digit = NIX32_ALPHABET.find(char)
        if digit < 0:
            raise NarInfoError(f"{char!r} is not a nix32 digit")
        bit = n * 5
        i, j = divmod(bit, 8)
        out[i] |= (digit << j) & 0xFF
        carry = digit >> (8 - j)
        if i + 1 < size:
            out[i + 1] |= carry
        elif carry:
            raise NarInfoError("nix32 text encodes more bits than the hash has")
    return bytes(out)


def _b64(text: str, size: int, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NarInfoError(f"{what}: not base64") from None
    if len(raw) != size:
        raise NarInfoError(f"{what}: {len(raw)} bytes, expected {size}")
    return raw


def normalize_nar_hash(text: str) -> str:
    """`sha256:` + nix32 for any of the forms Nix accepts (nix32, base16, base64, SRI)."""
    if text.startswith("sha256-"):  # SRI
        digest = _b64(text.removeprefix("sha256-"), _SHA256_BYTES, "NarHash")
    elif text.startswith("sha256:"):
        body = text.removeprefix("sha256:")
        if len(body) == _NIX32_SHA256:
            digest = nix32_decode(body, _SHA256_BYTES)
        elif len(body) == 2 * _SHA256_BYTES:
            try:
                digest = bytes.fromhex(body)
            except ValueError:
                raise NarInfoError("NarHash: not hexadecimal") from None
        else:
            digest = _b64(body, _SHA256_BYTES, "NarHash")
    else:
        raise NarInfoError(f"NarHash must be a sha256 hash, got {text[:40]!r}")
    return "sha256:" + nix32_encode(digest)


def fingerprint(store_path: str, nar_hash: str, nar_size: int, references: Iterable[str]) -> bytes:
    """What Nix signs for a path (see the module docstring)."""
    return f"1;{store_path};{nar_hash};{nar_size};{','.join(references)}".encode()


def parse_public_key(text: str) -> NixPublicKey:
    """`NAME:base64(32 bytes)`, as in trusted-public-keys (fleet.nix.keys' rules)."""
    try:
        return NixPublicKey.parse(text.strip())
    except InvalidNixPublicKey as exc:
        raise NarInfoError(str(exc)) from None


def _store_path(text: str, field: str) -> str:
    try:
        return check_store_path(text)
    except InvalidStorePath:
        raise NarInfoError(f"{field}: not a store path: {text[:80]!r}") from None


def _size(text: str, field: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise NarInfoError(f"{field}: not a size in bytes: {text[:40]!r}")
    return int(text)


def parse_narinfo(data: bytes | str) -> NarInfo:
    """Parse strictly: every line `Key: value`, known keys once (Sig may repeat), the fields
    Nix requires present (StorePath, URL, NarHash, NarSize > 0), every path a store path.
    Unknown keys are ignored, as Nix ignores them. Raises only NarInfoError."""
    if isinstance(data, bytes):
        if len(data) > MAX_NARINFO_BYTES:
            raise NarInfoError(f"narinfo of {len(data)} bytes is too large")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise NarInfoError("narinfo is not UTF-8 text") from None
    fields: dict[str, str] = {}
    sigs: list[str] = []
    for number, line in enumerate(data.split("\n"), start=1):
        if not line:
            continue
        key, sep, value = line.partition(": ")
        if not sep or not key or not key.isascii() or not key.isalnum():
            raise NarInfoError(f"line {number}: not 'Key: value': {line[:80]!r}")
        if key == "Sig":
            sigs.append(value)
        elif key in _SINGLE_FIELDS:
            if key in fields:
                raise NarInfoError(f"line {number}: {key} given twice")
            fields[key] = value
    for required in ("StorePath", "URL", "NarHash", "NarSize"):
        if not fields.get(required):
            raise NarInfoError(f"missing {required}")
    nar_size = _size(fields["NarSize"], "NarSize")
    if nar_size == 0:
        raise NarInfoError("NarSize is 0")
    store_path = _store_path(fields["StorePath"], "StorePath")
    references = tuple(
        _store_path(f"{STORE_DIR}/{name}", "References")
        for name in fields.get("References", "").split(" ")
        if name
    )
    deriver = fields.get("Deriver")
    return NarInfo(
        store_path=store_path,
        url=fields["URL"],
        nar_hash=normalize_nar_hash(fields["NarHash"]),
        nar_size=nar_size,
        references=references,
        signatures=tuple(sigs),
        compression=fields.get("Compression"),
        deriver=None if deriver in (None, "unknown-deriver") else deriver,
    )


def verify_narinfo(info: NarInfo, trusted: Iterable[NixPublicKey]) -> str:
    """The name of a trusted key whose signature over `info` verifies.

    Raises UntrustedNarInfo saying why not: no signature at all, only signatures by other
    keys (named), or a signature by a trusted key that does not verify (changed narinfo).
    """
    keys = {k.name: k for k in trusted}
    message = info.fingerprint
    others: list[str] = []
    bad: list[str] = []
    for sig in info.signatures:
        name, sep, body = sig.partition(":")
        key = keys.get(name)
        if not sep or key is None:
            others.append(name or "?")
            continue
        try:
            raw = _b64(body, 64, f"signature by {name}")
            nacl.signing.VerifyKey(key.key).verify(message, raw)
        except (NarInfoError, nacl.exceptions.BadSignatureError):
            bad.append(name)
            continue
        return name
    if bad:
        raise UntrustedNarInfo(
            f"its signature by {', '.join(bad)} does not verify (the narinfo was changed "
            "after signing, or signed for another path)"
        )
    trusted_names = ", ".join(sorted(keys)) or "none"
    if others:
        raise UntrustedNarInfo(
            f"it is signed only by {', '.join(others)}, not by a trusted key ({trusted_names})"
        )
    raise UntrustedNarInfo(f"it has no signature (trusted keys: {trusted_names})")
