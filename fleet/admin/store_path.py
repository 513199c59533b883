"""What an admin may type as the system to push: a store path, or a link to one (./result).

`nix-build` leaves `./result`, a symlink into the store; pushing it must mean the store path
it points at. Links are followed one by one and the walk stops as soon as it reaches a path
directly under /nix/store: the target need not exist on this machine (a chroot store, or a
store path built elsewhere), and a store path that is itself a symlink is not followed.
"""

from __future__ import annotations

import os

from fleet.vocabulary import STORE_DIR, InvalidStorePath, check_store_path

MAX_LINKS = 40  # as the kernel's ELOOP limit
_HINT = "pass the system's /nix/store/... path, or the ./result link nix-build made"


class NotASystemPath(InvalidStorePath):
    """The argument does not name a store path we can push; the message says what to pass."""


def _is_store_prefix(path: str) -> bool:
    """/nix and /nix/store themselves: logical names, never followed as links."""
    return path == STORE_DIR or STORE_DIR.startswith(path.rstrip("/") + "/")


def _follow(text: str) -> tuple[str, str]:
    """(the first path directly under the store dir, what follows it) or ("", resolved)."""
    pending = [part for part in os.path.abspath(text).split("/") if part]
    current = "/"
    links = 0
    while pending:
        name = pending.pop(0)
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, name)
        if os.path.dirname(candidate) == STORE_DIR:
            return candidate, "/".join(pending)
        if not _is_store_prefix(candidate) and os.path.islink(candidate):
            links += 1
            if links > MAX_LINKS:
                raise NotASystemPath(f"{text}: too many levels of symbolic links")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = "/"
            pending = [part for part in target.split("/") if part] + pending
            continue
        current = candidate
    return "", current


def _check_top(path: str, shown: str) -> str:
    if path.endswith(".drv"):
        raise NotASystemPath(
            f"{shown} is a derivation, not a system: build it first "
            f"(nix-build {path}, or nix build '{path}^*') and push the result"
        )
    try:
        return check_store_path(path)
    except InvalidStorePath:
        raise NotASystemPath(f"{shown}: not a store path; {_HINT}") from None


def resolve_system_path(text: str) -> str:
    """The top-level store path `text` names (itself, or where its links lead).

    Raises NotASystemPath with one line saying what to pass instead: for a path inside a
    store path (the top-level path is suggested), a derivation, a file or directory outside
    the store, or nothing at all.
    """
    if os.path.dirname(text) == STORE_DIR:
        return _check_top(text, text)
    try:
        top, rest = _follow(text)
    except OSError as exc:
        raise NotASystemPath(f"{text}: {exc.strerror}; {_HINT}") from None
    resolved = f"{top}/{rest}" if top and rest else top or rest
    shown = text if os.path.abspath(text) == resolved else f"{text} (-> {resolved})"
    if top and rest:
        raise NotASystemPath(
            f"{shown} is inside the store path {top}; pass that path itself"
            if not top.endswith(".drv")
            else f"{shown} is inside a derivation; build it first and push the result"
        )
    if top:
        return _check_top(top, shown)
    if not os.path.lexists(text):
        raise NotASystemPath(f"{text}: not a store path, and no such file; {_HINT}")
    raise NotASystemPath(f"{shown}: not a store path (not in {STORE_DIR}); {_HINT}")
