"""The one-line summary `fleetctl audit` shows for a push says whom it reached."""

from __future__ import annotations

from typing import Any

from fleet.admin.auditing import summary
from fleet.audit.record import GENESIS, make_entry


def _push(detail: dict[str, Any]) -> str:
    entry = make_entry(
        id=1, time=1.0, actor="a", action="push", outcome="accepted",
        detail={"sequence": 3, "store_path": "/nix/store/x", **detail}, request=b"",
        prev_hash=GENESIS,
    )  # fmt: skip
    return summary(entry)


def test_a_selector_push_counts_the_devices_it_reached_and_names_its_tags() -> None:
    line = _push({"devices": [], "selector": ["kiosk"], "resolved": 40})
    assert line == "sequence 3 /nix/store/x to 40 device(s) by tag:kiosk"


def test_an_explicit_push_and_an_entry_from_before_v3() -> None:
    assert _push({"devices": ["a", "b"], "selector": [], "resolved": 2}).endswith("to 2 device(s)")
    assert _push({"devices": ["a", "b", "c"]}).endswith("to 3 device(s)")
