"""The agent's durable local state: one small JSON file, replaced atomically and fsync'd.

Why a file and not SQLite: the state is one record with a single writer (the update
procedure), rewritten on every transition and never queried. write-temp + fsync + rename +
fsync(dir) gives the same guarantee SQLite would (after a crash the file is either the old or
the new record, never a mix), without a thread pool, a schema or migrations, and an operator
can read it with `cat`. A file that cannot be parsed stops the agent with a clear message
rather than starting over: starting over would forget the applied sequence and re-open the
door to replayed announcements. The record (AgentRecord) belongs to the update procedure
(fleet.agent.procedure), which alone changes it; this module only saves and loads it.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from fleet.agent.procedure import AgentRecord, Status
from fleet.agent.switch_run import Purpose, SwitchRun
from fleet.durable import replace_durably
from fleet.protocol.messages import AgentState, Progress
from fleet.wire import SignedEnvelope, WireError, decode, encode

STATE_FILE = "agent-state.json"
FORMAT_VERSION = 1


class StateError(Exception):
    """The state file exists but cannot be used; the message says what to do."""


def _progress_json(progress: Progress | None) -> dict[str, int] | None:
    if progress is None:
        return None
    return {
        "paths_done": progress.paths_done,
        "paths_total": progress.paths_total,
        "bytes_done": progress.bytes_done,
        "bytes_total": progress.bytes_total,
    }


def _switch_json(run: SwitchRun | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {
        "sequence": run.sequence,
        "system": run.system,
        "action": run.action,
        "purpose": run.purpose.value,
        "attempt": run.attempt,
        "started_at": run.started_at,
        "boot_id": run.boot_id,
        "reason": run.reason,
        "pid": run.pid,
        "pid_start": run.pid_start,
        "finished_at": run.finished_at,
        "exit_code": run.exit_code,
    }


def _switch_from_json(data: Any) -> SwitchRun | None:
    if data is None:
        return None
    return SwitchRun(
        sequence=int(data["sequence"]),
        system=str(data["system"]),
        action=str(data["action"]),
        purpose=Purpose(data["purpose"]),
        attempt=int(data["attempt"]),
        started_at=float(data["started_at"]),
        boot_id=str(data["boot_id"]),
        reason=data.get("reason"),
        pid=data.get("pid"),
        pid_start=data.get("pid_start"),
        finished_at=data.get("finished_at"),
        exit_code=data.get("exit_code"),
    )


def _to_json(record: AgentRecord) -> dict[str, Any]:
    s = record.status
    return {
        "version": FORMAT_VERSION,
        "applied_sequence": record.applied_sequence,
        "status": {
            "state": s.state.value,
            "since": s.since,
            "sequence": s.sequence,
            "desired": s.desired,
            "progress": _progress_json(s.progress),
            "error": s.error,
            "exit_code": s.exit_code,
            "log_tail": s.log_tail,
        },
        "announcement": (
            base64.b64encode(encode(record.announcement)).decode()
            if record.announcement is not None
            else None
        ),
        "previous": record.previous,
        "retrying": record.retrying,
        "switch": _switch_json(record.switch),
    }


def _from_json(data: Any) -> AgentRecord:
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise ValueError("unknown format version")
    s = data["status"]
    progress = Progress(**s["progress"]) if s.get("progress") is not None else None
    status = Status(
        state=AgentState(s["state"]),
        since=float(s["since"]),
        sequence=s.get("sequence"),
        desired=s.get("desired"),
        progress=progress,
        error=s.get("error"),
        exit_code=s.get("exit_code"),
        log_tail=s.get("log_tail"),
    )
    envelope = None
    if data.get("announcement") is not None:
        envelope = decode(base64.b64decode(data["announcement"]), SignedEnvelope)
    return AgentRecord(
        applied_sequence=int(data["applied_sequence"]),
        status=status,
        announcement=envelope,
        previous=data.get("previous"),
        retrying=bool(data.get("retrying", False)),
        switch=_switch_from_json(data.get("switch")),  # absent in files of older agents
    )


class StateFile:
    """Load and durably save the AgentRecord under the agent's state directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STATE_FILE

    def load(self) -> AgentRecord:
        """The saved record, or a fresh one if the agent never saved anything."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return AgentRecord()
        except OSError as exc:
            raise StateError(f"cannot read {self.path}: {exc.strerror}") from exc
        try:
            return _from_json(json.loads(text))
        except (ValueError, KeyError, TypeError, WireError) as exc:
            raise StateError(
                f"{self.path} is unreadable ({exc}); the agent will not guess what it "
                "applied. Move the file away to start from scratch."
            ) from exc

    def save(self, record: AgentRecord) -> None:
        """Replace the file atomically; when this returns the record survives a crash."""
        data = json.dumps(_to_json(record), indent=1, sort_keys=True).encode()
        replace_durably(self.path, data)
