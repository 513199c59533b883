"""Download progress from Nix's `--log-format internal-json`, as a machine without I/O.

Nix 2.8 (and later) writes one `@nix {json}` line per log event on stderr. The ones that
matter for a substitution (`nix-store --realise` from binary caches):
- activity type 103 (copy paths): results of type 105 (progress) `[done, expected, running,
  failed]`, counted in store paths;
- activity type 102 (realise): results of type 106 (set expected) `[101, bytes]`, the total
  download size, and `[100, bytes]`, the total unpacked NAR size;
- activity type 101 (file transfer): results of type 105 `[done, expected, ...]` in bytes;
  only NAR transfers count (narinfo lookups are transfers too);
- activity type 100 (copy path): `fields[0]` is the store path being copied;
- `msg` events: Nix's human messages, which we keep as the stderr tail for errors.
Feed lines in; get FetchProgress snapshots out when something changed.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import Any

from fleet.nix.errors import strip_ansi

ACT_COPY_PATH = 100
ACT_FILE_TRANSFER = 101
ACT_REALISE = 102
ACT_COPY_PATHS = 103
RES_PROGRESS = 105
RES_SET_EXPECTED = 106

_METADATA_SUFFIXES = (".narinfo", "/nix-cache-info", ".ls")


@dataclass(frozen=True)
class FetchProgress:
    """Where a closure download stands. bytes_* are download (compressed) bytes."""

    paths_done: int
    paths_total: int
    bytes_done: int
    bytes_total: int
    nar_bytes_total: int
    copying: tuple[str, ...] = ()


class ProgressParser:
    """Consumes internal-json stderr lines; keeps Nix's messages for error reports."""

    def __init__(self) -> None:
        self.messages: deque[str] = deque(maxlen=200)
        self._kinds: dict[int, int] = {}
        self._copying: dict[int, str] = {}
        self._transfers: dict[int, int] = {}  # in-flight NAR transfer id -> bytes done
        self._finished_bytes = 0
        self._paths_done = 0
        self._paths_total = 0
        self._bytes_total = 0
        self._nar_total = 0
        self._last: FetchProgress | None = None

    def snapshot(self) -> FetchProgress:
        return FetchProgress(
            paths_done=self._paths_done,
            paths_total=max(self._paths_total, self._paths_done),
            bytes_done=self._finished_bytes + sum(self._transfers.values()),
            bytes_total=self._bytes_total,
            nar_bytes_total=self._nar_total,
            copying=tuple(self._copying.values()),
        )

    def feed(self, line: str) -> FetchProgress | None:
        """Process one stderr line; return a new snapshot if the progress changed."""
        if not line.startswith("@nix "):
            if line.strip():
                self.messages.append(strip_ansi(line))
            return None
        try:
            event = json.loads(line[5:])
        except ValueError:
            return None
        if isinstance(event, dict):
            self._event(event)
        snap = self.snapshot()
        if snap == self._last:
            return None
        self._last = snap
        return snap

    def _event(self, event: dict[str, Any]) -> None:
        action = event.get("action")
        ident = event.get("id")
        if action == "msg":
            self.messages.extend(strip_ansi(str(event.get("msg", ""))).splitlines())
        elif action == "start" and isinstance(ident, int):
            kind = event.get("type")
            fields = event.get("fields") or []
            if not isinstance(kind, int) or not isinstance(fields, list):
                return
            if kind == ACT_FILE_TRANSFER:
                url = str(fields[0]) if fields else ""
                if url.endswith(_METADATA_SUFFIXES):
                    return
                self._transfers[ident] = 0
            elif kind == ACT_COPY_PATH and fields:
                self._copying[ident] = str(fields[0])
            self._kinds[ident] = kind
        elif action == "stop" and isinstance(ident, int):
            kind = self._kinds.pop(ident, None)
            if kind == ACT_FILE_TRANSFER:
                self._finished_bytes += self._transfers.pop(ident, 0)
            elif kind == ACT_COPY_PATH:
                self._copying.pop(ident, None)
        elif action == "result" and isinstance(ident, int):
            self._result(ident, event.get("type"), event.get("fields") or [])

    def _result(self, ident: int, kind: object, fields: list[Any]) -> None:
        if not all(isinstance(f, int) for f in fields):
            return
        activity = self._kinds.get(ident)
        if kind == RES_PROGRESS and len(fields) >= 2:
            if activity == ACT_COPY_PATHS:
                self._paths_done, self._paths_total = fields[0], fields[1]
            elif activity == ACT_FILE_TRANSFER and ident in self._transfers:
                self._transfers[ident] = fields[0]
        elif kind == RES_SET_EXPECTED and len(fields) >= 2 and activity == ACT_REALISE:
            if fields[0] == ACT_FILE_TRANSFER:
                self._bytes_total = fields[1]
            elif fields[0] == ACT_COPY_PATH:
                self._nar_total = fields[1]
