"""The TOML helpers every role's settings loader (fleet/<role>/settings.py) shares.

Each role has one loader of the same shape: `KNOWN` (the settings), `from_mapping(values)`
(check them) and `load(config_file, flags)` (merge TOML and flags, flags winning, then check),
all failing with the one `SettingsError` below.
"""

from __future__ import annotations

import tempfile
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

EXIT_CONFIG = 78  # EX_CONFIG (sysexits.h): a daemon setting is wrong; restarting cannot help


class SettingsError(ValueError):
    """A setting (flag, environment or configuration file) that cannot be used; the message
    names it. A daemon exits with `exit_code` (EX_CONFIG); fleetctl keeps its own codes."""

    exit_code = EXIT_CONFIG


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as exc:
        raise SettingsError(f"{p}: no such configuration file") from exc
    except OSError as exc:  # a directory, no permission
        raise SettingsError(f"{p}: cannot read the configuration file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise SettingsError(f"{p}: invalid TOML: not UTF-8 text ({exc.reason})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{p}: invalid TOML: {exc}") from exc


def merge_settings(
    config_file: str | Path | None,
    flags: Mapping[str, Any],
    known: Iterable[str],
) -> dict[str, Any]:
    """TOML values overlaid by every flag that was given (None or an empty tuple = not given).

    Keys in TOML use the flag's name with dashes or underscores (`state-dir` or `state_dir`).
    Unknown keys are an error rather than silently ignored: a typo must not disable a setting.
    """
    known_set = set(known)
    merged: dict[str, Any] = {}
    if config_file is not None:
        for key, value in load_toml(config_file).items():
            norm = key.replace("-", "_")
            if norm not in known_set:
                raise SettingsError(
                    f"{config_file}: unknown setting {key!r}; known: "
                    + ", ".join(sorted(k.replace("_", "-") for k in known_set))
                )
            merged[norm] = value
    for key, value in flags.items():
        if value is None or value == ():
            continue
        merged[key] = list(value) if isinstance(value, tuple) else value
    return merged


def prepare_state_dir(directory: Path, setting: str = "--state-dir") -> None:
    """Create a daemon's state directory (0700) and prove it writable at start-up.

    A directory that cannot be written would otherwise fail at the first write, which for
    the agent is the first push, possibly days later.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise SettingsError(f"{setting} {directory}: {exc.strerror or exc}") from exc
