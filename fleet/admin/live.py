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


LARGE_PUSH = 20  # more targets than this: counts and the failing devices, not every device


def push_lines(tracker: PushTracker) -> list[str]:
    """One line per device (label, then what it is doing about this push), then the summary;
    for a large push, what the pending devices are doing and only the devices that failed."""
    if len(tracker.tracks) > LARGE_PUSH:
        return push_overview(tracker)
    tracks = list(tracker.tracks.values())
    width = max((len(t.label) for t in tracks), default=0)
    lines = [f"{t.label.ljust(width)}  {tracker.state_text(t)}" for t in tracks]
    lines.append(summary_line(tracker))
    return lines


def pending_line(tracker: PushTracker) -> str:
    """`1000 devices; pending: 200 downloading, 10 offline` (or `none pending`)."""
    pending = tracker.pending_counts()
    doing = ", ".join(f"{n} {what}" for what, n in pending.items()) or "none"
    return f"{len(tracker.tracks)} devices; pending: {doing}"


def failure_lines(tracker: PushTracker) -> list[str]:
    """The devices that did not apply the push (or timed out), each with why."""
    failed = [t for t in tracker.failures() if t.outcome is not Outcome.PENDING]
    width = max((len(t.label) for t in failed), default=0)
    return [
        f"{t.label.ljust(width)}  {t.outcome}" + (f": {t.reason}" if t.reason else "")
        for t in failed
    ]


def push_overview(tracker: PushTracker) -> list[str]:
    """A large push: what the pending devices do, the failing devices, then the summary."""
    return [pending_line(tracker), *failure_lines(tracker), summary_line(tracker)]


class PushDigest:
    """A large push followed without a terminal: each device that fails, as it fails, and
    the counts when they changed, at most every `interval` seconds (time passed in)."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self._reported: set[object] = set()
        self._counts: str | None = None
        self._at: float | None = None

    def lines(self, tracker: PushTracker, now: float, *, final: bool = False) -> list[str]:
        out = []
        for track in tracker.failures():
            if track.outcome is Outcome.PENDING or track.node_id in self._reported:
                continue
            self._reported.add(track.node_id)
            out.append(
                f"{track.label}: {track.outcome}" + (f": {track.reason}" if track.reason else "")
            )
        counts = f"{summary_line(tracker)} ({pending_line(tracker)})"
        due = self._at is None or now - self._at >= self.interval
        if counts != self._counts and (due or final):
            self._counts, self._at = counts, now
            out.append(counts)
        return out


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
