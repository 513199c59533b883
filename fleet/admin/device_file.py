"""Device lists for `fleetctl devices add --from FILE`: CSV or JSON lines, checked as a whole.

CSV has a header naming its columns (`id,name,tags`; tags space-separated, may be left out);
JSON lines hold one object per line with the keys id, name and tags (a list, or a string of
space-separated tags). The format is told by the first non-blank line: `{` starts JSON lines.
Every entry is checked before anything is sent (a node id, a device name and tags as the
coordinator takes them, no id or name twice in the file), and the first bad line refuses the
whole file, naming its line number. Each entry keeps its line, so a refusal the coordinator
gives for its N-th entry can be told as that line.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fleet.identity import InvalidLabel, InvalidNodeId, NodeId, check_label, normalize_tags
from fleet.protocol.messages import DeviceAddBatch, DeviceEntry
from fleet.wire import MAX_FRAME, encode

# One batch is one signed admin request, whose body is one wire field of at most MAX_FRAME
# bytes; the rest of the request (the admin's chain, the envelope) gets this much room.
MAX_BATCH_BYTES = MAX_FRAME - (64 << 10)
COLUMNS = ("id", "name", "tags")
REQUIRED = ("id", "name")
_ENTRY_REFUSAL = re.compile(r"entry (\d+): ")


class DeviceFileError(ValueError):
    """A device file that is refused as a whole; the message names the line and the reason."""


@dataclass(frozen=True)
class DeviceFile:
    entries: tuple[DeviceEntry, ...]
    lines: tuple[int, ...]  # the line number of each entry, in the same order

    def explain(self, message: str, source: str) -> str:
        """A coordinator refusal that names `entry N` (1-based), told as the file's line."""

        def line_of(match: re.Match[str]) -> str:
            index = int(match.group(1)) - 1
            if 0 <= index < len(self.lines):
                return f"{source} line {self.lines[index]}: "
            return match.group(0)

        return _ENTRY_REFUSAL.sub(line_of, message, count=1)


def parse_device_file(text: str, source: str = "device file") -> DeviceFile:
    """The file's entries; DeviceFileError names the first bad line (nothing is half-read)."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    rows = _json_rows(text, source) if first.startswith("{") else _csv_rows(text, source)
    entries: list[DeviceEntry] = []
    lines: list[int] = []
    ids: dict[NodeId, int] = {}
    names: dict[str, int] = {}
    for line, row in rows:
        entry = _entry(row, f"{source} line {line}")
        if entry.node_id in ids:
            raise DeviceFileError(
                f"{source} line {line}: id {entry.node_id} is already on line {ids[entry.node_id]}"
            )
        if entry.name in names:
            raise DeviceFileError(
                f"{source} line {line}: name {entry.name!r} is already on line {names[entry.name]}"
            )
        ids[entry.node_id] = names[entry.name] = line
        entries.append(entry)
        lines.append(line)
    if not entries:
        raise DeviceFileError(f"{source}: no devices in it")
    return DeviceFile(tuple(entries), tuple(lines))


def check_batch_size(listed: DeviceFile) -> None:
    """Refuse, before anything is sent, a file too large for one request (all or none)."""
    size = len(encode(DeviceAddBatch(devices=listed.entries, skip_existing=False)))
    if size > MAX_BATCH_BYTES:
        fits = len(listed.entries) * MAX_BATCH_BYTES // size
        raise DeviceFileError(
            f"its {len(listed.entries)} devices take {size} bytes, more than one request "
            f"carries ({MAX_BATCH_BYTES}); split it into files of about {fits} lines"
        )


def _csv_rows(text: str, source: str) -> Iterator[tuple[int, dict[str, str]]]:
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            cells = [cell.strip() for cell in row]
            if header is None:
                header = _header(cells, f"{source} line {line}")
                continue
            if len(cells) != len(header):
                raise DeviceFileError(
                    f"{source} line {line}: {len(cells)} columns, the header has {len(header)}"
                )
            yield line, dict(zip(header, cells, strict=True))
    except csv.Error as exc:
        raise DeviceFileError(f"{source} line {reader.line_num}: not CSV ({exc})") from None
    if header is None:
        raise DeviceFileError(f"{source}: empty (a CSV file starts with the header id,name,tags)")


def _header(cells: list[str], where: str) -> list[str]:
    names = [cell.lower() for cell in cells]
    for name in names:
        if name not in COLUMNS:
            raise DeviceFileError(
                f"{where}: unknown column {name[:40]!r} (the header is id,name,tags)"
            )
    if len(set(names)) != len(names):
        raise DeviceFileError(f"{where}: a column is named twice in the header")
    missing = [name for name in REQUIRED if name not in names]
    if missing:
        raise DeviceFileError(f"{where}: no {' or '.join(missing)} column (header id,name,tags)")
    return names


def _json_rows(text: str, source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DeviceFileError(f"{source} line {line}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DeviceFileError(f"{source} line {line}: not a JSON object")
        for key in row:
            if key not in COLUMNS:
                raise DeviceFileError(
                    f"{source} line {line}: unknown key {str(key)[:40]!r} (keys: id, name, tags)"
                )
        yield line, row


def _entry(row: dict[str, Any], where: str) -> DeviceEntry:
    for key in REQUIRED:
        if not isinstance(row.get(key), str):
            raise DeviceFileError(f"{where}: {key} must be given as text")
    tags = row.get("tags", "")
    if isinstance(tags, str):
        tags = tags.split()
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise DeviceFileError(f"{where}: tags must be a list of text or space-separated text")
    try:
        node = NodeId.parse(row["id"])
    except InvalidNodeId as exc:
        raise DeviceFileError(f"{where}: bad id: {exc}") from None
    try:
        name = check_label(row["name"], "device name")
        clean = normalize_tags(tags)
    except InvalidLabel as exc:
        raise DeviceFileError(f"{where}: {exc}") from None
    return DeviceEntry(node_id=node, name=name, tags=clean)
