"""The agent's enrollment token: read once at start, presented in its Hello.

The file is a bearer credential (whoever holds it can enroll a device), so it is read but
never logged, and a file others may read is refused, as a key file would be.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fleet.protocol.enroll_token import parse_token_file
from fleet.wire import SignedEnvelope


def read_token_file(path: Path) -> SignedEnvelope:
    """The token's envelope; ValueError names the file and what is wrong with it."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(
            f"{path} is readable by others (mode {stat.S_IMODE(mode):o}); it is a bearer "
            "credential: chmod 600 it"
        )
    return parse_token_file(text, str(path))
