"""Key files: fleet's own format (written 0600, never overwritten) and OpenSSH ed25519 keys."""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from fleet.identity.errors import KeyFileError
from fleet.identity.keys import Identity
from fleet.identity.openssh import BEGIN as OPENSSH_BEGIN
from fleet.identity.openssh import parse_openssh_ed25519

BEGIN = "-----BEGIN FLEET ED25519 PRIVATE KEY-----"
END = "-----END FLEET ED25519 PRIVATE KEY-----"
_MAX_KEY_FILE = 64 * 1024


def encode_key(identity: Identity) -> str:
    seed = base64.b64encode(identity.seed).decode("ascii")
    return f"{BEGIN}\n{seed}\n{END}\n"


def decode_key(text: str) -> Identity:
    """Parse the text of a fleet key file or an OpenSSH ed25519 private key."""
    body = text.strip()
    if body.startswith(OPENSSH_BEGIN):
        return Identity.from_seed(parse_openssh_ed25519(body))
    if not body.startswith(BEGIN) or not body.endswith(END):
        raise KeyFileError(
            "not a key file: expected a fleet key (fleet keygen) or an OpenSSH ed25519 private key"
        )
    try:
        seed = base64.b64decode("".join(body[len(BEGIN) : -len(END)].split()), validate=True)
    except binascii.Error as exc:
        raise KeyFileError("fleet key file: invalid base64") from exc
    if len(seed) != 32:
        raise KeyFileError(f"fleet key file: the key is {len(seed)} bytes, expected 32")
    return Identity.from_seed(seed)


def load_identity(path: str | os.PathLike[str]) -> Identity:
    """Read a key file; errors name the path and the problem."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(_MAX_KEY_FILE + 1)
    except FileNotFoundError as exc:
        raise KeyFileError(f"{p}: no such key file") from exc
    except PermissionError as exc:
        raise KeyFileError(f"{p}: permission denied") from exc
    except IsADirectoryError as exc:
        raise KeyFileError(f"{p}: is a directory, not a key file") from exc
    if len(data) > _MAX_KEY_FILE:
        raise KeyFileError(f"{p}: too large to be a key file")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise KeyFileError(f"{p}: not a text key file") from exc
    try:
        return decode_key(text)
    except KeyFileError as exc:
        raise KeyFileError(f"{p}: {exc}") from exc


def write_new_key(path: str | os.PathLike[str], identity: Identity | None = None) -> Identity:
    """Create a new key file with mode 0600; refuse to overwrite an existing file."""
    identity = identity or Identity.generate()
    p = Path(path)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{p}: already exists; refusing to overwrite a key") from exc
    except OSError as exc:
        raise KeyFileError(f"{p}: cannot create: {exc.strerror}") from exc
    try:
        os.fchmod(fd, 0o600)  # the umask may have narrowed it further, never widened
        os.write(fd, encode_key(identity).encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return identity
