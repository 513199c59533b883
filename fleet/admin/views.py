"""What `fleetctl status` and `devices list` show: JSON objects for scripts, tables for people.

JSON shape (the interface contract): timestamps are ISO 8601 strings in UTC with a `Z`
suffix and millisecond precision (`2024-05-01T12:00:00.000Z`), or null when unknown.
`current`, `desired` and `progress` are always objects (their fields null when unknown), so a
script can read `.current.store_path` without first checking `.current`. `rejection` is null or
an object (`sequence`, `code`, `reason`, `time`): the push the device refused, and why.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

from fleet.protocol.messages import (
    AgentState,
    DeviceInfo,
    DeviceStatus,
    Progress,
    PushLookupReply,
    Rejection,
    StatusSummary,
)

JsonObject = dict[str, Any]

_STORE_PATH = re.compile(r"/nix/store/([0-9a-z]{32})-(.+)")


def iso_utc(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def progress_json(progress: Progress | None) -> JsonObject:
    if progress is None:
        return {"paths_done": None, "paths_total": None, "bytes_done": None, "bytes_total": None}
    return {
        "paths_done": progress.paths_done,
        "paths_total": progress.paths_total,
        "bytes_done": progress.bytes_done,
        "bytes_total": progress.bytes_total,
    }


def tags_mismatch(status: DeviceStatus) -> bool:
    """The agent reported tags other than the registry's (its scope checks use its own)."""
    return status.agent_tags is not None and set(status.agent_tags) != set(status.tags)


def rejection_json(rejection: Rejection | None) -> JsonObject | None:
    if rejection is None:
        return None
    return {
        "sequence": rejection.sequence,
        "code": rejection.code,
        "reason": rejection.reason,
        "time": iso_utc(rejection.time),
    }


def status_json(status: DeviceStatus) -> JsonObject:
    """One device of `fleetctl status --json`."""
    current, desired = status.current, status.desired
    return {
        "name": status.name,
        "id": str(status.node_id),
        "tags": list(status.tags),
        "agent_tags": None if status.agent_tags is None else list(status.agent_tags),
        "tags_mismatch": tags_mismatch(status),
        "approved": status.approved,
        "online": status.online,
        "path": status.path if status.online else None,
        "last_seen": iso_utc(status.last_seen),
        "state": None if status.state is None else str(status.state),
        "state_since": iso_utc(status.state_since),
        "sequence": status.sequence,
        "current": {
            "store_path": current.store_path if current else None,
            "generation": current.generation if current else None,
        },
        "desired": {
            "store_path": desired.store_path if desired else None,
            "sequence": desired.sequence if desired else None,
            "action": str(desired.action) if desired else None,
        },
        "progress": progress_json(status.progress),
        "error": status.error,
        "rejection": rejection_json(status.rejection),
    }


def summary_json(summary: StatusSummary) -> JsonObject:
    """`fleetctl status --summary --json`: the matching devices counted."""
    return {
        "devices": summary.devices,
        "online": summary.online,
        "offline": summary.devices - summary.online,
        "pending": summary.pending,
        "states": dict(summary.states),
    }


def push_record_json(reply: PushLookupReply) -> JsonObject:
    """`fleetctl push --status SEQ --json`: `accepted` false, or the push as accepted."""
    record = reply.accepted
    document: JsonObject = {
        "sequence": reply.sequence,
        "accepted": record is not None,
        "highest": reply.highest,
    }
    if record is not None:
        document.update(
            store_path=record.store_path,
            action=str(record.action),
            targets=list(record.targets),
            devices=record.devices,
            signer=str(record.signer),
            issued_at=iso_utc(record.issued_at),
            valid_until=iso_utc(record.valid_until),
            accepted_at=iso_utc(record.accepted_at),
        )
    return document


def device_json(device: DeviceInfo) -> JsonObject:
    """One device of `fleetctl devices list --json`."""
    return {
        "name": device.name,
        "id": str(device.node_id),
        "tags": list(device.tags),
        "approved": device.approved,
        "first_seen": iso_utc(device.first_seen),
        "last_seen": iso_utc(device.last_seen),
    }


def sort_key(name: str | None, node_id: object) -> tuple[int, str]:
    """Named devices first, by name; then pending ones by id."""
    return (0, name) if name is not None else (1, str(node_id))


# ---------------------------------------------------------------- text for people


def short_store_path(path: str | None) -> str:
    """`/nix/store/<hash>-nixos-system-x` -> `<hash[:8]>…-nixos-system-x`."""
    if path is None:
        return "-"
    match = _STORE_PATH.fullmatch(path)
    if match is None:
        return path
    return f"{match.group(1)[:8]}-{match.group(2)}"


