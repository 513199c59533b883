"""Substituter URLs as Nix reads them: the store URL schemes a binary cache can have.

Checked before Nix ever sees one (at the agent's start-up and before each fetch), so a typo
is reported as the setting it is rather than as a failed download.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# Schemes of Nix stores that can serve as substituters; `local` and absolute paths are
# local stores (a chroot store's root), the rest are binary caches or remote stores.
NETWORK_SCHEMES = ("http", "https", "s3", "ssh", "ssh-ng")
_LOCAL = re.compile(r"local(\?\S*)?|/\S*")


class InvalidSubstituter(ValueError):
    """Text that is not a substituter URL; the message says what is wrong."""


def check_substituter(url: str) -> str:
    """`url` itself if Nix can use it as a substituter, else InvalidSubstituter."""
    if not url or any(c.isspace() for c in url):
        raise InvalidSubstituter(f"{url!r} is not a substituter URL: empty or has whitespace")
    if _LOCAL.fullmatch(url):
        return url
    scheme, sep, rest = url.partition("://")
    known = ", ".join(f"{s}://" for s in (*NETWORK_SCHEMES, "file"))
    if not sep:
        raise InvalidSubstituter(f"{url!r} is not a substituter URL: expected one of {known}")
    if scheme == "file":
        if not rest.startswith("/"):
            raise InvalidSubstituter(f"{url!r}: a file:// cache needs an absolute path")
        return url
    if scheme not in NETWORK_SCHEMES:
        raise InvalidSubstituter(f"{url!r}: unknown scheme {scheme!r}; expected one of {known}")
    try:
        host = urlsplit(url).hostname
    except ValueError as exc:
        raise InvalidSubstituter(f"{url!r}: {exc}") from None
    if not host:
        raise InvalidSubstituter(f"{url!r}: no host name")
    return url
