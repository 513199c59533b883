"""The live views of `push --wait` and `status --watch`: the lines they show, and the writer
that redraws them in place (its output replayed on a terminal emulator, pyte)."""

from __future__ import annotations

import io

import pyte

from fleet.admin.live import (
    LARGE_PUSH,
    InPlace,
    PushDigest,
    fit,
    push_lines,
    status_lines,
    summary_line,
)
from fleet.admin.tracking import PushTracker
from fleet.identity import Identity
from fleet.protocol.messages import AgentState, Progress, Rejection
from tests.admin_standin import device_status

NOW = 1_700_000_000.0
A, B, C = (Identity.generate().node_id for _ in range(3))


def _tracker() -> PushTracker:
    return PushTracker(7, [A, B, C], {A: "kiosk-1", B: "kiosk-22", C: "router"})


def test_push_lines_show_each_device_with_bytes_and_a_current_summary() -> None:
    t = _tracker()
    assert push_lines(t) == [
        "kiosk-1   no status yet",
        "kiosk-22  no status yet",
        "router    no status yet",
        "0 applied, 0 failed, 0 rejected, 3 pending",
    ]
    progress = Progress(paths_done=3, paths_total=12, bytes_done=42 << 20, bytes_total=180 << 20)
    t.observe(device_status(A, "kiosk-1", state=AgentState.DOWNLOADING, sequence=7,
                            progress=progress))  # fmt: skip
    t.observe(device_status(B, "kiosk-22", state=AgentState.APPLIED, sequence=7))
    refused = Rejection(sequence=7, code="expired", reason="expired 5 s ago", time=NOW)
    t.observe(device_status(C, "router", sequence=6, rejection=refused))
    assert push_lines(t) == [
        "kiosk-1   downloading 3/12 paths, 42.0/180.0 MiB",
        "kiosk-22  applied",
        "router    rejected: expired 5 s ago",
        "1 applied, 0 failed, 1 rejected, 1 pending",
    ]
    t.expire()
    assert summary_line(t) == "1 applied, 0 failed, 1 rejected, 0 pending, 1 timed out"


def test_fit_cuts_wide_lines_and_keeps_the_last_line_of_a_tall_view() -> None:
    lines = [f"row {i}" for i in range(10)] + ["summary"]
    hidden = "… 7 more lines (a taller terminal shows them)"  # row 3 to row 9
    assert fit(lines, 80, 5) == ["row 0", "row 1", "row 2", hidden, "summary"]
    assert fit(["x" * 30], 20, 5) == ["x" * 19 + "…"]


def _screen(columns: int = 80, rows: int = 24) -> tuple[pyte.Screen, pyte.Stream]:
    screen = pyte.Screen(columns, rows)
    return screen, pyte.Stream(screen)


def test_in_place_redraws_over_the_previous_block_without_repeating_it() -> None:
    out = io.StringIO()
    view = InPlace(out, size=lambda: (80, 24))
    screen, stream = _screen()
    stream.feed("$ fleetctl push ...\r\n")
    view.draw(["a  downloading", "b  waiting", "0 applied"])
    view.draw(["a  applied", "b  applied", "2 applied"])
    stream.feed(out.getvalue().replace("\n", "\r\n"))
    shown = [line.rstrip() for line in screen.display]
    assert shown[:5] == ["$ fleetctl push ...", "a  applied", "b  applied", "2 applied", ""]
    assert "\x1b[3A" in out.getvalue()  # moved up over the three lines it drew


def test_a_shorter_block_leaves_nothing_of_the_taller_one() -> None:
    out = io.StringIO()
    view = InPlace(out, size=lambda: (80, 24))
    view.draw(["one", "two", "three", "four"])
    view.draw(["only"])
    screen, stream = _screen()
    stream.feed(out.getvalue().replace("\n", "\r\n"))
    assert [line.rstrip() for line in screen.display[:4]] == ["only", "", "", ""]


def test_status_lines_end_with_the_update_time() -> None:
    rows = [device_status(A, "kiosk-1", now=NOW)]
    lines = status_lines(rows, NOW)
    assert lines[0].startswith("NAME")
    assert lines[-1] == "updated 2023-11-14T22:13:20.000Z; Ctrl-C to stop"


def _large_push(n: int = 200) -> PushTracker:
    """`n` devices: most applied, some downloading, some offline, three failed."""
    nodes = [Identity.generate().node_id for _ in range(n)]
    t = PushTracker(7, nodes, {node: f"d{i:03}" for i, node in enumerate(nodes)})
    for i, node in enumerate(nodes):
        if i < 3:
            t.observe(device_status(node, f"d{i:03}", state=AgentState.FAILED, sequence=7,
                                    error=f"switch-to-configuration exited {i + 1}"))  # fmt: skip
        elif i < 13:
            t.observe(device_status(node, f"d{i:03}", state=AgentState.DOWNLOADING, sequence=7))
        elif i < 18:
            t.observe(device_status(node, f"d{i:03}", online=False, sequence=6))
        else:
            t.observe(device_status(node, f"d{i:03}", state=AgentState.APPLIED, sequence=7))
    return t


def test_a_large_push_shows_counts_and_the_failing_devices_on_a_terminal() -> None:
    assert len(_large_push().tracks) > LARGE_PUSH
    screen, stream = _screen(columns=100, rows=12)
    out = io.StringIO()
    InPlace(out, size=lambda: (100, 12)).draw(push_lines(_large_push()))
    stream.feed(out.getvalue().replace("\n", "\r\n"))
    shown = [line.rstrip() for line in screen.display if line.strip()]
    assert shown == [
        "200 devices; pending: 10 downloading, 5 offline",
        "d000  failed: switch-to-configuration exited 1",
        "d001  failed: switch-to-configuration exited 2",
        "d002  failed: switch-to-configuration exited 3",
        "182 applied, 3 failed, 0 rejected, 15 pending",
    ]


def test_a_small_push_still_shows_every_device() -> None:
    assert len(push_lines(_tracker())) == 4  # three devices and the summary


def test_the_digest_names_each_failure_once_and_counts_at_most_every_interval() -> None:
    t = _large_push()
    digest = PushDigest(interval=5.0)
    first = digest.lines(t, now=100.0)
    assert first == [
        "d000: failed: switch-to-configuration exited 1",
        "d001: failed: switch-to-configuration exited 2",
        "d002: failed: switch-to-configuration exited 3",
        "182 applied, 3 failed, 0 rejected, 15 pending "
        "(200 devices; pending: 10 downloading, 5 offline)",
    ]
    node = next(iter(t.tracks))  # already failed: nothing new
    t.observe(device_status(node, "d000", state=AgentState.APPLIED, sequence=8))
    later = list(t.tracks)[3]
    t.observe(device_status(later, "d003", state=AgentState.APPLIED, sequence=7))
    assert digest.lines(t, now=101.0) == []  # counts changed, but within the interval
    assert digest.lines(t, now=106.0) == [
        "183 applied, 3 failed, 0 rejected, 14 pending "
        "(200 devices; pending: 9 downloading, 5 offline)"
    ]
    assert digest.lines(t, now=107.0, final=True) == []  # nothing changed since
