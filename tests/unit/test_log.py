"""Log rendering: journald priorities under systemd, JSON in a pipe, never a multi-line event."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from fleet.log import GrowthReport, JournalRenderer, get_logger, journal_stream_is, setup_logging


def render(level: str, event: str, **values: object) -> str:
    return JournalRenderer()(None, level, {"event": event, "level": level, **values})


@pytest.mark.parametrize(
    ("level", "priority"),
    [("debug", 7), ("info", 6), ("warning", 4), ("error", 3), ("critical", 2)],
)
def test_each_level_has_its_syslog_priority(level: str, priority: int) -> None:
    assert render(level, "relay_listening").startswith(f"<{priority}>event=relay_listening ")


def test_values_are_key_value_pairs_on_one_line() -> None:
    line = render(
        "error",
        "fetch_failed",
        path="/nix/store/x",
        reason='hash mismatch "x"\nsecond line',
        attempt=3,
        ok=False,
        when=None,
    )
    assert "\n" not in line
    assert line.startswith("<3>event=fetch_failed ")
    assert "path=/nix/store/x" in line
    assert 'reason="hash mismatch \\"x\\"\\nsecond line"' in line
    assert "attempt=3" in line
    assert "ok=false" in line
    assert "level=error" in line


def test_unknown_level_is_info() -> None:
    assert render("trace", "x").startswith("<6>")


@pytest.fixture
def stream_file(tmp_path: Path) -> Iterator[io.TextIOWrapper]:
    with (tmp_path / "stderr").open("w") as f:
        yield f


def dev_ino(fd: int) -> str:
    st = os.fstat(fd)
    return f"{st.st_dev}:{st.st_ino}"


def test_journal_stream_counts_only_when_it_names_the_stream(
    stream_file: io.TextIOWrapper, tmp_path: Path
) -> None:
    assert journal_stream_is(stream_file, {"JOURNAL_STREAM": dev_ino(stream_file.fileno())})
    with (tmp_path / "other").open("w") as other:  # inherited from a parent, stderr redirected
        assert not journal_stream_is(stream_file, {"JOURNAL_STREAM": dev_ino(other.fileno())})
    assert not journal_stream_is(stream_file, {})
    assert not journal_stream_is(stream_file, {"JOURNAL_STREAM": "garbage"})
    assert not journal_stream_is(io.StringIO(), {"JOURNAL_STREAM": "1:2"})  # no descriptor


def test_setup_logging_picks_the_journal_then_json(
    stream_file: io.TextIOWrapper, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "stderr", stream_file)
    try:
        setup_logging("debug", env={"JOURNAL_STREAM": dev_ino(stream_file.fileno())})
        get_logger("t").warning("disk_low", free=3)
        setup_logging("info", env={})  # a file is not a terminal: JSON
        get_logger("t").info("started", port=1)
        get_logger("t").debug("hidden")
    finally:
        structlog.reset_defaults()
    stream_file.flush()
    first, second = (tmp_path / "stderr").read_text().splitlines()
    assert first == "<4>event=disk_low free=3 level=warning"
    record = json.loads(second)
    assert record["event"] == "started"
    assert record["level"] == "info"
    assert "timestamp" in record


def test_growth_report_is_due_at_the_first_growth_then_at_most_once_per_interval() -> None:
    report = GrowthReport(interval=10.0)
    assert not report.due(0, 0.0)  # nothing counted yet
    assert report.due(1, 1.0)
    assert not report.due(5, 2.0)  # grew, but too soon
    assert report.due(5, 11.0)
    assert not report.due(5, 100.0)  # no growth, no line
    assert report.due(6, 100.0)
