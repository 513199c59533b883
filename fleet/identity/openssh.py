"""Reading unencrypted OpenSSH ed25519 private keys, so a device can reuse its host key.

Format: PROTOCOL.key in OpenSSH ("openssh-key-v1"). We parse it ourselves rather than via
`cryptography` so that every way a key can be unusable gets a message naming the problem.
"""

from __future__ import annotations

import base64
import binascii
import struct

from fleet.identity.errors import KeyFileError

BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
END = "-----END OPENSSH PRIVATE KEY-----"
_MAGIC = b"openssh-key-v1\x00"


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def uint32(self) -> int:
        if self._pos + 4 > len(self._data):
            raise KeyFileError("truncated OpenSSH private key")
        (value,) = struct.unpack_from(">I", self._data, self._pos)
        self._pos += 4
        return int(value)

    def string(self) -> bytes:
        length = self.uint32()
        if self._pos + length > len(self._data):
            raise KeyFileError("truncated OpenSSH private key")
        value = self._data[self._pos : self._pos + length]
        self._pos += length
        return value


def parse_openssh_ed25519(text: str) -> bytes:
    """Return the 32-byte Ed25519 seed from an OpenSSH private key file's text."""
    body = text.strip()
    if not body.startswith(BEGIN) or not body.endswith(END):
        raise KeyFileError("not an OpenSSH private key")
    b64 = "".join(body[len(BEGIN) : -len(END)].split())
    try:
        blob = base64.b64decode(b64, validate=True)
    except binascii.Error as exc:
        raise KeyFileError("OpenSSH private key: invalid base64") from exc
    if not blob.startswith(_MAGIC):
        raise KeyFileError("OpenSSH private key: not in openssh-key-v1 format")
    reader = _Reader(blob[len(_MAGIC) :])
    cipher = reader.string()
    kdf = reader.string()
    reader.string()  # kdf options
    if cipher != b"none" or kdf != b"none":
        raise KeyFileError(
            f"OpenSSH private key is encrypted ({cipher.decode(errors='replace')}); "
            "fleet needs an unencrypted key (ssh-keygen -p -N '' -f KEY removes the passphrase)"
        )
    count = reader.uint32()
    if count != 1:
        raise KeyFileError(f"OpenSSH private key file holds {count} keys; expected one")
    public_blob = _Reader(reader.string())
    key_type = public_blob.string()
    if key_type != b"ssh-ed25519":
        raise KeyFileError(
            f"OpenSSH key type is {key_type.decode(errors='replace')}; fleet needs ssh-ed25519"
        )
    private = _Reader(reader.string())
    check1, check2 = private.uint32(), private.uint32()
    if check1 != check2:
        raise KeyFileError("OpenSSH private key: check integers differ (corrupt or encrypted)")
    if private.string() != b"ssh-ed25519":
        raise KeyFileError("OpenSSH private key: private section is not ssh-ed25519")
    public = private.string()
    secret = private.string()
    if len(public) != 32 or len(secret) != 64 or secret[32:] != public:
        raise KeyFileError("OpenSSH private key: malformed ed25519 key material")
    return secret[:32]
