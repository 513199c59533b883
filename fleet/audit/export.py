"""The audit log as JSON lines: what `fleetctl audit export` writes and offline verifiers read.

Line 1 is a header naming the format and the coordinator; then one line per entry (in id
order) and one per signed checkpoint. Binary fields are base64 (request, checkpoint) or hex
(hashes); `detail` is kept as the exact JSON text that was hashed. Floats round-trip exactly
through JSON (shortest repr), so the verifier recomputes the very same hashes.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from fleet.audit.record import AuditEntry
from fleet.identity import InvalidNodeId, NodeId
from fleet.wire import SignedEnvelope, WireError, decode, encode

FORMAT = "fleet-audit/1"


class ExportError(Exception):
    """An export that cannot be read at all (the message names the line)."""


@dataclass(frozen=True)
class AuditExport:
    """An audit log as fetched from a coordinator or read from an export file."""

    coordinator: NodeId
    entries: list[AuditEntry]
    checkpoints: list[SignedEnvelope]


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "type": "entry",
        "id": entry.id,
        "time": entry.time,
        "actor": entry.actor,
        "action": entry.action,
        "outcome": entry.outcome,
        "detail": entry.detail,
        "request": base64.b64encode(entry.request).decode("ascii"),
        "prev_hash": entry.prev_hash.hex(),
        "hash": entry.hash.hex(),
    }


def export_lines(
    coordinator: NodeId, entries: Iterable[AuditEntry], checkpoints: Iterable[SignedEnvelope]
) -> Iterator[str]:
    yield _line({"type": "header", "format": FORMAT, "coordinator": str(coordinator)})
    for entry in entries:
        yield _line(entry_json(entry))
    for checkpoint in checkpoints:
        yield _line(
            {"type": "checkpoint", "envelope": base64.b64encode(encode(checkpoint)).decode()}
        )


def _line(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":")) + "\n"


def read_export(lines: Iterable[str]) -> AuditExport:
    coordinator: NodeId | None = None
    entries: list[AuditEntry] = []
    checkpoints: list[SignedEnvelope] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            kind = obj.get("type")
            if coordinator is None:
                if kind != "header" or obj.get("format") != FORMAT:
                    raise ValueError(f"expected a {FORMAT} header first")
                coordinator = NodeId.parse(_str(obj, "coordinator"))
            elif kind == "entry":
                entries.append(_entry(obj))
            elif kind == "checkpoint":
                raw = base64.b64decode(_str(obj, "envelope"), validate=True)
                checkpoints.append(decode(raw, SignedEnvelope))
            else:
                raise ValueError(f"unknown line type {str(kind)[:40]!r}")
        except (ValueError, KeyError, TypeError, binascii.Error, InvalidNodeId, WireError) as exc:
            raise ExportError(f"line {number}: {exc}") from None
    if coordinator is None:
        raise ExportError("empty export (no header)")
    return AuditExport(coordinator, entries, checkpoints)


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a string")
    return value


def _entry(obj: dict[str, Any]) -> AuditEntry:
    ident, when = obj["id"], obj["time"]
    if type(ident) is not int or isinstance(when, bool) or not isinstance(when, int | float):
        raise TypeError("id must be an integer and time a number")
    return AuditEntry(
        id=ident,
        time=float(when),
        actor=_str(obj, "actor"),
        action=_str(obj, "action"),
        outcome=_str(obj, "outcome"),
        detail=_str(obj, "detail"),
        request=base64.b64decode(_str(obj, "request"), validate=True),
        prev_hash=bytes.fromhex(_str(obj, "prev_hash")),
        hash=bytes.fromhex(_str(obj, "hash")),
    )
