"""Live views on a terminal: `push --wait` and `status --watch` redrawn in place.

The views are pure functions from state to lines (tested without a terminal); `InPlace` is
the thin writer that puts a block of lines on a terminal and, on the next draw, moves the
cursor back up over it and rewrites it (plain ANSI sequences, no curses), so the scrollback
keeps one copy of the view instead of one per update. A block never gets taller than the
terminal (the cursor cannot move above the top of the screen) nor wider (a wrapped line
would take two rows): longer views are cut with a line saying how much is hidden.

When stdout is not a terminal nothing here is used: fleetctl prints a line per event.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from typing import TextIO

from fleet.admin.tracking import Outcome, PushTracker
from fleet.admin.views import iso_utc, status_table
from fleet.protocol.messages import DeviceStatus

CLEAR_LINE = "\x1b[2K"  # erase the whole line the cursor is on
CLEAR_BELOW = "\x1b[J"  # erase from the cursor to the end of the screen


def cursor_up(rows: int) -> str:
    """To the first column, `rows` lines up."""
    return f"\r\x1b[{rows}A"


def summary_line(tracker: PushTracker) -> str:
    """`2 applied, 0 failed, 1 rejected, 3 pending` (and `n timed out` once there are any)."""
    counts = tracker.counts()
    failed = counts[Outcome.FAILED] + counts[Outcome.ROLLED_BACK]
    parts = [
        f"{counts[Outcome.APPLIED]} applied",
        f"{failed} failed",
        f"{counts[Outcome.REJECTED]} rejected",
        f"{counts[Outcome.PENDING]} pending",
    ]
    if counts[Outcome.TIMED_OUT]:
        parts.append(f"{counts[Outcome.TIMED_OUT]} timed out")
    return ", ".join(parts)


def push_lines(tracker: PushTracker) -> list[str]:
    """One line per device (label, then what it is doing about this push), then the summary."""
    tracks = list(tracker.tracks.values())
    width = max((len(t.label) for t in tracks), default=0)
    lines = [f"{t.label.ljust(width)}  {tracker.state_text(t)}" for t in tracks]
    lines.append(summary_line(tracker))
    return lines


def status_lines(statuses: Sequence[DeviceStatus], now: float) -> list[str]:
    """The status table and when it was last updated."""
    return [
        *status_table(statuses, now).splitlines(),
        "",
        f"updated {iso_utc(now)}; Ctrl-C to stop",
    ]


def fit(lines: Sequence[str], columns: int, rows: int) -> list[str]:
    """`lines` cut to the terminal: each to `columns`, and at most `rows` lines in all.

    When lines must go, the last one (a summary or a timestamp) stays and a marker says how
    many are hidden above it.
    """
    columns, rows = max(columns, 10), max(rows, 2)

    def cut(line: str) -> str:
        return line if len(line) <= columns else line[: columns - 1] + "…"

    if len(lines) > rows:
        keep = rows - 2
        hidden = len(lines) - 1 - keep
        lines = [*lines[:keep], f"… {hidden} more lines (a taller terminal shows them)", lines[-1]]
    return [cut(line) for line in lines]


def terminal_size() -> tuple[int, int]:
    size = shutil.get_terminal_size()
    return size.columns, size.lines


class InPlace:
    """Draws a block of lines at the cursor, redrawing the previous block in place.

    Leave the cursor below the block between draws (nothing else may be written to the
    terminal in between); `done()` just keeps the last block on the screen.
    """

    def __init__(self, out: TextIO, size: Callable[[], tuple[int, int]] = terminal_size) -> None:
        self._out = out
        self._size = size
        self._drawn = 0  # rows of the block on screen, the cursor just below it
        self._last: list[str] | None = None

    def draw(self, lines: Sequence[str]) -> None:
        columns, rows = self._size()
        # One row is kept free: the cursor waits below the block.
        shown = fit(lines, columns, rows - 1)
        if shown == self._last:
            return  # nothing changed on screen
        self._last = shown
        parts = [cursor_up(self._drawn)] if self._drawn else []
        parts.extend(f"{CLEAR_LINE}{line}\n" for line in shown)
        parts.append(CLEAR_BELOW)  # the rest of a previous, taller block
        self._drawn = len(shown)
        self._out.write("".join(parts))
        self._out.flush()
