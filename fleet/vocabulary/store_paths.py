"""Nix store paths as text: what a valid top-level path looks like, checked in one place."""

from __future__ import annotations

import re

STORE_DIR = "/nix/store"

# Nix's own rules: 32 chars of its base32 alphabet (no e, o, u, t), a dash, then a name of
# [A-Za-z0-9+-._?=], not starting with a dot. Anything else is refused before Nix sees it.
_STORE_PATH = re.compile(r"/nix/store/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-_?=][A-Za-z0-9+\-._?=]*")


class InvalidStorePath(ValueError):
    """Text that is not a plain /nix/store path; never passed on to Nix."""


def check_store_path(text: str) -> str:
    """Return `text` if it is exactly one top-level store path, else raise InvalidStorePath.

    Store paths arrive in announcements from the network; validating them here means no
    caller can smuggle an option ("--option ...") or a subpath into a Nix command line.
    """
    if len(text) > 256 or not _STORE_PATH.fullmatch(text):
        raise InvalidStorePath(f"not a store path: {text[:80]!r}")
    return text
