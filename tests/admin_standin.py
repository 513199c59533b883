"""A stand-in coordinator for fleetctl tests: the admin protocol only, state in memory.

It serves admin request streams over any transport (an in-memory stream pair for unit tests,
a real mesh connection for integration tests) and records what it received, so tests can
check what fleetctl sent (signed requests, signed announcements).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from fleet.admin.client import AdminClient
from fleet.background import BackgroundTasks
from fleet.identity import Identity, NodeId
from fleet.protocol.admin import AdminRequestError, open_admin_request
from fleet.protocol.messages import (
    Action,
    AgentState,
    Announcement,
    DesiredSystem,
    DeviceAdd,
    DeviceApprove,
    DeviceInfo,
    DeviceList,
    DeviceListReply,
    DeviceRemove,
    DeviceStatus,
    ErrorReply,
    NextSequence,
    NextSequenceReply,
    OkReply,
    Progress,
    PushAccepted,
    PushLookup,
    PushLookupReply,
    PushRecord,
    PushRequest,
    Rejection,
    StatusPage,
    StatusQuery,
    StatusRequest,
    StatusSnapshot,
    StatusSummary,
    StatusUpdate,
    SystemState,
)
from fleet.protocol.stream import recv_message, send_message
from fleet.protocol.targeting import selects, target_tree
from fleet.wire import (
    ByteReader,
    Message,
    SignedEnvelope,
    Tag,
    WireError,
    encode,
    verify_envelope,
)

TIMEOUT = 5.0


def device_status(
    node_id: NodeId,
    name: str | None,
    *,
    tags: tuple[str, ...] = (),
    online: bool = True,
    state: AgentState | None = AgentState.IDLE,
    sequence: int | None = None,
    current: str | None = None,
    generation: int | None = None,
    desired: DesiredSystem | None = None,
    progress: Progress | None = None,
    error: str | None = None,
    agent_tags: tuple[str, ...] | None = None,
    rejection: Rejection | None = None,
    now: float = 1_700_000_000.0,
) -> DeviceStatus:
    return DeviceStatus(
        node_id=node_id,
        name=name,
        tags=tags,
        agent_tags=agent_tags,
        approved=name is not None,
        online=online,
        path="direct" if online else None,
        last_seen=now,
        state=state,
        state_since=now - 5 if state is not None else None,
        sequence=sequence,
        current=SystemState(store_path=current, generation=generation),
        desired=desired,
        progress=progress,
        error=error,
        rejection=rejection,
    )


@dataclass
class StandIn:
    """The coordinator's side of the admin protocol, with scripted behaviour for tests."""

    identity: Identity
    admins: set[NodeId]
    devices: list[DeviceInfo] = field(default_factory=list)
    statuses: dict[NodeId, DeviceStatus] = field(default_factory=dict)
    next_sequence: int = 1
    conflicts: int = 0  # answer this many pushes with "conflict" first
    refuse: Message | None = None  # answer every (admin) request with this
    silent: bool = False  # never answer
    received: list[Message] = field(default_factory=list)
    pushes: list[tuple[NodeId, Announcement]] = field(default_factory=list)
    push_requests: list[PushRequest] = field(default_factory=list)  # their explicit ids, targets
    envelopes: list[SignedEnvelope] = field(default_factory=list)
    watchers: list[asyncio.Queue[DeviceStatus]] = field(default_factory=list)
    watching: asyncio.Event = field(default_factory=asyncio.Event)
    after_push: list[DeviceStatus] = field(default_factory=list)  # sent to watchers on push
    page_size: int = 1000  # status rows per StatusPage
    lost_answers: int = 0  # carry out this many pushes without ever answering them
    push_replies: dict[bytes, Message] = field(default_factory=dict)  # request -> reply
    status_queries: list[StatusQuery] = field(default_factory=list)

    def publish(self, status: DeviceStatus) -> None:
        self.statuses[status.node_id] = status
        for queue in self.watchers:
            queue.put_nowait(status)

    async def serve_stream(self, reader: ByteReader, writer: _Writer) -> None:
        """One admin request stream, as the real coordinator would serve it."""
        try:
            envelope = await recv_message(reader, SignedEnvelope, timeout=TIMEOUT)
            self.envelopes.append(envelope)
            try:
                opened = open_admin_request(envelope, self.identity.node_id)
            except AdminRequestError as exc:
                await self._send(writer, ErrorReply(code=exc.code, message=str(exc)))
                return
            self.received.append(opened.body)
            if self.silent:
                await asyncio.sleep(3600)
            if opened.signer not in self.admins:
                await self._send(writer, ErrorReply(code="unauthorized", message="not an admin"))
                return
            if self.refuse is not None:
                await self._send(writer, self.refuse)
                return
            if isinstance(opened.body, PushRequest):
                await self._push(opened.body, writer, encode(envelope))
                return
            await self._answer(opened.body, writer)
        except (EOFError, WireError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(self, body: Message, writer: _Writer) -> None:
        if isinstance(body, DeviceList):
            await self._send(writer, DeviceListReply(devices=tuple(self.devices)))
        elif isinstance(body, DeviceAdd | DeviceApprove | DeviceRemove):
            await self._send(writer, OkReply())
        elif isinstance(body, NextSequence):
            await self._send(writer, NextSequenceReply(sequence=self.next_sequence))
        elif isinstance(body, StatusRequest):
            await self._status(body, writer)
        elif isinstance(body, StatusQuery):
            await self._send(writer, self._status_page(body))
        elif isinstance(body, PushLookup):
            await self._send(writer, self._push_lookup(body.sequence))
        else:
            await self._send(writer, ErrorReply(code="invalid", message="unexpected request"))

    async def _push(self, body: PushRequest, writer: _Writer, request: bytes) -> None:
        """Like the coordinator: the very same request sent again gets the first reply."""
        if request in self.push_replies:
            await self._answer_or_lose(writer, self.push_replies[request])
            return
        signer, announcement = verify_envelope(body.announcement, Tag.ANNOUNCEMENT, Announcement)
        if self.conflicts > 0:
            self.conflicts -= 1
            self.next_sequence += 1  # another admin took this number
            await self._send(writer, ErrorReply(code="conflict", message="sequence taken"))
            return
        if announcement.sequence < self.next_sequence:
            await self._send(writer, ErrorReply(code="conflict", message="sequence is stale"))
            return
        if target_tree(body.devices).root != announcement.devices_root:
            await self._send(writer, ErrorReply(code="invalid", message="ids not under the root"))
            return
        self.pushes.append((signer, announcement))
        self.push_requests.append(body)
        self.next_sequence = announcement.sequence + 1
        selected = [d.node_id for d in self.devices if selects(announcement.selector, d.tags)]
        devices = tuple(dict.fromkeys((*body.devices, *selected)))
        accepted = PushAccepted(sequence=announcement.sequence, devices=devices)
        self.push_replies[request] = accepted
        await self._answer_or_lose(writer, accepted)
        for status in self.after_push:
            self.publish(status)

    async def _status(self, body: StatusRequest, writer: _Writer) -> None:
        queue: asyncio.Queue[DeviceStatus] = asyncio.Queue()
        if body.watch:
            self.watchers.append(queue)
        try:
            await self._send(writer, StatusSnapshot(devices=tuple(self.statuses.values())))
            if not body.watch:
                return
            self.watching.set()
            while True:
                status = await queue.get()
                await self._send(writer, StatusUpdate(device=status))
        finally:
            if body.watch:
                self.watchers.remove(queue)

    def _push_lookup(self, sequence: int) -> PushLookupReply:
        found = [
            (signer, a, body)
            for (signer, a), body in zip(self.pushes, self.push_requests, strict=True)
            if a.sequence == sequence
        ]
        record = None
        if found:
            signer, a, body = found[0]
            record = PushRecord(
                signer=signer,
                store_path=a.store_path,
                action=a.action,
                targets=body.targets,
                devices=next(
                    len(r.devices)
                    for r in self.push_replies.values()
                    if isinstance(r, PushAccepted) and r.sequence == sequence
                ),
                issued_at=a.issued_at,
                valid_until=a.valid_until,
                accepted_at=a.issued_at,
            )
        highest = max((a.sequence for _, a in self.pushes), default=0)
        return PushLookupReply(sequence=sequence, accepted=record, highest=highest)

    async def _answer_or_lose(self, writer: _Writer, reply: Message) -> None:
        if self.lost_answers > 0:  # carried out, but the answer never arrives
            self.lost_answers -= 1
            await asyncio.sleep(3600)
        await self._send(writer, reply)

    def _status_page(self, query: StatusQuery) -> StatusPage:
        """Filters and pages as the coordinator applies them (`page_size` rows a page)."""
        self.status_queries.append(query)
        rows = sorted(
            (
                s
                for s in self.statuses.values()
                if (not query.states or s.state in query.states)
                and (not query.offline or not s.online)
                and all(tag in s.tags for tag in query.tags)
            ),
            key=lambda s: s.node_id.raw,
        )
        summary = None
        if query.summary:
            states = Counter(str(s.state) if s.state else "unknown" for s in rows)
            summary = StatusSummary(
                devices=len(rows),
                online=sum(s.online for s in rows),
                pending=sum(not s.approved for s in rows),
                states=dict(sorted(states.items())),
            )
        after = query.after.raw if query.after is not None else b""
        rest = [s for s in rows if s.node_id.raw > after]
        page = rest[: min(query.limit, self.page_size)]
        return StatusPage(devices=tuple(page), summary=summary, more=len(page) < len(rest))

    @staticmethod
    async def _send(writer: _Writer, message: Message) -> None:
        await send_message(writer, message, timeout=TIMEOUT)


class _Writer(Protocol):
    """What the stand-in writes to: a mesh StreamWriter or the in-memory writer below."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...


class MemoryWriter:
    """Writes into the peer's StreamReader; close() is the end of the stream."""

    def __init__(self, peer: asyncio.StreamReader) -> None:
        self._peer = peer
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionError("write after close")
        self._peer.feed_data(data)

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._peer.feed_eof()


class MemoryConnection:
    """Opens in-memory bidirectional streams served by a StandIn, one task per stream."""

    def __init__(self, standin: StandIn, tasks: BackgroundTasks) -> None:
        self.standin = standin
        self.tasks = tasks
        self.writers: list[MemoryWriter] = []
        self.served: list[asyncio.Task[None]] = []

    async def open_bi(self) -> tuple[asyncio.StreamReader, MemoryWriter]:
        to_server, to_client = asyncio.StreamReader(), asyncio.StreamReader()
        client_writer, server_writer = MemoryWriter(to_server), MemoryWriter(to_client)
        self.writers.append(client_writer)
        self.served.append(
            self.tasks.create_task(self.standin.serve_stream(to_server, server_writer))
        )
        return to_client, client_writer


@contextlib.asynccontextmanager
async def memory_client(
    standin: StandIn, admin: Identity, *, timeout: float = TIMEOUT
) -> AsyncIterator[AdminClient]:
    """An AdminClient talking to `standin` in memory; the stand-in's tasks end with it.
    Like the mesh Endpoint, an error raised inside reaches the caller as itself."""
    async with BackgroundTasks() as tasks:
        connection = MemoryConnection(standin, tasks)
        try:
            yield AdminClient(admin, standin.identity.node_id, connection, timeout=timeout)
        finally:
            for task in connection.served:  # watch streams would serve forever
                task.cancel()


def desired(store_path: str, sequence: int, action: Action = Action.SWITCH) -> DesiredSystem:
    return DesiredSystem(store_path=store_path, sequence=sequence, action=action)
