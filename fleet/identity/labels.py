"""Device names and tags: the plain labels admins type on command lines and in `tag:NAME`.

One definition for every place a tag enters (`fleetctl devices add --tag`, the agent's own
`--tag`, the coordinator's registry), so `kiosk` and `tag:kiosk` mean the same everywhere and
a spelling one side accepts is never refused by the other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

TAG_PREFIX = "tag:"

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class InvalidLabel(ValueError):
    """A name or tag that is not a plain label (the message says what a label is)."""


def check_label(text: str, what: str) -> str:
    """`text` if it is 1-63 letters, digits, '.', '_' or '-' starting with a letter or digit."""
    if not _LABEL.fullmatch(text):
        raise InvalidLabel(
            f"{what} {text[:70]!r} must be 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return text


def normalize_tag(text: str) -> str:
    """A tag as written by people (`kiosk` or `tag:kiosk`) -> its stored form (`kiosk`)."""
    return check_label(text.removeprefix(TAG_PREFIX), "tag")


def normalize_tags(texts: Iterable[str]) -> tuple[str, ...]:
    """Sorted, unique, normalized tags; InvalidLabel names the first bad one."""
    return tuple(sorted({normalize_tag(t) for t in texts}))