def age(timestamp: float | None, now: float) -> str:
    """How long ago, in the largest sensible unit: `5s`, `3m`, `2h`, `4d`."""
    if timestamp is None:
        return "-"
    seconds = max(0, int(now - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f}"


def progress_text(progress: Progress | None) -> str:
    if progress is None:
        return ""
    parts = []
    if progress.paths_total:
        parts.append(f"{progress.paths_done}/{progress.paths_total} paths")
    if progress.bytes_total:
        parts.append(f"{_mib(progress.bytes_done)}/{_mib(progress.bytes_total)} MiB")
    return ", ".join(parts)


# The summary names states in the order of the update procedure.
_STATE_ORDER = [str(state) for state in AgentState] + ["unknown"]


def summary_text(summary: StatusSummary) -> str:
    """`12 devices: 10 online, 2 offline; 9 applied, 1 failed, 2 unknown` (states by count)."""
    noun = "device" if summary.devices == 1 else "devices"
    text = (
        f"{summary.devices} {noun}: {summary.online} online, "
        f"{summary.devices - summary.online} offline"
    )
    if summary.pending:
        text += f", {summary.pending} pending approval"
    order = {name: i for i, name in enumerate(_STATE_ORDER)}
    states = sorted(summary.states.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
    counted = [f"{count} {state}" for state, count in states if count]
    return text + ("; " + ", ".join(counted) if counted else "")


def _state_cell(status: DeviceStatus, now: float) -> str:
    if status.rejection is not None:
        return f"rejected #{status.rejection.sequence} ({age(status.rejection.time, now)})"
    if status.state is None:
        return "-"
    text = str(status.state)
    if status.state_since is not None:
        text += f" ({age(status.state_since, now)})"
    extra = progress_text(status.progress) if status.state == "downloading" else ""
    return f"{text} {extra}" if extra else text


def _link_cell(status: DeviceStatus, now: float) -> str:
    if status.online:
        return status.path or "online"
    return f"offline ({age(status.last_seen, now)})" if status.last_seen else "offline"


def tags_cell(status: DeviceStatus) -> str:
    """The registry's tags; with `(agent: ...!)` when the agent reported others."""
    text = ",".join(status.tags) or "-"
    if tags_mismatch(status):
        assert status.agent_tags is not None
        text += f" (agent: {','.join(status.agent_tags) or 'none'}!)"
    return text


def error_cell(status: DeviceStatus) -> str:
    if status.rejection is not None:
        return f"{status.rejection.code}: {status.rejection.reason}"
    return status.error or ""


def status_row(status: DeviceStatus, now: float) -> list[str]:
    """The cells of one row of the status table."""
    name = status.name or ("(pending)" if not status.approved else "-")
    current = status.current.store_path if status.current else None
    generation = status.current.generation if status.current else None
    current_cell = short_store_path(current)
    if generation is not None:
        current_cell += f" (gen {generation})"
    desired = status.desired
    desired_cell = (
        f"#{desired.sequence} {desired.action} {short_store_path(desired.store_path)}"
        if desired
        else "-"
    )
    return [
        name,
        status.node_id.short(),
        tags_cell(status),
        _link_cell(status, now),
        _state_cell(status, now),
        current_cell,
        desired_cell,
        error_cell(status),
    ]


STATUS_HEADER = ["NAME", "ID", "TAGS", "LINK", "STATE", "CURRENT", "DESIRED", "ERROR"]
DEVICE_HEADER = ["NAME", "ID", "TAGS", "APPROVED", "FIRST SEEN", "LAST SEEN"]


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart; trailing blanks trimmed. No rows: header only."""
    cells = [list(header), *(list(r) for r in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def status_table(statuses: Sequence[DeviceStatus], now: float) -> str:
    ordered = sorted(statuses, key=lambda s: sort_key(s.name, s.node_id))
    return table(STATUS_HEADER, [status_row(s, now) for s in ordered])


def device_table(devices: Sequence[DeviceInfo], now: float) -> str:
    ordered = sorted(devices, key=lambda d: sort_key(d.name, d.node_id))
    rows = [
        [
            d.name or "(pending)",
            str(d.node_id),
            ",".join(d.tags) or "-",
            "yes" if d.approved else "no",
            age(d.first_seen, now) + (" ago" if d.first_seen else ""),
            age(d.last_seen, now) + (" ago" if d.last_seen else ""),
        ]
        for d in ordered
    ]
    return table(DEVICE_HEADER, rows)


class StatusBoard:
    """The latest status of every device, kept current from a status watch."""

    def __init__(self) -> None:
        self.devices: dict[object, DeviceStatus] = {}

    def load(self, statuses: Sequence[DeviceStatus]) -> None:
        self.devices = {s.node_id: s for s in statuses}

    def update(self, status: DeviceStatus) -> None:
        self.devices[status.node_id] = status

    def rows(self) -> list[DeviceStatus]:
        return sorted(self.devices.values(), key=lambda s: sort_key(s.name, s.node_id))
