"""The fleet's status as admins see it: snapshots of every device, and live watchers.

A row joins the registry (fleet.coordinator.registry), the device's last report, the
latest announcement for it and its latest rejection, with what its live session knows
(online, path, progress, last message). Watchers (`fleetctl status --watch`) get fresh rows
for the devices that changed, computed only when someone watches.

A fleet of any size is read in pages (StatusQuery -> StatusPage): the filters are applied
here, on the registry and the reports, before any row is built; a page holds at most
STATUS_PAGE rows and about STATUS_PAGE_BYTES of them (at least one row), far below the
message cap (fleet.protocol.stream.MESSAGE_CAP), and the summary counts every matching row.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping

from fleet.coordinator import announcements, registry
from fleet.coordinator.database import Database
from fleet.coordinator.registry import DeviceRecord, LastReport
from fleet.coordinator.sessions import AgentSession, Phase
from fleet.coordinator.watchers import StatusWatcher
from fleet.identity import NodeId
from fleet.log import get_logger
from fleet.protocol.messages import (
    DesiredSystem,
    DeviceInfo,
    DeviceStatus,
    Rejection,
    StatusPage,
    StatusQuery,
    StatusSummary,
)

log = get_logger(__name__)

STATUS_PAGE = 5000  # rows per StatusPage at most ...
STATUS_PAGE_BYTES = 2 << 20  # ... and at most this many bytes of them (at least one row)
ROW_OVERHEAD = 256  # a row's encoding beyond its text: ids, numbers, framing (an upper bound)
UNKNOWN_STATE = "unknown"  # the summary's key for devices that never reported a state


class StatusBoard:
    """Status rows and the watchers that follow them; reads the sessions, never changes them."""

    def __init__(self, db: Database, sessions: Mapping[NodeId, AgentSession]) -> None:
        self.db = db
        self.sessions = sessions
        self.watchers: set[StatusWatcher] = set()

    def watch(self) -> StatusWatcher:
        watcher = StatusWatcher()
        self.watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: StatusWatcher) -> None:
        watcher.close()
        self.watchers.discard(watcher)

    async def snapshot(self) -> tuple[DeviceStatus, ...]:
        devices = await registry.all_devices(self.db)
        reports = await registry.last_reports(self.db)
        desired = await announcements.latest_desired(self.db)
        rejections = await registry.latest_rejections(self.db)
        return tuple(
            self._row(
                d,
                reports.get(str(d.node_id)),
                desired.get(str(d.node_id)),
                rejections.get(str(d.node_id)),
            )
            for d in devices
        )

    async def page(self, query: StatusQuery) -> StatusPage:
        """The rows matching `query` after its cursor, in node id text order (tags
        normalized by the caller), and their summary when asked for.

        One cheap pass over the registry filters (states and tags in SQL, `offline` here,
        nothing parsed); only the page's own rows are then read in full and built.
        """
        index = await registry.status_index(
            self.db, [str(state) for state in query.states], query.tags
        )
        live = {str(node) for node in self.sessions if self._live(node) is not None}
        if query.offline:
            index = [entry for entry in index if entry[0] not in live]
        summary = self._summary(index, live) if query.summary else None
        after = str(query.after) if query.after is not None else ""
        rest = [entry[0] for entry in index if entry[0] > after]
        wanted = rest[: min(max(query.limit, 0), STATUS_PAGE)]
        if not wanted:
            return StatusPage(devices=(), summary=summary, more=bool(rest))
        reports = await registry.reports_of(self.db, wanted)
        desired = await announcements.desired_of(self.db, wanted)
        rejections = await registry.rejections_of(self.db, wanted)
        rows: list[DeviceStatus] = []
        size = 0
        for device in await registry.devices_of(self.db, wanted):
            key = str(device.node_id)
            row = self._row(device, reports.get(key), desired.get(key), rejections.get(key))
            size += row_size(row)
            if rows and size > STATUS_PAGE_BYTES:
                break
            rows.append(row)
        more = len(rows) < len(rest)  # (a device removed meanwhile is skipped, not repeated)
        return StatusPage(devices=tuple(rows), summary=summary, more=more)

    @staticmethod
    def _summary(index: list[tuple[str, bool, str | None]], live: set[str]) -> StatusSummary:
        states = Counter(state or UNKNOWN_STATE for _, _, state in index)
        return StatusSummary(
            devices=len(index),
            online=sum(1 for node, _, _ in index if node in live),
            pending=sum(1 for _, approved, _ in index if not approved),
            states=dict(sorted(states.items())),
        )

    async def status_of(self, node: NodeId) -> DeviceStatus | None:
        device = await registry.get(self.db, node)
        if device is None:
            return None
        latest = await announcements.latest_for(self.db, node)
        report = await registry.last_report(self.db, node)
        rejection = await registry.latest_rejection(self.db, node)
        return self._row(
            device, report, latest.desired() if latest is not None else None, rejection
        )

    def info(self, device: DeviceRecord) -> DeviceInfo:
        """A registry entry, with the time of the last message of a connected device."""
        info = device.info()
        live = self._live(device.node_id)
        if live is None:
            return info
        return dataclasses.replace(info, last_seen=live.last_seen)

    async def publish(self, nodes: Iterable[NodeId]) -> None:
        """Send fresh rows for `nodes` to every watcher (only computed if someone watches)."""
        if not self.watchers:
            return
        rows = []
        for node in dict.fromkeys(nodes):
            row = await self.status_of(node)
            if row is None:
                row = removed_row(node)
            rows.append(row)
        for watcher in list(self.watchers):
            for row in rows:
                if not watcher.offer(row):
                    self.watchers.discard(watcher)
                    log.warning("status_watcher_dropped", reason="fell behind")
                    break

    def _live(self, node: NodeId) -> AgentSession | None:
        session = self.sessions.get(node)
        return session if session is not None and session.phase is not Phase.GONE else None

    def _row(
        self,
        device: DeviceRecord,
        report: LastReport | None,
        desired: DesiredSystem | None,
        rejection: Rejection | None,
    ) -> DeviceStatus:
        live = self._live(device.node_id)
        if (
            rejection is not None
            and report is not None
            and report.sequence is not None
            and report.sequence > rejection.sequence
            and report.reported_at >= rejection.time
        ):
            rejection = None  # the device has worked on a newer push since
        return DeviceStatus(
            node_id=device.node_id,
            name=device.name,
            tags=device.tags,
            agent_tags=device.agent_tags,
            approved=device.approved,
            online=live is not None,
            path=live.link.path if live is not None else None,
            last_seen=live.last_seen if live is not None else device.last_seen,
            state=report.state if report is not None else None,
            state_since=report.state_since if report is not None else None,
            sequence=report.sequence if report is not None else None,
            current=report.current if report is not None else None,
            desired=desired,
            progress=live.progress if live is not None else None,
            error=report.error if report is not None else None,
            rejection=rejection,
        )


def row_size(row: DeviceStatus) -> int:
    """An upper bound of the bytes a row takes in a page: its text, and ROW_OVERHEAD (cheap:
    encoding every row to measure it cost as much as reading it)."""
    texts = [row.name, row.path, row.error, *row.tags, *(row.agent_tags or ())]
    if row.current is not None:
        texts.append(row.current.store_path)
    if row.desired is not None:
        texts.append(row.desired.store_path)
    if row.rejection is not None:
        texts += [row.rejection.code, row.rejection.reason]
    size = ROW_OVERHEAD + 8 * (len(row.tags) + len(row.agent_tags or ()))
    for text in texts:
        if text is not None:
            size += len(text) if text.isascii() else len(text.encode())
    return size


def removed_row(node: NodeId) -> DeviceStatus:
    """A device no longer in the registry: name None, not approved, offline."""
    return DeviceStatus(
        node_id=node,
        name=None,
        tags=(),
        agent_tags=None,
        approved=False,
        online=False,
        path=None,
        last_seen=None,
        state=None,
        state_since=None,
        sequence=None,
        current=None,
        desired=None,
        progress=None,
        error=None,
        rejection=None,
    )
