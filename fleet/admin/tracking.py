"""Following one push through the devices' status until each one is done (`push --wait`).

A sans-IO machine: feed it every DeviceStatus from the status stream; it says what changed
(lines for people) and, per device, whether the push is applied, failed, rejected or still
under way. A device's state counts for this push only when its `sequence` is this push's or
newer: the "applied" a device still shows from the previous push must not end the wait. A
rejection of this very push (the agent refused the announcement: scope, expiry, replay...) is
final at once: the device will never apply it, so there is nothing to wait for.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fleet.admin.views import progress_text, tags_mismatch
from fleet.identity import NodeId
from fleet.protocol.messages import AgentState, DeviceStatus


class Outcome(enum.StrEnum):
    PENDING = "pending"
    APPLIED = "applied"
    FAILED = "failed"
    ROLLED_BACK = "rolled-back"
    REJECTED = "rejected"
    TIMED_OUT = "timed-out"


_FINAL = {
    AgentState.APPLIED: Outcome.APPLIED,
    AgentState.FAILED: Outcome.FAILED,
    AgentState.ROLLED_BACK: Outcome.ROLLED_BACK,
}


@dataclass(slots=True)
class DeviceTrack:
    node_id: NodeId
    label: str
    outcome: Outcome = Outcome.PENDING
    status: DeviceStatus | None = None
    reason: str | None = None  # why it failed, rolled back or timed out
    shown: tuple[object, ...] | None = None  # what the last printed line said


class PushTracker:
    def __init__(self, sequence: int, devices: Iterable[NodeId], names: Mapping[NodeId, str]):
        self.sequence = sequence
        self.tracks: dict[NodeId, DeviceTrack] = {}
        for node_id in devices:
            self.tracks[node_id] = DeviceTrack(node_id, names.get(node_id) or node_id.short())

    @property
    def finished(self) -> bool:
        return all(t.outcome is not Outcome.PENDING for t in self.tracks.values())

    @property
    def succeeded(self) -> bool:
        return all(t.outcome is Outcome.APPLIED for t in self.tracks.values())

    def observe(self, status: DeviceStatus) -> list[str]:
        """Take one device's status; returns the lines worth showing (maybe none)."""
        track = self.tracks.get(status.node_id)
        if track is None or track.outcome is not Outcome.PENDING:
            return []
        track.status = status
        ours = status.sequence is not None and status.sequence >= self.sequence
        rejection = status.rejection
        if rejection is not None and rejection.sequence == self.sequence:
            ours = True
            track.outcome = Outcome.REJECTED
            track.reason = rejection.reason + _tags_hint(status)
        elif ours and status.state in _FINAL:
            track.outcome = _FINAL[status.state]
            if track.outcome is not Outcome.APPLIED:
                track.reason = status.error or "no reason given"
        shown, line = self._describe(track, status, ours)
        if shown == track.shown:
            return []
        track.shown = shown
        return [line]

    def expire(self) -> None:
        """The wait is over: every device still under way has timed out."""
        for track in self.tracks.values():
            if track.outcome is Outcome.PENDING:
                track.outcome = Outcome.TIMED_OUT
                track.reason = self._why_pending(track.status)

    def counts(self) -> dict[Outcome, int]:
        """How many devices have each outcome (every outcome present, zeros included)."""
        found = dict.fromkeys(Outcome, 0)
        for track in self.tracks.values():
            found[track.outcome] += 1
        return found

    def pending_counts(self) -> dict[str, int]:
        """The devices still under way, by what they are doing: `offline`, `waiting` (not
        started), `no status`, or their state (`downloading`, ...); most first."""
        found: dict[str, int] = {}
        for track in self.tracks.values():
            if track.outcome is not Outcome.PENDING:
                continue
            status = track.status
            if status is None:
                doing = "no status"
            elif status.sequence is None or status.sequence < self.sequence:
                doing = "waiting" if status.online else "offline"
            else:
                doing = str(status.state)
            found[doing] = found.get(doing, 0) + 1
        return dict(sorted(found.items(), key=lambda kv: (-kv[1], kv[0])))

    def state_text(self, track: DeviceTrack) -> str:
        """What a device is doing about this push now, for a live view (no rate limit)."""
        status = track.status
        if status is None:
            return "no status yet"
        ours = status.sequence is not None and status.sequence >= self.sequence
        return self._describe(track, status, ours, exact=True)[1]

    def failures(self) -> list[DeviceTrack]:
        return [t for t in self.tracks.values() if t.outcome is not Outcome.APPLIED]

    def summary(self) -> list[str]:
        lines = []
        for track in self.tracks.values():
            reason = track.reason
            lines.append(f"{track.label}: {track.outcome}" + (f": {reason}" if reason else ""))
        return lines

    def _why_pending(self, status: DeviceStatus | None) -> str:
        if status is None:
            return "no status from the coordinator"
        if not status.online:
            return "offline; it gets the push when it connects"
        if status.sequence is None or status.sequence < self.sequence:
            return "online, but has not started this push"
        return f"still {status.state}" + (f" ({status.error})" if status.error else "")

    def _describe(
        self, track: DeviceTrack, status: DeviceStatus, ours: bool, *, exact: bool = False
    ) -> tuple[tuple[object, ...], str]:
        """(what changed, for deduplication; the text). Progress moves in tenths unless exact."""
        if track.outcome is not Outcome.PENDING:
            reason = track.reason
            text = f"{track.outcome}" + (f": {reason}" if reason else "")
            return (track.outcome,), text if exact else f"{track.label}: {text}"
        if not status.online and not ours:
            text = "offline; it gets the push when it connects"
            return ("offline",), text if exact else f"{track.label}: {text}"
        if not ours:
            text = "waiting for the device to start"
            return ("waiting",), text if exact else f"{track.label}: {text}"
        state = status.state
        if state is AgentState.DOWNLOADING and status.progress is not None:
            p = status.progress
            fraction = (
                p.bytes_done / p.bytes_total
                if p.bytes_total
                else (p.paths_done / p.paths_total if p.paths_total else 0.0)
            )
            bucket = int(fraction * 10)  # a line per tenth, not per progress report
            progress = progress_text(p)
            text = "downloading" + (f" {progress}" if progress else "")
            return (state, bucket), text if exact else f"{track.label}: {text}"
        return (state,), f"{state}" if exact else f"{track.label}: {state}"


def _tags_hint(status: DeviceStatus) -> str:
    """Why a scope refusal is likely: the agent checks its own tags, not the registry's."""
    if not tags_mismatch(status) or status.rejection is None:
        return ""
    if status.rejection.code != "scope":
        return ""
    agent = ",".join(status.agent_tags or ()) or "none"
    registry = ",".join(status.tags) or "none"
    return f" (the agent's own tags are {agent}, the registry's {registry})"
