"""Writing an enrollment token file for `fleetctl enroll-token create`.

The token is a bearer credential (docs/security.md): the file is created with mode 0600
(whatever the umask), never through a symlink, and its contents never reach a log.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_token_file(path: str | Path, text: str) -> None:
    """Write (or replace) the file with mode 0600; OSError if it cannot be written."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode under O_CREAT: narrow it
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
