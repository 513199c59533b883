"""Structured logging: key-value events via structlog, for a terminal, a pipe or the journal.

Three renderings of the same events on stderr (stdout stays for a command's output):
- under systemd (JOURNAL_STREAM names stderr): `<N>event=... key=value`, one line per event,
  N the sd-daemon priority, so `journalctl -p err -u fleet-agent` selects by level; no
  timestamp (the journal records one);
- not a terminal otherwise: one JSON object per line;
- a terminal: structlog's console rendering.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

# syslog(3) priorities, as sd-daemon(3) reads them from a `<N>` line prefix.
JOURNAL_PRIORITIES = {
    "debug": 7,
    "info": 6,
    "warning": 4,
    "error": 3,
    "critical": 2,
}


def journal_stream_is(stream: TextIO, env: Mapping[str, str]) -> bool:
    """Whether `stream` is the journal connection systemd gave us (systemd.exec(5)).

    JOURNAL_STREAM is `DEVICE:INODE` of that connection; it is inherited by children whose
    stderr may be redirected elsewhere, so it counts only when it matches the stream itself.
    """
    value = env.get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # closed, or a stream without a descriptor
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


class JournalRenderer:
    """`<N>event=NAME key=value ...`: logfmt with the journal priority of the event's level."""

    def __init__(self) -> None:
        self._logfmt = structlog.processors.LogfmtRenderer(key_order=["event"], bool_as_flag=False)

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
        level = str(event_dict.get("level", method)).lower()
        priority = JOURNAL_PRIORITIES.get(level, JOURNAL_PRIORITIES["info"])
        line = self._logfmt(logger, method, dict(event_dict)).replace("\r", "\\r")
        return f"<{priority}>{line}"


def setup_logging(
    level: str = "info", *, json: bool | None = None, env: Mapping[str, str] | None = None
) -> None:
    """Configure structlog for a daemon or CLI. Logs go to stderr; stdout stays for output.

    `json` forces JSON (True) or console (False) rendering; by default the journal wins when
    stderr is systemd's journal stream, then JSON unless stderr is a terminal.
    """
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    renderer: Any
    if json is None and journal_stream_is(sys.stderr, os.environ if env is None else env):
        renderer = JournalRenderer()  # the journal stamps each line itself
    else:
        if json is None:
            json = not sys.stderr.isatty()
        processors.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
        renderer = (
            structlog.processors.JSONRenderer()
            if json
            else structlog.dev.ConsoleRenderer(colors=False)
        )
    processors.append(structlog.processors.format_exc_info)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


class GrowthReport:
    """When a log line of running totals is due: the count grew since the last line and
    `interval` seconds have passed (the first growth is reported at once). For counters a
    stranger can drive (refusals, turned-away connections): never one line per event, never
    silence. Time is passed in."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._count = 0
        self._at: float | None = None

    def due(self, count: int, now: float) -> bool:
        """Whether to log now; True marks the line as written."""
        if count == self._count or (self._at is not None and now - self._at < self.interval):
            return False
        self._count, self._at = count, now
        return True
