"""Typed Nix failures, each carrying Nix's own words.

The agent reports the reason upstream verbatim ("lacks a valid signature", "hash mismatch
importing path ..."), so every error keeps the tail of Nix's stderr and the one line that
decided the classification.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


class NixError(Exception):
    """A Nix command failed. `reason` is Nix's deciding line, `stderr_tail` its last lines."""

    def __init__(
        self,
        reason: str,
        *,
        command: Sequence[str] = (),
        returncode: int | None = None,
        stderr_tail: Sequence[str] = (),
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.command = tuple(command)
        self.returncode = returncode
        self.stderr_tail = tuple(stderr_tail)

    def __str__(self) -> str:
        return self.reason


class NixNotInstalled(NixError):
    """The Nix binaries are not on PATH (on Debian: apt-get install nix-bin)."""


class NixTimeout(NixError):
    """A Nix command (or an activation script) ran past its timeout and was killed."""


class SignatureError(NixError):
    """A path in the closure is not signed by any of the caller's trusted keys."""


class HashMismatch(NixError):
    """A downloaded NAR does not match the hash in its (signed) narinfo."""


class PathNotFound(NixError):
    """No substituter has the path, or the path is not valid in the store asked."""


class CacheUnreachable(NixError):
    """A binary cache could not be reached, and the path could not be fetched elsewhere."""


class ProfileError(NixError):
    """A profile operation was refused (no older generation, unknown generation)."""


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# Ordered: the first class whose pattern matches any stderr line wins. A signature failure
# makes Nix also say "build ... failed", so the specific causes come before the generic ones;
# "profile version N does not exist" must not read as a missing store path.
_RULES: tuple[tuple[type[NixError], re.Pattern[str]], ...] = (
    (
        SignatureError,
        re.compile(r"lacks a valid signature|is not signed by any of the keys|no valid signature"),
    ),
    (HashMismatch, re.compile(r"hash mismatch|NAR hash .* does not match|size mismatch")),
    (
        CacheUnreachable,
        re.compile(
            r"unable to download .*(Couldn't connect|Couldn't resolve|Timeout|timed out|"
            r"Connection refused|SSL|HTTP error 5\d\d)"
        ),
    ),
    (
        ProfileError,
        re.compile(r"no profile version|profile version \d+ does not exist"),
    ),
    (
        PathNotFound,
        re.compile(
            r"don't know how to build|no substituter|does not exist|is not valid|"
            r"is required, but there is no"
        ),
    ),
)


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def error_line(lines: Sequence[str]) -> str:
    """The last line that Nix marked as an error, else the last non-empty line."""
    for line in reversed(lines):
        if line.startswith("error:"):
            return line
    for line in reversed(lines):
        if line.strip():
            return line
    return "nix failed without a message"


def classify(
    lines: Sequence[str], *, command: Sequence[str] = (), returncode: int | None = None
) -> NixError:
    """Turn a failed command's stderr lines into the most specific NixError."""
    lines = [strip_ansi(line) for line in lines]
    for cls, pattern in _RULES:
        for line in lines:
            if pattern.search(line):
                return cls(line.strip(), command=command, returncode=returncode, stderr_tail=lines)
    return NixError(error_line(lines), command=command, returncode=returncode, stderr_tail=lines)
